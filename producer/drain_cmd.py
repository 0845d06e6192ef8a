"""`jobctl worker`: the drain, with the embedded model started on demand when no server is given."""

from __future__ import annotations

from typing import Any

import redis

from jobs.config import Settings
from jobs.connection import connect, redis_problem
from worker.drain import run_drain
from worker.report import DrainReport


def run_worker(
    settings: Settings, burst: bool, max_seconds: float | None, queues: list[str] | None = None
) -> DrainReport:
    cipher = settings.cipher()
    conn = connect(settings)
    try:
        # Before any model server starts: a wrong URL, password or database is said as such, not as
        # "cannot reach Redis" from inside the drain.
        conn.ping()
    except redis.RedisError as e:
        raise redis_problem(e, settings) from e
    queues = queues or [settings.queue]
    if settings.base_url:
        return _drain(settings, conn, cipher, settings.base_url, burst, max_seconds, queues)
    from producer.local_server import LOCAL_CONCURRENCY, STYLE, LocalServer

    with LocalServer(home=settings.home) as srv:
        # llama.cpp's server answers one request at a time: more in flight only wait in its queue,
        # where a long batch would run into the request timeout.
        local = settings.with_(
            structured_output=STYLE,
            concurrency=min(settings.concurrency, LOCAL_CONCURRENCY),
            api_key=srv.api_key,
        )
        report = _drain(local, conn, cipher, srv.base_url, burst, max_seconds, queues, adaptive=False)
        report.notes.append(f"model server: embedded SmolLM2-135M at {srv.base_url}")
        return report


def _drain(
    settings: Settings,
    conn: Any,
    cipher: Any,
    url: str,
    burst: bool,
    max_seconds: float | None,
    queues: list[str],
    **overrides: Any,
) -> DrainReport:
    return run_drain(settings, conn, cipher, url, burst, max_seconds, signals=True, queues=queues, **overrides)
