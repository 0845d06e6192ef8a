"""The Python API: what the CLI does, for automation scripts, without the shell.

client = Client(queue="mail")            # flags as keyword arguments; else env; else defaults
sub = client.submit([{"custom_id": "m1", "kind": "email.triage", "input": {...}}])
client.drain(base_url="http://127.0.0.1:8000/v1")     # or leave it to a worker / Modal
status = client.wait(sub.batch_id)
for line in client.results(sub.batch_id): print(line.line())
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import redis

from jobs import keys
from jobs.batch import Batch, BatchStatus, recent_batches
from jobs.config import Settings
from jobs.connection import connect
from jobs.crypto import Cipher
from jobs.errors import JobctlError
from jobs.parse import InputError, Limits, Problem, parse_bytes, parse_objects
from jobs.results import Outcome
from jobs.scripts import Scripts
from jobs.tasks import Task
from producer.submit import SubmitResult, enqueue_tasks


class Client:
    def __init__(self, settings: Settings | None = None, connection: redis.Redis | None = None, **overrides: Any):
        self.settings = (settings or Settings.from_env()).with_(**overrides)
        self._conn = connection
        self._cipher: Cipher | None = None

    def __repr__(self) -> str:
        return f"Client(queue={self.settings.queue!r})"

    @property
    def connection(self) -> redis.Redis:
        if self._conn is None:
            self._conn = connect(self.settings)
        return self._conn

    @property
    def cipher(self) -> Cipher:
        if self._cipher is None:
            self._cipher = self.settings.cipher()
        return self._cipher

    def limits(self) -> Limits:
        s = self.settings
        return Limits(s.max_file_bytes, s.max_task_bytes, s.context_tokens, s.structured_output)

    # -- submitting ----------------------------------------------------------------------------

    def parse_file(self, path: str | Path) -> list[Task]:
        p = Path(path)
        try:
            size = p.stat().st_size
        except OSError as e:
            raise JobctlError(f"cannot read {path}: {e.strerror}") from e
        if size > self.settings.max_file_bytes:
            # Refused before reading: a 100 MB file is not loaded to be told it is too big.
            raise InputError(
                str(path),
                [
                    Problem(
                        str(path),
                        f"the file is {size / 1e6:.1f} MB, over the "
                        f"{self.settings.max_file_bytes // (1024 * 1024)} MiB limit; split it into smaller "
                        "files (or raise JOBCTL_MAX_FILE_BYTES)",
                    )
                ],
            )
        try:
            raw = p.read_bytes()
        except OSError as e:  # a folder, or a file that went away or is unreadable
            raise JobctlError(f"cannot read {path}: {e.strerror}") from e
        return parse_bytes(raw, str(path), self.limits())

    def submit_file(self, path: str | Path, queue: str | None = None) -> SubmitResult:
        return self.submit_tasks(self.parse_file(path), queue)

    def submit_bytes(self, raw: bytes, source: str = "<stdin>", queue: str | None = None) -> SubmitResult:
        return self.submit_tasks(parse_bytes(raw, source, self.limits()), queue)

    def submit(self, tasks: list[dict[str, Any]], queue: str | None = None) -> SubmitResult:
        return self.submit_tasks(parse_objects(tasks, "tasks", self.limits()), queue)

    def submit_tasks(self, tasks: list[Task], queue: str | None = None) -> SubmitResult:
        cipher = self.cipher  # before touching Redis: a missing key must not leave a half-made batch
        return enqueue_tasks(self.connection, cipher, tasks, queue or self.settings.queue, self.settings.result_ttl)

    # -- reading -------------------------------------------------------------------------------

    def batch(self, batch_id: str) -> Batch:
        return Batch(batch_id, self.connection)

    def status(self, batch_id: str) -> BatchStatus:
        return self.batch(batch_id).status()

    def batches(self, limit: int = 20) -> list[BatchStatus]:
        out = []
        for b in recent_batches(self.connection, limit):
            try:
                out.append(b.status())
            except JobctlError:
                continue  # expired between the index read and now
        return out

    def wait(
        self,
        batch_id: str,
        timeout: float | None = None,
        poll: float = 1.0,
        on_progress: Callable[[BatchStatus], None] | None = None,
    ) -> BatchStatus:
        end = time.monotonic() + timeout if timeout else None
        while True:
            st = self.status(batch_id)
            if on_progress:
                on_progress(st)
            if st.done:
                return st
            if end and time.monotonic() > end:
                raise TimeoutError(
                    f"batch {batch_id} still has {st.counts.get('queued', 0)} queued and "
                    f"{st.counts.get('running', 0)} running tasks after {timeout}s"
                )
            time.sleep(poll)

    def results(self, batch_id: str) -> Iterator[Outcome]:
        batch = self.batch(batch_id)
        batch.meta()  # a clear error for an unknown batch before any output
        return batch.outcomes(self.cipher)

    # -- changing ------------------------------------------------------------------------------

    def cancel(self, batch_id: str) -> int:
        """Drop the batch's queued tasks. Running ones finish. Returns how many were dropped."""
        batch = self.batch(batch_id)
        meta = batch.meta()
        queue = meta["queue"]
        scripts = Scripts(self.connection)
        now = time.time()
        ids = batch.job_ids()
        statuses = batch.job_statuses(ids)
        with self.connection.pipeline(transaction=False) as p:
            for jid, st in zip(ids, statuses, strict=True):
                if st == "queued":
                    scripts.cancel(
                        keys=[keys.queue_key(queue), keys.job_key(jid), keys.canceled_key(queue)],
                        args=[jid, now + self.settings.result_ttl, _iso(now)],
                        client=p,
                    )
            p.hset(keys.batch_key(batch_id), "cancelled_at", now)
            res = p.execute()
        return sum(int(x) for x in res[:-1])

    def retry(self, batch_id: str) -> int:
        """Re-queue the batch's failed tasks. Returns how many."""
        batch = self.batch(batch_id)
        queue = batch.meta()["queue"]
        scripts = Scripts(self.connection)
        ids = batch.job_ids()
        statuses = batch.job_statuses(ids)
        now = _iso(time.time())
        with self.connection.pipeline(transaction=False) as p:
            for jid, st in zip(ids, statuses, strict=True):
                if st == "failed":
                    scripts.retry(
                        keys=[keys.failed_key(queue), keys.job_key(jid), keys.queue_key(queue)],
                        args=[jid, now],
                        client=p,
                    )
            p.hdel(keys.batch_key(batch_id), "cancelled_at")
            res = p.execute()
        return sum(int(x) for x in res[:-1])

    def queue_depth(self, queue: str | None = None) -> int:
        return int(self.connection.llen(keys.queue_key(queue or self.settings.queue)))

    # -- draining in-process -------------------------------------------------------------------

    def drain(
        self, base_url: str | None = None, burst: bool = True, max_seconds: float | None = None, **options: Any
    ) -> Any:
        """Drain the queue in this process against `base_url` (or OPENAI_BASE_URL); returns the report."""
        from worker.drain import run_drain

        url = base_url or self.settings.base_url
        if not url:
            raise JobctlError("no model server: pass base_url or set OPENAI_BASE_URL")
        return run_drain(self.settings, self.connection, self.cipher, url, burst, max_seconds, **options)


def _iso(ts: float) -> str:
    from datetime import datetime

    from rq.utils import utcformat

    return utcformat(datetime.fromtimestamp(ts, tz=UTC))
