"""`jobctl worker`, `jobctl drain` and `jobctl serve-local`: draining queues."""

from __future__ import annotations

from typing import Any

import click

from producer.cli.app import INTERRUPTED, TERMINATED, Ctx, Exit, cli, echo_json, err, json_option, queue_option, setting
from producer.safe_text import visible

# The drain's stop reason when a signal stopped it (worker.drain), and the exit code each one gets.
_SIGNAL_CODES = {"signal SIGINT": INTERRUPTED, "signal SIGTERM": TERMINATED}


def _others(client_settings: Any, drained: list[str]) -> str:
    """Other queues in this Redis that still hold work, for the end of a burst drain."""
    from jobs.connection import connect
    from jobs.store import queues

    others = {q: n for q, n in queues.queues_with_work(connect(client_settings)).items() if q not in drained}
    if not others:
        return ""
    listed = ", ".join(f"{visible(q)} ({n})" for q, n in sorted(others.items()))
    return f"other queues still hold work: {listed}; drain them with -q"


def _report(report: Any, as_json: bool) -> None:
    """Print a drain's report; then, if a signal stopped the drain, end with that signal's exit code
    (130 for Ctrl-C, 143 for SIGTERM): a script must not read a stopped worker as a finished one."""
    if as_json:
        echo_json(report.as_dict())
    else:
        for line in report.lines():
            click.echo(visible(line))
    code = _SIGNAL_CODES.get(report.stop_reason)
    if code is not None:
        what = "interrupted" if code == INTERRUPTED else "terminated"
        raise Exit(
            f"{what} ({report.stop_reason.split()[-1]}); tasks it did not finish stay queued: run `jobctl worker` "
            "again to go on",
            code,
        )


@cli.command(short_help="Drain queues against an OpenAI-compatible server.")
@setting(
    "base_url",
    "--base-url",
    default_text="the embedded SmolLM2 model, started on 127.0.0.1 for the drain",
    help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.",
)
@setting("api_key", "--api-key", help="The server's API key.")
@setting("model", "--model", default_text="the server's first model", help="Model name.")
@setting(
    "concurrency",
    "--concurrency",
    "-c",
    type=int,
    help="Requests in flight against a server that does not report its load; against vLLM, where the window "
    "starts (it then follows the server's load).",
)
@setting("max_in_flight", "--max-in-flight", type=int, help="The most requests in flight against vLLM.")
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
@click.option(
    "--max-seconds",
    type=float,
    show_default="no limit",
    help="Stop claiming after this many seconds, then finish and exit.",
)
@setting(
    "structured_output",
    "--structured-output",
    type=click.Choice(["auto", "json_schema", "json_object"]),
    help="How to ask for JSON: auto (ask the server), json_schema (vLLM, OpenAI, Ollama) or json_object "
    "with a schema (llama.cpp).",
)
@queue_option(multiple=True)
@json_option
@click.pass_obj
def worker(
    obj: Ctx,
    base_url: str | None,
    api_key: str | None,
    model: str | None,
    concurrency: int | None,
    max_in_flight: int | None,
    burst: bool,
    max_seconds: float | None,
    structured_output: str | None,
    queue: tuple[str, ...],
    as_json: bool,
) -> None:
    """Drain queues against an OpenAI-compatible server, many requests at a time.

    With several -q, claims are shared fairly among the queues. Ends with a report: done, failed,
    tokens, wall time, jobs/s. While it runs, `rq info` lists it as a worker.

    Ctrl-C (or SIGTERM) once finishes the running requests and stops; twice hands them back to the
    queue at once. Either way the report is printed, and the exit code is 130 after Ctrl-C, 143
    after SIGTERM.
    """
    from producer.drain_cmd import run_worker

    settings = obj.settings(
        base_url=base_url,
        api_key=api_key,
        model=model,
        concurrency=concurrency,
        max_in_flight=max_in_flight,
        structured_output=structured_output,
    )
    obj.notice_embedded(settings)
    queues = list(dict.fromkeys(queue)) or [settings.queue]
    report = run_worker(settings, burst, max_seconds, queues)
    note = _others(settings, queues) if burst and report.stop_reason == "queue empty" else ""
    if note:
        report.notes.append(note)
    _report(report, as_json)


@cli.command("serve-local")
@click.option("--port", default=8089, show_default=True, help="The port on 127.0.0.1; it must be free.")
@click.pass_obj
def serve_local(obj: Ctx, port: int) -> None:
    """Serve the embedded SmolLM2-135M model on 127.0.0.1 (llama.cpp, CPU) until Ctrl-C.

    The server takes a random API key, written to local-server-PORT.key in the data folder (readable
    by you only): other users of this machine can reach 127.0.0.1 too. Point a worker at it with
    `OPENAI_API_KEY=$(cat KEYFILE) jobctl worker --base-url URL --structured-output json_object`.
    `jobctl worker` without --base-url does not need this: it starts a server of its own.
    """
    import os

    from producer.local_server import LocalServer

    home = obj.settings().home
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_file = home / f"local-server-{port}.key"
    srv = LocalServer(port).start()  # a busy port is an error before any file is touched
    try:
        key_file.unlink(missing_ok=True)  # O_EXCL below: never through a planted symlink
        with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(srv.api_key + "\n")
        click.echo(
            f"serving SmolLM2-135M at {srv.base_url} (structured output: json_object); its API key is in "
            f"{visible(str(key_file))}. Ctrl-C stops"
        )
        if srv.proc:
            srv.proc.wait()
    finally:
        srv.stop()
        key_file.unlink(missing_ok=True)


@cli.command(short_help="Drain the queue once: here, or on Modal's GPU with --remote.")
@click.option("--remote", is_flag=True, help="Drain on Modal's GPU, in the app deployed from modal_worker.py.")
@click.option(
    "--wait/--no-wait",
    "wait_",
    default=True,
    show_default=True,
    help="With --remote: wait for the drain's report, or return once it has started.",
)
@click.option(
    "--max-seconds",
    type=float,
    show_default="no limit",
    help="Stop claiming after this many seconds, then finish and exit.",
)
@queue_option()
@json_option
@click.pass_obj
def drain(obj: Ctx, remote: bool, wait_: bool, max_seconds: float | None, queue: str | None, as_json: bool) -> None:
    """Drain the queue once, until it is empty: here (like `jobctl worker --burst`), or on Modal with --remote.

    --remote needs `pip install 'jobctl[modal]'`, a Modal login (`modal setup`) and the app deployed
    once (see the README's Modal section). Stopped here by Ctrl-C or SIGTERM, it finishes the
    running requests and exits 130 or 143, as `jobctl worker` does.
    """
    if not remote:
        from producer.drain_cmd import run_worker

        settings = obj.settings(queue=queue)
        obj.notice_embedded(settings)
        _report(run_worker(settings, True, max_seconds), as_json)
        return
    try:
        import modal_worker
    except ImportError as e:
        raise click.ClickException(
            f"cannot load the Modal worker ({type(e).__name__}); `pip install 'jobctl[modal]'`, then `modal setup` "
            "and `modal deploy modal_worker.py`"
        ) from e
    result = modal_worker.trigger_remote_drain(wait_, max_seconds, queue)
    if as_json:
        echo_json(result)
    elif not wait_:
        err(f"remote drain started: {result['call_id']}")
    else:
        for line in _remote_lines(result):
            click.echo(visible(line))


def _remote_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        f"queue {result.get('queue')}  model {result.get('model')}  stopped: {result.get('stop_reason')}",
        f"done {result.get('done')}  failed {result.get('failed')}  wall {result.get('wall_seconds')}s  "
        f"{result.get('jobs_per_second')} jobs/s",
    ]
    timings = result.get("lifecycle", {}).get("timings", {})
    if timings:
        lines.append("vLLM: " + "  ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return lines + list(result.get("notes", []))
