"""Submitting a batch: all of its tasks, or none as users see it, in bounded steps whatever its size.

1. Under the queue's submit lock (one submit per queue at a time; it expires if its holder dies),
   each task is compared with the job already stored under its id: absent (fresh), the same content
   (a duplicate: not enqueued again, but listed in the batch), or other content (a conflict that
   stops the whole submit, unless `replace` asks to re-run it with the new content).
2. Fresh tasks are *staged*: written as RQ jobs with status `created`, in no queue, so no worker
   sees them. The batch's members are sealed into its manifest.
3. The batch is *published*: a Lua script moves the staged jobs into the queue, a bounded chunk per
   call. A submit that dies half-way through publishing is rolled forward by the next one (or by a
   worker's sweep); one that dies while staging leaves only staged jobs that expire, and that the
   next submit of the same tasks overwrites.

No single Redis command touches more than STEP tasks, so a 500,000-task file never blocks other
clients for more than a few milliseconds at a time (docs/SECURITY.md gives the measured worst ping).
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from jobs.crypto import Cipher, DecryptError
from jobs.errors import JobctlError
from jobs.parse import Problem
from jobs.store import codec, keys, sealed
from jobs.store.scripts import Scripts
from jobs.tasks import Rejection, Task

STEP = 500
MANIFEST_CHUNK = 1000
# How long staged jobs of a submit that died stay before Redis drops them.
STAGING_TTL = 24 * 3600
# Extra life of a batch record past its results, so `status` can still say what became of it.
BATCH_GRACE = 24 * 3600
LOCK_TTL_MS = 30_000
DEFAULT_LOCK_WAIT = 120.0


class ConflictError(JobctlError):
    """custom_ids already in the queue with other content."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(
            f"{len(problems)} task(s) were submitted before with the same custom_id and kind but different "
            f"content; nothing was submitted:\n  {lines}{more}\n"
            "Give changed tasks new custom_ids, or pass --replace to run them again with the new content."
        )


class SubmitBusyError(JobctlError):
    """Another submit to the same queue held the lock for too long."""


class QueueKeyError(DecryptError):
    """The queue holds tasks sealed with another key."""


@dataclass
class SubmitResult:
    batch_id: str
    total: int
    duplicates: int
    queue: str
    replaced: int = 0
    rejected: int = 0
    duplicate_ids: list[str] = field(default_factory=list)

    @property
    def enqueued(self) -> int:
        return self.total - self.duplicates - self.rejected

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "queue": self.queue,
            "total": self.total,
            "enqueued": self.enqueued,
            "duplicates": self.duplicates,
            "replaced": self.replaced,
            "rejected": self.rejected,
        }


# OpenAI's batch metadata limits, and a name short enough to read in a listing.
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE, MAX_NAME = 16, 64, 512, 512


def check_batch_info(name: str | None, metadata: dict[str, str] | None) -> None:
    """A batch's name and metadata within their limits; InputError (nothing submitted) otherwise."""
    from jobs.parse import InputError

    problems = []
    if name is not None and not 0 < len(name) <= MAX_NAME:
        problems.append(Problem("name", f"must be 1 to {MAX_NAME} characters"))
    meta = metadata or {}
    if len(meta) > MAX_METADATA_PAIRS:
        problems.append(Problem("metadata", f"has {len(meta)} pairs; at most {MAX_METADATA_PAIRS} (OpenAI's limit)"))
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            problems.append(Problem("metadata", "keys and values must be strings"))
        elif not 0 < len(k) <= MAX_METADATA_KEY or len(v) > MAX_METADATA_VALUE:
            problems.append(
                Problem(
                    f"metadata: {k[:40]!r}",
                    f"keys are 1 to {MAX_METADATA_KEY} characters, values at most {MAX_METADATA_VALUE}",
                )
            )
    if problems:
        raise InputError("batch", problems)


def new_batch_id() -> str:
    return "batch_" + uuid.uuid4().hex[:20]


def check_queue_key(conn: redis.Redis, cipher: Cipher, queue: str) -> None:
    """Refuse to mix keys in one queue: a worker holds one key and could read none of the others."""
    with conn.pipeline(transaction=False) as p:
        p.hsetnx(keys.QUEUE_KEY_IDS, queue, cipher.key_id)
        p.hget(keys.QUEUE_KEY_IDS, queue)
        _, held = p.execute()
    if held is not None and keys.text(held) != cipher.key_id:
        raise QueueKeyError(
            f"queue {queue!r} holds tasks sealed with key {keys.text(held)}, but the configured key is "
            f"{cipher.key_id}; set JOBCTL_KEY to the queue's key or use another --queue"
        )


# -- the lock ----------------------------------------------------------------------------------


class SubmitLock:
    def __init__(self, conn: redis.Redis, queue: str, scripts: Scripts):
        self.conn, self.key, self.scripts = conn, keys.submit_lock(queue), scripts
        self.token = secrets.token_hex(16)

    def acquire(self, wait: float) -> None:
        end = time.monotonic() + wait
        delay = 0.05
        while not self.conn.set(self.key, self.token, nx=True, px=LOCK_TTL_MS):
            if time.monotonic() > end:
                raise SubmitBusyError(
                    f"another submit to this queue has been running for over {wait:.0f}s; try again when it ends"
                )
            time.sleep(delay)
            delay = min(1.0, delay * 2)

    def renew(self) -> None:
        if not self.scripts.renew_lock(keys=[self.key], args=[self.token, LOCK_TTL_MS]):
            raise SubmitBusyError(
                "this submit lost its lock on the queue (it stalled for over 30 s); nothing was published: submit again"
            )

    def release(self) -> None:
        self.scripts.release_lock(keys=[self.key], args=[self.token])


@contextmanager
def locked(conn: redis.Redis, queue: str, scripts: Scripts, wait: float = DEFAULT_LOCK_WAIT) -> Iterator[SubmitLock]:
    lock = SubmitLock(conn, queue, scripts)
    lock.acquire(wait)
    try:
        yield lock
    finally:
        try:
            lock.release()
        except redis.RedisError:
            pass  # it expires on its own


# -- submit ------------------------------------------------------------------------------------


@dataclass
class _Plan:
    ids: list[str]
    fps: list[str]
    fresh: list[int] = field(default_factory=list)
    replace: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)


def submit(
    conn: redis.Redis,
    cipher: Cipher,
    tasks: list[Task],
    queue: str,
    result_ttl: int,
    *,
    rejected: list[Rejection] | None = None,
    name: str | None = None,
    metadata: dict[str, str] | None = None,
    replace: bool = False,
    lock_wait: float = DEFAULT_LOCK_WAIT,
) -> SubmitResult:
    """Stage, seal and publish one batch. Raises ConflictError (nothing submitted) for changed content."""
    rejected = rejected or []
    check_batch_info(name, metadata)
    check_queue_key(conn, cipher, queue)
    scripts = Scripts(conn)
    batch_id = new_batch_id()
    with locked(conn, queue, scripts, lock_wait) as lock:
        roll_forward(conn, queue, scripts, lock)
        plan = _classify(conn, cipher, tasks, queue, batch_id, replace)
        staged = _stage(conn, cipher, tasks, plan, queue, batch_id, result_ttl, lock)
        _write_batch(conn, cipher, tasks, rejected, plan, queue, batch_id, result_ttl, name, metadata, lock)
        _publish(conn, scripts, queue, batch_id, staged, lock)
    dup_ids = [tasks[i].custom_id for i in plan.duplicates]
    return SubmitResult(
        batch_id,
        len(tasks) + len(rejected),
        len(plan.duplicates),
        queue,
        len(plan.replace),
        len(rejected),
        dup_ids,
    )


def _classify(conn: redis.Redis, cipher: Cipher, tasks: list[Task], queue: str, batch_id: str, replace: bool) -> _Plan:
    ids = [sealed.job_id(cipher, queue, t) for t in tasks]
    canon = [t.canonical() for t in tasks]
    plan = _Plan(ids, [sealed.fingerprint(cipher, queue, batch_id, c) for c in canon])
    conflicts: list[Problem] = []
    for start in range(0, len(ids), STEP):
        with conn.pipeline(transaction=False) as p:
            for jid in ids[start : start + STEP]:
                p.hmget(keys.job(jid), "status", "jobctl_fp", "jobctl_batch")
            rows = p.execute()
        for i, (status, fp, owner) in enumerate(rows, start):
            # A job still `created` belongs to a submit that died before publishing (this one holds the lock).
            if status is None or status == b"created":
                plan.fresh.append(i)
                continue
            same = (
                fp is not None
                and owner is not None
                and fp.decode() == sealed.fingerprint(cipher, queue, owner.decode(), canon[i])
            )
            if same:
                plan.duplicates.append(i)
            elif replace:
                plan.replace.append(i)
            else:
                t = tasks[i]
                where = t.origin or f"custom_id {t.custom_id!r}"
                conflicts.append(
                    Problem(where, f"custom_id {t.custom_id!r} ({t.kind}) is already in the queue with other content")
                )
    if conflicts:
        raise ConflictError(conflicts)
    return plan


def _stage(
    conn: redis.Redis,
    cipher: Cipher,
    tasks: list[Task],
    plan: _Plan,
    queue: str,
    batch_id: str,
    result_ttl: int,
    lock: SubmitLock,
) -> list[str]:
    template = codec.job_template(conn, queue, result_ttl, batch_id) if plan.fresh else {}
    staged_key = keys.batch(batch_id) + ":staged"
    todo = [(i, False) for i in plan.fresh] + [(i, True) for i in plan.replace]
    staged: list[str] = []
    for start in range(0, len(todo), STEP):
        with conn.pipeline(transaction=False) as p:
            chunk_ids = []
            for i, is_replacement in todo[start : start + STEP]:
                jid, fp = plan.ids[i], plan.fps[i]
                data = codec.encode_data(sealed.seal_payload(cipher, jid, batch_id, fp, tasks[i]))
                jk = keys.job(jid)
                if is_replacement:
                    p.hset(jk, mapping={"jobctl_next_data": data, "jobctl_next_fp": fp, "jobctl_next_batch": batch_id})
                else:
                    p.delete(jk)
                    fields: dict[Any, Any] = {**template, "data": data, "jobctl_batch": batch_id, "jobctl_fp": fp}
                    p.hset(jk, mapping=fields)
                    p.expire(jk, STAGING_TTL)
                chunk_ids.append(jid)
            p.rpush(staged_key, *chunk_ids)
            p.expire(staged_key, STAGING_TTL)
            p.execute()
        staged += chunk_ids
        lock.renew()
    return staged


def _write_batch(
    conn: redis.Redis,
    cipher: Cipher,
    tasks: list[Task],
    rejected: list[Rejection],
    plan: _Plan,
    queue: str,
    batch_id: str,
    result_ttl: int,
    name: str | None,
    metadata: dict[str, str] | None,
    lock: SubmitLock,
) -> None:
    # Members in file order: tasks, then the lines refused per line (unsupported endpoints).
    entries: list[list[Any]] = [["t", t.custom_id, t.kind, plan.ids[i], plan.fps[i]] for i, t in enumerate(tasks)]
    for i in plan.duplicates:
        entries[i][4] = None  # resolved at read time: the fingerprint the existing job holds
    entries += [["r", r.custom_id, r.code, r.message] for r in rejected]
    chunks = max(1, -(-len(entries) // MANIFEST_CHUNK))
    now = time.time()
    header = {
        "queue": queue,
        "created_at": now,
        "name": name,
        "metadata": metadata or {},
        "total": len(entries),
        "duplicates": len(plan.duplicates),
        "replaced": len(plan.replace),
        "rejected": len(rejected),
        "chunks": chunks,
        "result_ttl": result_ttl,
    }
    ttl = result_ttl + BATCH_GRACE
    with conn.pipeline(transaction=False) as p:
        p.hset(
            keys.batch(batch_id),
            mapping={
                "queue": queue,
                "created_at": now,
                "key_id": cipher.key_id,
                "state": "staging",
                "result_ttl": result_ttl,
                "header": sealed.seal_header(cipher, batch_id, header),
            },
        )
        p.expire(keys.batch(batch_id), STAGING_TTL)
        p.delete(keys.manifest(batch_id))
        p.execute()
    for index in range(chunks):
        part = entries[index * MANIFEST_CHUNK : (index + 1) * MANIFEST_CHUNK]
        # Duplicates keep the fingerprint their job holds: a duplicate's result was made for that content.
        if any(e[0] == "t" and e[4] is None for e in part):
            _fill_duplicate_fps(conn, part)
        conn.rpush(keys.manifest(batch_id), sealed.seal_chunk(cipher, batch_id, index, chunks, part))
        lock.renew()
    with conn.pipeline(transaction=False) as p:
        p.expire(keys.manifest(batch_id), ttl)
        p.execute()


def _fill_duplicate_fps(conn: redis.Redis, part: list[list[Any]]) -> None:
    todo = [e for e in part if e[0] == "t" and e[4] is None]
    with conn.pipeline(transaction=False) as p:
        for e in todo:
            p.hget(keys.job(e[3]), "jobctl_fp")
        for e, fp in zip(todo, p.execute(), strict=True):
            e[4] = keys.text(fp) if fp is not None else ""


def _publish(
    conn: redis.Redis, scripts: Scripts, queue: str, batch_id: str, staged: list[str], lock: SubmitLock
) -> None:
    with conn.pipeline(transaction=False) as p:
        p.sadd(keys.publishing(queue), batch_id)
        p.hset(keys.batch(batch_id), "state", "publishing")
        # RQ's set of queues: how `rq info` and rq-dashboard find this one.
        p.sadd(keys.QUEUES_SET, keys.queue(queue))
        p.execute()
    _publish_ids(conn, scripts, queue, batch_id, staged, lock)
    _mark_published(conn, queue, batch_id)


def _publish_ids(
    conn: redis.Redis, scripts: Scripts, queue: str, batch_id: str, ids: list[str], lock: SubmitLock | None
) -> None:
    now = codec.iso(time.time())
    reg = [keys.queue(queue), keys.started(queue), keys.finished(queue), keys.failed(queue), keys.canceled(queue)]
    for start in range(0, len(ids), STEP):
        scripts.publish(keys=reg, args=[batch_id, now, codec.MAX_ABANDONS, *ids[start : start + STEP]])
        if lock is not None:
            lock.renew()


def _mark_published(conn: redis.Redis, queue: str, batch_id: str) -> None:
    raw_ttl = conn.hget(keys.batch(batch_id), "result_ttl")
    ttl = int(codec.number(raw_ttl, codec.JOB_TIMEOUT)) + BATCH_GRACE
    created = codec.number(conn.hget(keys.batch(batch_id), "created_at"), time.time())
    with conn.pipeline(transaction=True) as p:
        p.hset(keys.batch(batch_id), "state", "published")
        p.expire(keys.batch(batch_id), ttl)
        p.delete(keys.batch(batch_id) + ":staged")
        p.zadd(keys.BATCHES_INDEX, {batch_id: created})
        p.srem(keys.publishing(queue), batch_id)
        p.execute()


def roll_forward(conn: redis.Redis, queue: str, scripts: Scripts, lock: SubmitLock | None) -> int:
    """Finish publishing the batches whose submit died half-way through it. Returns how many."""
    pending = [keys.text(b) for b in conn.smembers(keys.publishing(queue))]
    for batch_id in pending:
        staged_key = keys.batch(batch_id) + ":staged"
        if not conn.exists(keys.batch(batch_id)):
            conn.srem(keys.publishing(queue), batch_id)
            continue
        start = 0
        while part := [keys.text(j) for j in conn.lrange(staged_key, start, start + STEP - 1)]:
            _publish_ids(conn, scripts, queue, batch_id, part, lock)
            start += len(part)
        _mark_published(conn, queue, batch_id)
    return len(pending)


def roll_forward_if_needed(conn: redis.Redis, queue: str) -> int:
    """For workers: finish a dead submit's publishing when no submit is running (cheap when none is pending)."""
    if not conn.scard(keys.publishing(queue)):
        return 0
    scripts = Scripts(conn)
    lock = SubmitLock(conn, queue, scripts)
    if not conn.set(lock.key, lock.token, nx=True, px=LOCK_TTL_MS):
        return 0  # a submit is running; it rolls forward itself
    try:
        return roll_forward(conn, queue, scripts, lock)
    finally:
        lock.release()
