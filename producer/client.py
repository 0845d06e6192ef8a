"""The Python API: what the CLI does, for automation scripts, without the shell.

from producer import Client
client = Client(queue="mail")            # keyword arguments override env, which overrides defaults
sub = client.submit([{"custom_id": "m1", "kind": "email.triage", "input": {...}}])
client.drain(base_url="http://127.0.0.1:8000/v1")     # or leave it to a worker / Modal
status = client.wait(sub.batch_id)
for outcome in client.results(sub.batch_id):
    print(outcome.custom_id, outcome.parsed)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from jobs.config import Settings
from jobs.connection import connect
from jobs.crypto import Cipher
from jobs.errors import JobctlError
from jobs.outcomes import Outcome
from jobs.parse import Limits, Parsed, parse_bytes, parse_objects
from jobs.store import Batch, BatchStatus, SubmitResult, list_batches, submit
from jobs.store import queues as store_queues
from jobs.store.queues import Depth


class WaitTimeoutError(JobctlError, TimeoutError):
    """wait() ran past its timeout; the batch is still running."""


class Client:
    """One user's view of jobctl: a queue, a Redis and a key (each from keyword arguments, then the
    environment, then defaults: see jobs.config.Settings). Connections and the key are opened lazily."""

    def __init__(self, settings: Settings | None = None, connection: redis.Redis | None = None, **overrides: Any):
        self.settings = (settings or Settings.from_env()).with_(**overrides)
        self._conn = connection
        self._cipher: Cipher | None = None

    def __repr__(self) -> str:
        return f"Client(queue={self.settings.queue!r})"

    @property
    def connection(self) -> redis.Redis:
        """The Redis connection (REDIS_URL, else the embedded Redis under JOBCTL_HOME)."""
        if self._conn is None:
            self._conn = connect(self.settings)
        return self._conn

    @property
    def cipher(self) -> Cipher:
        """The key, loaded from JOBCTL_KEY or the key file."""
        if self._cipher is None:
            self._cipher = self.settings.cipher()
        return self._cipher

    def limits(self, options: dict[str, Any] | None = None) -> Limits:
        """The input limits that submit checks files against, with batch-level `options`."""
        s = self.settings
        style = "json_schema" if s.structured_output == "auto" else s.structured_output
        return Limits(s.max_file_bytes, s.max_task_bytes, s.context_tokens, style, dict(options or {}))

    # -- submitting ----------------------------------------------------------------------------

    def parse_file(
        self,
        path: str | Path,
        options: dict[str, Any] | None = None,
        kind: str | None = None,
        columns: dict[str, str] | None = None,
    ) -> Parsed:
        """Read and validate what `jobctl submit PATH` reads (a task file, a mailbox, a bank export), without
        submitting it. `kind` and `columns` are for imports, as `--kind` and `--columns`."""
        from producer.intake import Intake, read_paths

        return read_paths([str(path)], Intake(self.limits(options), kind, columns))

    def submit(
        self,
        tasks: list[dict[str, Any]],
        queue: str | None = None,
        *,
        name: str | None = None,
        metadata: dict[str, str] | None = None,
        options: dict[str, Any] | None = None,
        replace: bool = False,
    ) -> SubmitResult:
        """Validate `tasks` (dicts with custom_id, kind, input, options) and enqueue all of them, or none.

        Raises InputError (located problems) or ConflictError (a custom_id already queued with other
        content; `replace=True` runs it again with the new content). A task already queued or done with
        the same content is a duplicate: listed in the batch, not run again.
        """
        parsed = parse_objects(tasks, "tasks", self.limits(options))
        return self.submit_parsed(parsed, queue, name=name, metadata=metadata, replace=replace)

    def submit_file(self, path: str | Path, queue: str | None = None, **kw: Any) -> SubmitResult:
        """Validate a task file, a mailbox or a bank export and enqueue all of its tasks, or none (see submit()
        for the keywords; `kind` and `columns` as for parse_file())."""
        parsed = self.parse_file(path, kw.pop("options", None), kw.pop("kind", None), kw.pop("columns", None))
        return self.submit_parsed(parsed, queue, **kw)

    def submit_bytes(self, raw: bytes, source: str = "<stdin>", queue: str | None = None, **kw: Any) -> SubmitResult:
        """Like submit_file(), for the bytes of a task file (stdin, say)."""
        options = kw.pop("options", None)
        return self.submit_parsed(parse_bytes(raw, source, self.limits(options)), queue, **kw)

    def submit_parsed(
        self,
        parsed: Parsed,
        queue: str | None = None,
        *,
        name: str | None = None,
        metadata: dict[str, str] | None = None,
        replace: bool = False,
    ) -> SubmitResult:
        """Enqueue tasks that were already validated (parse_file(), or the importers)."""
        cipher = self.cipher  # before touching Redis: a missing key must not leave a half-made batch
        return submit(
            self.connection,
            cipher,
            parsed.tasks,
            queue or self.settings.queue,
            self.settings.result_ttl,
            rejected=parsed.rejected,
            name=name,
            metadata=metadata,
            replace=replace,
        )

    # -- reading -------------------------------------------------------------------------------

    def batch(self, batch_id: str) -> Batch:
        """A handle on one batch (reads go to Redis each time)."""
        return Batch(batch_id, self.connection, self.cipher)

    def status(self, batch_id: str, verify: bool = False) -> BatchStatus:
        """One batch's status and counts. `verify` also opens every result and names tampered ones."""
        return self.batch(batch_id).status(verify=verify)

    def batches(
        self, limit: int = 20, name: str | None = None, status: str | None = None, since: float | None = None
    ) -> list[BatchStatus]:
        """The most recent batches sealed with this key, newest first, optionally filtered."""
        return list_batches(self.connection, self.cipher, limit, name, status, since)

    def wait(
        self,
        batch_id: str,
        timeout: float | None = None,
        poll: float = 1.0,
        on_progress: Callable[[BatchStatus], None] | None = None,
        on_note: Callable[[str], None] | None = None,
        note_every: float = 10.0,
    ) -> BatchStatus:
        """Poll until the batch has no queued or running task; returns its final status.

        The first read must succeed: a wrong URL, password or batch id is a setting to fix, not an
        outage to wait out. Later Redis outages are waited out with backoff and told to `on_note` (once,
        then every `note_every` seconds). Raises WaitTimeoutError after `timeout` seconds, during an
        outage too.
        """
        from jobs.connection import describe

        end = time.monotonic() + timeout if timeout is not None else None
        st = self.status(batch_id)
        down_since = said_at = 0.0
        delay = poll
        note = on_note or (lambda _msg: None)
        while True:
            if not down_since:
                if on_progress:
                    on_progress(st)
                if st.done:
                    return st
            now = time.monotonic()
            if end is not None and now >= end:
                if down_since:
                    raise WaitTimeoutError(
                        f"batch {batch_id} did not finish in {timeout:g}s: Redis has been unreachable for "
                        f"{now - down_since:.0f}s; check it, then wait again"
                    )
                raise WaitTimeoutError(
                    f"batch {batch_id} still has {st.counts['queued']} queued and {st.counts['running']} running "
                    f"tasks after {timeout:g}s; wait longer, and see `jobctl status {batch_id}` for why"
                )
            time.sleep(max(0.0, min(delay, end - now)) if end is not None else delay)
            try:
                st = self.status(batch_id)
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if isinstance(e, redis.AuthenticationError):
                    raise  # the password changed under us: no wait fixes that
                now = time.monotonic()
                if not down_since:
                    down_since = said_at = now
                    note(f"lost {describe(self.connection)} ({type(e).__name__}); waiting for it to come back")
                elif now - said_at >= note_every:
                    said_at = now
                    note(f"Redis unreachable for {now - down_since:.0f}s; still waiting")
                delay = min(10.0, delay * 2)
                continue
            if down_since:
                note(f"Redis is back after {time.monotonic() - down_since:.0f}s")
                down_since, delay = 0.0, poll

    def results(self, batch_id: str) -> Iterator[Outcome]:
        """Each ended task's outcome (decrypted), in submission order."""
        batch = self.batch(batch_id)
        members = batch.members()  # a clear error for an unknown batch before any output
        return batch.outcomes(members=members)

    def queue_depth(self, queue: str | None = None) -> int:
        """How many tasks wait in the queue."""
        return self.queue_info(queue).queued

    def queue_info(self, queue: str | None = None) -> Depth:
        """Queued tasks, lapsed leases, running tasks and how long the oldest has waited."""
        return store_queues.depth(self.connection, queue or self.settings.queue)

    def drainers(self, queue: str | None = None) -> list[store_queues.Drainer]:
        """The workers draining the queue now (jobctl's drainers announce themselves as RQ workers)."""
        return store_queues.drainers(self.connection, queue or self.settings.queue)

    # -- changing ------------------------------------------------------------------------------

    def cancel(self, batch_id: str) -> int:
        """Drop the batch's queued tasks. Running ones finish. Returns how many were dropped."""
        return self.batch(batch_id).cancel()

    def retry(self, batch_id: str, options: dict[str, Any] | None = None, include_cancelled: bool = False) -> int:
        """Re-queue the batch's failed tasks (and cancelled ones with `include_cancelled`); `options` are merged
        into each task's own (checked like at submit). Returns how many."""
        from jobs.parse import check_task

        return self.batch(batch_id).retry(
            options, validate=lambda t: check_task(t, self.limits()), include_cancelled=include_cancelled
        )

    # -- draining in-process -------------------------------------------------------------------

    def drain(
        self, base_url: str | None = None, burst: bool = True, max_seconds: float | None = None, **options: Any
    ) -> Any:
        """Drain the queue in this process against `base_url` (or OPENAI_BASE_URL); returns the DrainReport."""
        from worker.drain import run_drain

        url = base_url or self.settings.base_url
        if not url:
            raise JobctlError("no model server: pass base_url or set OPENAI_BASE_URL")
        return run_drain(self.settings, self.connection, self.cipher, url, burst, max_seconds, **options)
