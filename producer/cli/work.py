"""`jobctl worker`, `jobctl drain` and `jobctl serve-local`: draining queues."""

from __future__ import annotations

from typing import Any

import click

from producer.cli.app import Ctx, cli, echo_json, err, json_option, queue_option, setting
from producer.safe_text import visible


def _others(client_settings: Any, drained: list[str]) -> str:
    """Other queues in this Redis that still hold work, for the end of a burst drain."""
    from jobs.connection import connect
    from jobs.store import queues

    others = {q: n for q, n in queues.queues_with_work(connect(client_settings)).items() if q not in drained}
    if not others:
        return ""
    listed = ", ".join(f"{visible(q)} ({n})" for q, n in sorted(others.items()))
    return f"other queues still hold work: {listed}; drain them with -q"


@cli.command()
@setting(
    "base_url",
    "--base-url",
    help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1. Without it, "
    "the embedded SmolLM2 model is started on 127.0.0.1 for the drain.",
)
@setting("api_key", "--api-key", help="The server's API key.")
@setting("model", "--model", help="Model name (default: the server's first).")
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
@click.option("--max-seconds", type=float, help="Stop claiming after this many seconds, then finish and exit.")
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
    tokens, wall time, jobs/s. Ctrl-C once finishes the running requests and stops; twice hands
    them back to the queue at once. While it runs, `rq info` lists it as a worker.
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
    if as_json:
        echo_json(report.as_dict())
    else:
        for line in report.lines():
            click.echo(visible(line))


@cli.command("serve-local")
@click.option("--port", default=8089, show_default=True)
def serve_local(port: int) -> None:
    """Serve the embedded SmolLM2-135M model on 127.0.0.1 (llama.cpp, CPU) until Ctrl-C."""
    from producer.local_server import LocalServer

    srv = LocalServer(port).start()
    click.echo(f"serving SmolLM2-135M at {srv.base_url} (structured output: json_object); Ctrl-C stops")
    try:
        if srv.proc:
            srv.proc.wait()
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
@queue_option()
@json_option
@click.pass_obj
def drain(obj: Ctx, remote: bool, wait_: bool, max_seconds: float | None, queue: str | None, as_json: bool) -> None:
    """Drain the queue once, until it is empty: here (like `jobctl worker --burst`), or on Modal with --remote.

    --remote needs `pip install 'jobctl[modal]'`, a Modal login (`modal setup`) and the app deployed
    once (see the README's Modal section).
    """
    if not remote:
        from producer.drain_cmd import run_worker

        settings = obj.settings(queue=queue)
        obj.notice_embedded(settings)
        report = run_worker(settings, True, max_seconds)
        if as_json:
            echo_json(report.as_dict())
        else:
            for line in report.lines():
                click.echo(visible(line))
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
