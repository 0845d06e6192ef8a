"""`jobctl worker`: the drain, with the embedded model started on demand when no server is given."""

from __future__ import annotations

import asyncio

from jobs.config import Settings
from jobs.connection import connect
from worker.drain import DrainOptions, drain_queue
from worker.llm import Policy
from worker.report import DrainReport


def run_worker(settings: Settings, burst: bool, max_seconds: float | None) -> DrainReport:
    cipher = settings.cipher()
    conn = connect(settings)
    if settings.base_url:
        return _drain(settings, conn, cipher, settings.base_url, burst, max_seconds)
    from producer.local_server import STYLE, LocalServer

    settings.home.mkdir(parents=True, exist_ok=True)
    with LocalServer(log_path=settings.home / "local-server.log") as srv:
        local = settings.with_(structured_output=STYLE)
        report = _drain(local, conn, cipher, srv.base_url, burst, max_seconds)
        report.notes.append(f"model server: embedded SmolLM2-135M at {srv.base_url}")
        return report


def _drain(settings: Settings, conn, cipher, url: str, burst: bool, max_seconds: float | None) -> DrainReport:  # type: ignore[no-untyped-def]
    opts = DrainOptions(
        queue=settings.queue,
        model=settings.model,
        concurrency=settings.concurrency,
        burst=burst,
        max_seconds=max_seconds,
        lease_seconds=settings.lease_seconds,
        result_ttl=settings.result_ttl,
        style=settings.structured_output,
    )
    return asyncio.run(
        drain_queue(
            conn,
            cipher,
            url,
            settings.api_key,
            opts,
            Policy(max_attempts=settings.max_attempts),
            signals=True,
            timeout=settings.request_timeout,
        )
    )
