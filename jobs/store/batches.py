"""A batch as its owner reads and changes it: status, results, cancel and retry.

Everything here needs the batch's key: its members come from its sealed manifest, never from a
plaintext list, so a task grafted in, removed, swapped or replayed is detected and named (as a
`missing`, `tampered` or `replayed` outcome) while the rest still prints.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from jobs.crypto import Cipher, DecryptError
from jobs.errors import JobctlError
from jobs.outcomes import (
    ABANDONED,
    MISSING,
    REPLAYED,
    TAMPERED,
    WORKER_ERROR,
    Outcome,
    Usage,
)
from jobs.store import codec, keys, sealed
from jobs.store.scripts import Scripts
from jobs.store.submit import STEP

# RQ job status -> the bucket `jobctl status` counts it in.
BUCKETS = {
    "queued": "queued",
    "created": "queued",
    "started": "running",
    "finished": "completed",
    "failed": "failed",
    "canceled": "cancelled",
    "stopped": "failed",
    "deferred": "queued",
    "scheduled": "queued",
}
COUNT_NAMES = ("queued", "running", "completed", "failed", "cancelled", "expired", "missing")
# LREM scans a whole queue; past this length cancelled ids are left for the claim to skip.
CANCEL_SCAN_LIMIT = 20_000


class NoSuchBatchError(JobctlError):
    pass


class BatchKeyError(DecryptError):
    """The batch was sealed with another key than the configured one."""


@dataclass
class Member:
    """One entry of a batch's sealed manifest: a task (with its job id and fingerprint) or a refused line."""

    custom_id: str
    kind: str
    job_id: str = ""
    fp: str = ""
    rejected: tuple[str, str] | None = None  # (code, message)
    chunk: int = 0


@dataclass
class BatchStatus:
    id: str
    queue: str
    status: str
    created_at: float
    total: int
    duplicates: int
    counts: dict[str, int] = field(default_factory=dict)
    name: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    completed_at: float | None = None
    usage: Usage = field(default_factory=Usage)
    gpu_seconds: float = 0.0
    cost_usd: float = 0.0
    # Tasks whose stored state does not check out: custom_id -> missing / tampered / replayed.
    problems: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = {name: int(self.counts.get(name, 0)) for name in COUNT_NAMES}

    @property
    def done(self) -> bool:
        return self.counts["queued"] == 0 and self.counts["running"] == 0

    @property
    def failed(self) -> int:
        return self.counts["failed"] + self.counts["expired"] + self.counts["missing"]

    def as_dict(self) -> dict[str, Any]:
        c = self.counts
        return {
            "id": self.id,
            "object": "batch",
            "queue": self.queue,
            "status": self.status,
            "name": self.name,
            "metadata": self.metadata,
            "created_at": int(self.created_at),
            "completed_at": int(self.completed_at) if self.completed_at else None,
            "duplicates": self.duplicates,
            "request_counts": {"total": self.total, "completed": c["completed"], "failed": c["failed"]},
            "queued": c["queued"],
            "running": c["running"],
            "cancelled": c["cancelled"],
            "expired": c["expired"],
            "missing": c["missing"],
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "total_tokens": self.usage.prompt_tokens + self.usage.completion_tokens,
            },
            "gpu_seconds": round(self.gpu_seconds, 1),
            "estimated_cost_usd": round(self.cost_usd, 4),
            "problems": self.problems,
        }


class Batch:
    """A thin handle: an id, a connection and the key. Reads go to Redis each time."""

    def __init__(self, batch_id: str, connection: redis.Redis, cipher: Cipher):
        self.id = batch_id
        self.connection = connection
        self.cipher = cipher

    def __repr__(self) -> str:
        return f"Batch({self.id!r})"

    # -- reading ------------------------------------------------------------------------------

    def record(self) -> dict[str, str]:
        raw = self.connection.hgetall(keys.batch(self.id))
        if not raw or keys.text(raw.get(b"state", b"")) not in ("published", "publishing"):
            raise NoSuchBatchError(f"no batch {self.id!r} (it may have expired); `jobctl status` lists the batches")
        rec = {keys.text(k): keys.text(v) for k, v in raw.items()}
        if rec.get("key_id") != self.cipher.key_id:
            raise BatchKeyError(
                f"batch {self.id!r} was sealed with key {rec.get('key_id')}, not the configured key "
                f"{self.cipher.key_id}; set JOBCTL_KEY (or JOBCTL_KEY_FILE) to the key that submitted it"
            )
        return rec

    def header(self, rec: dict[str, str] | None = None) -> dict[str, Any]:
        rec = rec or self.record()
        try:
            return sealed.open_header(self.cipher, self.id, rec.get("header", ""))
        except DecryptError as e:
            raise JobctlError(f"batch {self.id!r}: its record failed authentication (tampered?): {e}") from e

    def members(self, header: dict[str, Any] | None = None) -> list[Member]:
        header = header or self.header()
        chunks = int(header["chunks"])
        tokens = _lrange_paged(self.connection, keys.manifest(self.id), 16)
        out: list[Member] = []
        if len(tokens) != chunks:
            raise JobctlError(
                f"batch {self.id!r}: its member list has {len(tokens)} of {chunks} parts (tampered or expired)"
            )
        for index, token in enumerate(tokens):
            try:
                entries = sealed.open_chunk(self.cipher, self.id, index, chunks, keys.text(token))
            except DecryptError as e:
                raise JobctlError(f"batch {self.id!r}: part {index} of its member list failed authentication") from e
            for entry in entries:
                if entry[0] == "r":
                    out.append(Member(str(entry[1]), "", rejected=(str(entry[2]), str(entry[3])), chunk=index))
                else:
                    out.append(Member(str(entry[1]), str(entry[2]), str(entry[3]), str(entry[4] or ""), chunk=index))
        if len(out) != int(header["total"]):
            raise JobctlError(f"batch {self.id!r}: its member list does not match its header (tampered)")
        return out

    def status(self, verify: bool = False) -> BatchStatus:
        """Counts by state. With `verify`, each result is opened too: tampered or replayed ones are named."""
        rec = self.record()
        header = self.header(rec)
        members = self.members(header)
        counts: Counter[str] = Counter()
        ended: list[float] = []
        problems: dict[str, str] = {}
        # The sealed header's figures, not the record's plain copies (kept for the scripts), which anyone
        # with Redis access could change.
        created = codec.number(header.get("created_at"), codec.number(rec.get("created_at")))
        result_ttl = codec.number(header.get("result_ttl"), codec.number(rec.get("result_ttl")))
        gone = "expired" if time.time() > created + result_ttl else "missing"
        tasks = [m for m in members if m.rejected is None]
        counts["failed"] += len(members) - len(tasks)
        for start in range(0, len(tasks), STEP):
            part = tasks[start : start + STEP]
            with self.connection.pipeline(transaction=False) as p:
                for m in part:
                    p.hmget(keys.job(m.job_id), "status", "ended_at")
                rows = p.execute()
            for m, (st, end) in zip(part, rows, strict=True):
                if st is None:
                    counts[gone] += 1
                    if gone == "missing":
                        problems[m.custom_id] = MISSING
                    continue
                counts[BUCKETS.get(st.decode(), "queued")] += 1
                if end:
                    ended.append(_parse_iso(end.decode()))
        usage = self._usage()
        if verify:
            usage = Usage()
            for o in self.outcomes(members=members, with_input=False):
                usage += o.usage
                if o.error and o.error["code"] in (TAMPERED, REPLAYED, MISSING):
                    problems[o.custom_id] = o.error["code"]
        pending = counts["queued"] + counts["running"]
        cancelled = "cancelled_at" in rec
        if pending:
            state = "cancelling" if cancelled else "in_progress"
        elif cancelled:
            state = "cancelled"
        elif members and counts["failed"] + counts["expired"] + counts["missing"] == len(members):
            state = "failed"
        else:
            state = "completed"
        raw = self._usage_raw()
        gpu = max(0.0, codec.number(raw.get("gpu_seconds")))
        cost = max(0.0, codec.number(raw.get("cost_usd")))
        return BatchStatus(
            self.id,
            str(header.get("queue", rec.get("queue", ""))),
            state,
            created,
            int(header["total"]),
            int(header.get("duplicates", 0)),
            dict(counts),
            header.get("name"),
            dict(header.get("metadata") or {}),
            max([created, *ended]) if not pending else None,  # duplicates of old tasks ended before it
            usage,
            gpu,
            cost,
            problems,
        )

    def _usage_raw(self) -> dict[str, str]:
        return {keys.text(k): keys.text(v) for k, v in self.connection.hgetall(keys.usage(self.id)).items()}

    def _usage(self) -> Usage:
        raw = self._usage_raw()
        return Usage(
            max(0, int(codec.number(raw.get("prompt_tokens")))), max(0, int(codec.number(raw.get("completion_tokens"))))
        )

    def outcomes(self, members: list[Member] | None = None, with_input: bool = True) -> Iterator[Outcome]:
        """Each ended task's outcome, in submission order; tasks queued, running or cancelled are left out
        (as in OpenAI's batch output)."""
        members = members if members is not None else self.members()
        for start in range(0, len(members), 1000):
            part = members[start : start + 1000]
            todo = [m for m in part if m.rejected is None]
            with self.connection.pipeline(transaction=False) as p:
                for m in todo:
                    p.xrevrange(keys.results(m.job_id), "+", "-", count=1)
                    p.hmget(keys.job(m.job_id), "status", "data", "jobctl_batch", "jobctl_fp")
                rows = p.execute()
            found = {m.job_id: (rows[2 * i], rows[2 * i + 1]) for i, m in enumerate(todo)}
            for m in part:
                if m.rejected is not None:
                    yield Outcome.problem("", m.custom_id, m.rejected[0], m.rejected[1])
                    continue
                stream, (status, data, owner, fp) = found[m.job_id]
                out = self._outcome(m, stream, status, data, owner, fp, with_input)
                if out is not None:
                    yield out

    def _outcome(
        self, m: Member, stream: Any, status: Any, data: Any, owner: Any, fp: Any, with_input: bool
    ) -> Outcome | None:
        st = keys.text(status) if status is not None else None
        if st is None:
            return Outcome.problem(
                m.job_id,
                m.custom_id,
                MISSING,
                "the task is gone from Redis (expired or deleted); submit it again",
                m.kind,
            )
        if st not in ("finished", "failed", "stopped"):
            return None
        task_input = self._input(m, data, owner, fp) if with_input else None
        if not stream:
            return Outcome.problem(m.job_id, m.custom_id, MISSING, "the task's result is gone from Redis", m.kind)
        _entry_id, payload = stream[0]
        try:
            ok, raw = codec.read_result(payload)
        except ValueError:
            return Outcome.problem(m.job_id, m.custom_id, TAMPERED, "the result is not a jobctl result", m.kind)
        if not ok and sealed.split_failure(raw) is None:
            return self._rq_failure(m, raw)
        try:
            opened = sealed.open_result(self.cipher, m.job_id, ok, raw)
        except (DecryptError, ValueError, KeyError, TypeError):
            return Outcome.problem(
                m.job_id, m.custom_id, TAMPERED, "the result failed authentication (changed in Redis)", m.kind
            )
        # A worker that could not read the task seals its failure without a custom_id.
        if opened.result.custom_id not in (m.custom_id, "") or (opened.result.ok and not opened.result.custom_id):
            return Outcome.problem(m.job_id, m.custom_id, TAMPERED, "the result belongs to another task", m.kind)
        if m.fp and opened.fp != m.fp:
            return Outcome.problem(
                m.job_id,
                m.custom_id,
                REPLAYED,
                "the result was made for other content than this batch submitted (the task was replaced or "
                "retried with other options since, or an old payload was replayed)",
                m.kind,
            )
        out = Outcome.of(m.job_id, opened.result, m.kind, task_input)
        out.custom_id = m.custom_id
        return out

    def _rq_failure(self, m: Member, exc_string: str) -> Outcome:
        # Recorded by RQ itself, unsealed: its text could say anything, so none of it is shown.
        if "AbandonedJobError" in exc_string:
            return Outcome.problem(
                m.job_id,
                m.custom_id,
                ABANDONED,
                "RQ's cleanup failed the task after its workers stopped too often; `jobctl retry` re-queues it",
                m.kind,
            )
        return Outcome.problem(
            m.job_id,
            m.custom_id,
            WORKER_ERROR,
            "a worker other than jobctl's failed the task (run `rq worker -w worker.rq_worker.TaskWorker`); "
            "`jobctl retry` re-queues it",
            m.kind,
        )

    def _input(self, m: Member, data: Any, owner: Any, fp: Any) -> dict[str, Any] | None:
        if data is None or owner is None or fp is None:
            return None
        if m.fp and fp.decode() != m.fp:
            return None  # an older (or other) payload of this task: its text is not what this batch sent
        try:
            task = sealed.open_payload(self.cipher, m.job_id, owner.decode(), fp.decode(), codec.decode_data(data))
        except (DecryptError, ValueError, KeyError, TypeError):
            return None
        return task.input

    # -- changing ------------------------------------------------------------------------------

    def cancel(self) -> int:
        """Drop the batch's queued tasks (running ones finish). Returns how many were dropped."""
        rec = self.record()
        header = self.header(rec)
        members = [m for m in self.members(header) if m.rejected is None]
        queue = str(header["queue"])
        scripts = Scripts(self.connection)
        now = time.time()
        ttl = int(codec.number(header.get("result_ttl"), codec.number(rec.get("result_ttl"))))
        n = 0
        for start in range(0, len(members), STEP):
            ids = [m.job_id for m in members[start : start + STEP]]
            n += int(
                scripts.cancel(
                    keys=[keys.queue(queue), keys.canceled(queue)],
                    args=[now + ttl, codec.iso(now), CANCEL_SCAN_LIMIT, *ids],
                )
            )
        self.connection.hset(keys.batch(self.id), "cancelled_at", now)
        return n

    def retry(
        self, options: dict[str, Any] | None = None, validate: Any = None, include_cancelled: bool = False
    ) -> int:
        """Re-queue the batch's failed tasks (and its cancelled ones with `include_cancelled`); with `options`,
        merged into each task's own first (`validate(task)` checks the changed task and raises a located
        error). Returns how many."""
        wanted = (b"failed", b"stopped", b"canceled") if include_cancelled else (b"failed", b"stopped")
        rec = self.record()
        header = self.header(rec)
        members = [m for m in self.members(header) if m.rejected is None]
        queue = str(header["queue"])
        scripts = Scripts(self.connection)
        changed_fps: dict[str, str] = {}
        n = 0
        for start in range(0, len(members), STEP):
            part = members[start : start + STEP]
            with self.connection.pipeline(transaction=False) as p:
                for m in part:
                    p.hmget(keys.job(m.job_id), "status", "data", "jobctl_batch", "jobctl_fp")
                rows = p.execute()
            args: list[Any] = []
            for m, (st, data, owner, fp) in zip(part, rows, strict=True):
                if st not in wanted:
                    continue
                new_data, new_fp = "", ""
                if options and data is not None and owner is not None and fp is not None:
                    task = sealed.open_payload(
                        self.cipher, m.job_id, owner.decode(), fp.decode(), codec.decode_data(data)
                    )
                    task.options = {**task.options, **options}
                    if validate is not None:
                        validate(task)
                    new_fp = sealed.fingerprint(self.cipher, queue, owner.decode(), task.canonical())
                    token = sealed.seal_payload(self.cipher, m.job_id, owner.decode(), new_fp, task)
                    new_data = codec.encode_data(token)  # type: ignore[assignment]
                    changed_fps[m.job_id] = new_fp
                args += [m.job_id, new_data, new_fp]
            if args:
                n += int(
                    scripts.retry(
                        keys=[keys.queue(queue), keys.failed(queue), keys.canceled(queue)],
                        args=[codec.iso(time.time()), codec.MAX_ABANDONS, *args],
                    )
                )
        if changed_fps:
            self._reseal(header, changed_fps)
        self.connection.hdel(keys.batch(self.id), "cancelled_at")
        return n

    def _reseal(self, header: dict[str, Any], changed: dict[str, str]) -> None:
        """Record the new fingerprints of tasks retried with other options in the sealed member list."""
        chunks = int(header["chunks"])
        tokens = _lrange_paged(self.connection, keys.manifest(self.id), 16)
        for index, token in enumerate(tokens):
            entries = sealed.open_chunk(self.cipher, self.id, index, chunks, keys.text(token))
            touched = False
            for e in entries:
                if e[0] == "t" and e[3] in changed:
                    e[4] = changed[e[3]]
                    touched = True
            if touched:
                self.connection.lset(
                    keys.manifest(self.id), index, sealed.seal_chunk(self.cipher, self.id, index, chunks, entries)
                )


def list_batches(
    connection: redis.Redis,
    cipher: Cipher,
    limit: int = 20,
    name: str | None = None,
    status: str | None = None,
    since: float | None = None,
) -> list[BatchStatus]:
    """The most recent batches sealed with this key (others' batches on a shared Redis are not shown)."""
    out: list[BatchStatus] = []
    start = 0
    page = max(limit * 2, 50)
    while len(out) < limit:
        ids = [keys.text(i) for i in connection.zrevrange(keys.BATCHES_INDEX, start, start + page - 1)]
        if not ids:
            break
        start += page
        with connection.pipeline(transaction=False) as p:
            for bid in ids:
                p.hmget(keys.batch(bid), "key_id", "created_at")
            rows = p.execute()
        gone = [bid for bid, (key_id, created) in zip(ids, rows, strict=True) if key_id is None and created is None]
        if gone:
            connection.zrem(keys.BATCHES_INDEX, *gone)  # expired with their results: drop them from the index
            start -= len(gone)
        for bid, (key_id, created) in zip(ids, rows, strict=True):
            if key_id is None or keys.text(key_id) != cipher.key_id:
                continue
            if since is not None and codec.number(created) < since:
                return out
            try:
                st = Batch(bid, connection, cipher).status()
            except JobctlError:
                continue  # expired between the index read and now, or unreadable
            if name is not None and (st.name or "") != name:
                continue
            if status is not None and st.status != status:
                continue
            out.append(st)
            if len(out) >= limit:
                break
    return out


def _lrange_paged(conn: redis.Redis, key: str, page: int) -> list[Any]:
    """A whole list, a page per command: a 500,000-task batch's member list is tens of megabytes, and one
    LRANGE of it would hold Redis for everyone while it is copied out."""
    out: list[Any] = []
    while True:
        part = conn.lrange(key, len(out), len(out) + page - 1)
        out += part
        if len(part) < page:
            return out


def _parse_iso(value: str) -> float:
    from rq.utils import utcparse

    try:
        return utcparse(value).timestamp()
    except ValueError:
        return 0.0
