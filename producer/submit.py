"""Enqueueing a validated file of tasks: all of them in one Redis transaction, or none.

A task whose custom_id is already in the queue with the same content (queued, running,
done or failed) is a duplicate: it is reported and not enqueued again, so cron can re-run
a submit safely. The new batch still lists it (`total` counts every task of the file,
`duplicates` those already there), so its status and results cover the whole file.

A custom_id that comes back with different content is a conflict: the whole submit is
refused, because silently replacing or skipping a changed task would lose work either way.
Pick a new custom_id for changed content.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now

from jobs import constants as c
from jobs import keys
from jobs.crypto import Cipher, DecryptError
from jobs.errors import JobctlError
from jobs.parse import Problem
from jobs.tasks import Task

WATCH_RETRIES = 5


class ConflictError(JobctlError):
    """custom_ids already in the queue with other content."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(
            f"{len(problems)} custom_id(s) were submitted before with different content; nothing was submitted:\n  "
            f"{lines}{more}\nGive changed tasks new custom_ids."
        )


@dataclass
class SubmitResult:
    batch_id: str
    total: int
    duplicates: int
    queue: str
    duplicate_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"batch_id": self.batch_id, "total": self.total, "duplicates": self.duplicates, "queue": self.queue}


def new_batch_id() -> str:
    return "batch_" + uuid.uuid4().hex[:20]


def check_queue_key(conn: redis.Redis, cipher: Cipher, queue: str) -> None:
    """Refuse to mix keys in one queue: a worker holds one key and could read none of the others."""
    conn.hsetnx(c.QUEUE_KEY_IDS, queue, cipher.key_id)
    held = conn.hget(c.QUEUE_KEY_IDS, queue)
    if held is not None and keys.text(held) != cipher.key_id:
        raise DecryptError(
            f"queue {queue!r} holds tasks encrypted with key {keys.text(held)}, but the configured key is "
            f"{cipher.key_id}; set JOBCTL_KEY to the queue's key or use another --queue"
        )


def enqueue_tasks(
    conn: redis.Redis,
    cipher: Cipher,
    tasks: list[Task],
    queue_name: str = c.DEFAULT_QUEUE,
    result_ttl: int = c.DEFAULT_RESULT_TTL,
    job_timeout: int = 900,
) -> SubmitResult:
    check_queue_key(conn, cipher, queue_name)
    queue = Queue(queue_name, connection=conn, serializer=JSONSerializer)
    ids = [keys.job_id(cipher, queue_name, t.custom_id) for t in tasks]
    fps = [keys.fingerprint(cipher, queue_name, t.canonical()) for t in tasks]
    job_keys = [keys.job_key(j) for j in ids]
    batch_id = new_batch_id()
    for _attempt in range(WATCH_RETRIES):
        with conn.pipeline() as pipe:
            try:
                # WATCH makes a concurrent submit of the same custom_id abort this one, not double it.
                pipe.watch(*job_keys)
                fresh = _split_existing(pipe, tasks, ids, fps, job_keys)
                pipe.multi()
                if fresh:
                    template = _job_template(queue, ids[fresh[0]], result_ttl, job_timeout, batch_id)
                    for i in fresh:
                        token = cipher.encrypt(tasks[i].to_json(), keys.payload_context(ids[i]))
                        pipe.hset(
                            job_keys[i],
                            mapping={
                                **template,
                                "data": zlib.compress(json.dumps([c.TASK_FUNC, None, [token], {}]).encode()),
                                "jobctl_fp": fps[i],
                            },
                        )
                    pipe.sadd(Queue.redis_queues_keys, queue.key)
                    fresh_ids = [ids[i] for i in fresh]
                    for start in range(0, len(fresh_ids), 1000):
                        pipe.rpush(queue.key, *fresh_ids[start : start + 1000])
                # Duplicates stay in the batch as references to the job already queued or done, so
                # the batch of a cron re-run shows (and `results` returns) every task of its file.
                for start in range(0, len(ids), 1000):
                    pipe.rpush(keys.batch_jobs_key(batch_id), *ids[start : start + 1000])
                now = time.time()
                pipe.hset(
                    keys.batch_key(batch_id),
                    mapping={
                        "queue": queue_name,
                        "total": len(tasks),
                        "duplicates": len(tasks) - len(fresh),
                        "created_at": now,
                        "result_ttl": result_ttl,
                    },
                )
                # The batch record lives a little longer than its results, then goes with them.
                pipe.expire(keys.batch_key(batch_id), result_ttl + 86400)
                pipe.expire(keys.batch_jobs_key(batch_id), result_ttl + 86400)
                pipe.zadd(c.BATCHES_INDEX, {batch_id: now})
                pipe.execute()
            except redis.WatchError:
                continue
        fresh_set = set(fresh)
        dup_ids = [tasks[i].custom_id for i in range(len(tasks)) if i not in fresh_set]
        return SubmitResult(batch_id, len(tasks), len(tasks) - len(fresh), queue_name, dup_ids)
    raise JobctlError("the queue kept changing while submitting (another submit of the same tasks?); try again")


def _job_template(queue: Queue, first_id: str, result_ttl: int, job_timeout: int, batch_id: str) -> dict[Any, Any]:
    """The job hash RQ itself would write (built by RQ once per batch), less the per-task `data`.

    RQ's enqueue_many costs ~100 us a job in Python; writing the same fields straight into the
    transaction is what lets a 10,000-task file go in within a couple of seconds.
    """
    job = queue.create_job(
        c.TASK_FUNC,
        args=[""],
        job_id=first_id,
        result_ttl=result_ttl,
        failure_ttl=result_ttl,
        timeout=job_timeout,
        description=f"jobctl task of {batch_id}",
        status=JobStatus.QUEUED,
    )
    job.origin = queue.name
    job.enqueued_at = now()
    # Empty fields are left out: RQ reads a missing field as empty, and each one costs at this volume.
    mapping = {k: v for k, v in job.to_dict().items() if v != ""}
    mapping["status"] = JobStatus.QUEUED.value
    mapping["jobctl_batch"] = batch_id
    mapping.pop("data", None)
    return mapping


def _split_existing(
    pipe: redis.client.Pipeline, tasks: list[Task], ids: list[str], fps: list[str], job_keys: list[str]
) -> list[int]:
    """Indexes of tasks not yet in the queue; raises ConflictError for changed content."""
    existing = _hmget_many(pipe, job_keys)
    fresh: list[int] = []
    conflicts: list[Problem] = []
    for i, (status, fp, batch) in enumerate(existing):
        if status is None:
            fresh.append(i)
        elif fp != fps[i].encode():
            where = tasks[i].origin or f"custom_id {tasks[i].custom_id!r}"
            prior = f" (batch {batch.decode()})" if batch else ""
            conflicts.append(
                Problem(where, f"custom_id {tasks[i].custom_id!r} is already in the queue{prior} with other content")
            )
    if conflicts:
        raise ConflictError(conflicts)
    return fresh


def _hmget_many(pipe: redis.client.Pipeline, job_keys: list[str]) -> list[list[bytes | None]]:
    # A watched pipeline runs commands at once; batching them through a plain pipeline keeps one round trip.
    client = redis.Redis(connection_pool=pipe.connection_pool)
    out: list[list[bytes | None]] = []
    step = 5000
    for start in range(0, len(job_keys), step):
        with client.pipeline(transaction=False) as p:
            for k in job_keys[start : start + step]:
                p.hmget(k, "status", "jobctl_fp", "jobctl_batch")
            out.extend(p.execute())
    return out


def dumps(result: SubmitResult) -> str:
    return json.dumps(result.as_dict())
