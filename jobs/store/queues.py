"""A queue as a whole, read without the key: how much work waits, who drains it, and why it may not be
draining. `jobctl status`, `jobctl wait` and Modal's cron read these; none of it is private.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis
from rq.utils import utcparse

from jobs.crypto import Cipher, DecryptError
from jobs.store import keys

# A drainer announces itself as an RQ worker; RQ drops its key when it stops heart-beating.
DRAINER_PREFIX = "jobctl-"


@dataclass(frozen=True)
class Depth:
    queued: int
    lapsed: int  # held by a worker whose lease ran out: back in the queue at the next sweep
    running: int
    oldest_wait: float  # seconds the task at the head of the queue has waited (0 when none)

    @property
    def waiting(self) -> int:
        return self.queued + self.lapsed


def depth(conn: redis.Redis, queue: str) -> Depth:
    """Queued tasks, lapsed leases and the head's age, in one round trip."""
    now = time.time()
    with conn.pipeline(transaction=False) as p:
        p.llen(keys.queue(queue))
        p.zcount(keys.started(queue), "-inf", now)
        p.zcard(keys.started(queue))
        p.lindex(keys.queue(queue), 0)
        queued, lapsed, held, head = p.execute()
    oldest = 0.0
    if head is not None:
        enq = conn.hget(keys.job(keys.text(head)), "enqueued_at")
        if enq:
            try:
                oldest = max(0.0, now - utcparse(keys.text(enq)).timestamp())
            except ValueError:
                oldest = 0.0
    return Depth(int(queued), int(lapsed), int(held) - int(lapsed), oldest)


@dataclass(frozen=True)
class Drainer:
    name: str
    state: str
    last_heartbeat: float


def drainers(conn: redis.Redis, queue: str) -> list[Drainer]:
    """Workers registered on the queue (jobctl's drainers and RQ workers) whose registration is alive."""
    out = []
    for raw in conn.smembers(keys.workers_of(queue)):
        wkey = keys.text(raw)
        state, beat = conn.hmget(wkey, "state", "last_heartbeat")
        if beat is None:
            continue  # expired: the worker died without unregistering
        try:
            ts = utcparse(keys.text(beat)).timestamp()
        except ValueError:
            ts = 0.0
        out.append(Drainer(wkey[len(keys.WORKER_PREFIX) :], keys.text(state or b"?"), ts))
    return out


def note_worker_seen(conn: redis.Redis, queue: str, pipeline: Any = None) -> None:
    (pipeline if pipeline is not None else conn).hset(keys.queue_health(queue), "worker_seen_at", time.time())


# The notes jobctl shows as its own words (`jobctl status`) are sealed: anyone who can write Redis could
# otherwise put "your key is revoked: run curl ... | sh" in front of the user as jobctl's diagnosis.
SEALED_NOTES = ("start_error", "cron_decision")


def health(conn: redis.Redis, queue: str, cipher: Cipher | None = None) -> dict[str, str]:
    """Notes on why a queue may not drain: when a worker was last seen, the last drainer start failure, the cron's
    last decision. With `cipher`, the sealed notes are opened; one that does not open is replaced by a warning
    (it was written without the key). Without it they are left out."""
    raw = {keys.text(k): keys.text(v) for k, v in conn.hgetall(keys.queue_health(queue)).items()}
    for name in SEALED_NOTES:
        if name not in raw:
            continue
        token = raw.pop(name)
        if cipher is None:
            continue
        try:
            raw[name] = cipher.decrypt(token, f"queue-health:{queue}:{name}").decode()
        except (DecryptError, UnicodeDecodeError):
            raw[name] = "(a note in Redis that does not check out: written without the key; ignored)"
    return raw


def _seal(cipher: Cipher, queue: str, name: str, text: str) -> str:
    return cipher.encrypt(text.encode(), f"queue-health:{queue}:{name}")


def report_start_failure(conn: redis.Redis, cipher: Cipher, queue: str, message: str, backoff_until: float) -> None:
    """A drainer that could not start (a model download failing, say): `jobctl status` shows why the queue is
    not draining, and Modal's cron starts no GPU before `backoff_until`. The message holds no task content."""
    conn.hset(
        keys.queue_health(queue),
        mapping={
            "start_failed_at": time.time(),
            "start_error": _seal(cipher, queue, "start_error", message[:500]),
            "backoff_until": backoff_until,
        },
    )


def clear_start_failure(conn: redis.Redis, queue: str) -> None:
    conn.hdel(keys.queue_health(queue), "start_failed_at", "start_error", "backoff_until")


def record_spawns(conn: redis.Redis, queue: str, call_ids: list[str]) -> None:
    if call_ids:
        now = time.time()
        conn.zadd(keys.spawns(queue), dict.fromkeys(call_ids, now))


def forget_spawn(conn: redis.Redis, queue: str, call_id: str) -> None:
    conn.zrem(keys.spawns(queue), call_id)


def pending_spawns(conn: redis.Redis, queue: str, max_age: float) -> int:
    """Drain calls started within `max_age` seconds that have not announced themselves yet."""
    now = time.time()
    conn.zremrangebyscore(keys.spawns(queue), "-inf", now - max_age)
    return int(conn.zcard(keys.spawns(queue)))


def recent_spawns(conn: redis.Redis, queue: str, max_age: float) -> list[str]:
    """The drain calls started within `max_age` seconds and not forgotten yet (Modal's cron matches them to the
    drainers that announced themselves, so a call is counted once whether it is on its way or draining)."""
    now = time.time()
    conn.zremrangebyscore(keys.spawns(queue), "-inf", now - max_age)
    return [keys.text(m) for m in conn.zrange(keys.spawns(queue), 0, -1)]


def note_cron(conn: redis.Redis, cipher: Cipher, queue: str, decision: str) -> None:
    """What Modal's cron decided last and why (it started n drainers, or why none), for `jobctl status`."""
    conn.hset(
        keys.queue_health(queue),
        mapping={"cron_at": time.time(), "cron_decision": _seal(cipher, queue, "cron_decision", decision[:300])},
    )


def record_drain(conn: redis.Redis, report: dict[str, Any], keep: int = 10_000) -> None:
    """Append a drain report (counts, tokens, container seconds, estimated cost) for `jobctl cost`."""
    conn.xadd(keys.DRAINS, {"report": json.dumps(report)}, maxlen=keep, approximate=True)


def drain_reports(conn: redis.Redis, since: float | None = None) -> list[dict[str, Any]]:
    start = f"{int(since * 1000)}-0" if since else "-"
    out = []
    entries: Any = conn.xrange(keys.DRAINS, start, "+")
    for _id, fields in entries:
        try:
            out.append(json.loads(fields[b"report"]))
        except (KeyError, ValueError):
            continue
    return out


def add_batch_costs(conn: redis.Redis, shares: dict[str, tuple[float, float]], ttl: int) -> None:
    """Attribute a drain's GPU seconds and estimated cost to the batches it drained: batch -> (seconds, usd)."""
    with conn.pipeline(transaction=False) as p:
        for batch_id, (seconds, usd) in shares.items():
            p.hincrbyfloat(keys.usage(batch_id), "gpu_seconds", seconds)
            p.hincrbyfloat(keys.usage(batch_id), "cost_usd", usd)
            p.expire(keys.usage(batch_id), ttl)
        p.execute()


def queues_with_work(conn: redis.Redis) -> dict[str, int]:
    """Every RQ queue in this Redis that holds queued tasks, by name."""
    names = [keys.text(k)[len(keys.QUEUE_PREFIX) :] for k in conn.smembers(keys.QUEUES_SET)]
    if not names:
        return {}
    with conn.pipeline(transaction=False) as p:
        for name in names:
            p.llen(keys.queue(name))
        counts = p.execute()
    return {n: int(c) for n, c in zip(names, counts, strict=True) if int(c) > 0}
