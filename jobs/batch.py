"""A batch handle (thin: an id and a connection) and the state of its tasks, read from RQ."""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from rq.results import Result

from jobs import constants as c
from jobs import keys
from jobs import results as r
from jobs.crypto import Cipher
from jobs.errors import JobctlError
from jobs.tasks import Task

# RQ job status -> the bucket `jobctl status` counts it in.
BUCKETS = {
    "queued": "queued",
    "started": "running",
    "finished": "completed",
    "failed": "failed",
    "canceled": "cancelled",
    "stopped": "failed",
    "deferred": "queued",
    "scheduled": "queued",
}


class NoSuchBatchError(JobctlError):
    pass


@dataclass
class BatchStatus:
    id: str
    queue: str
    status: str
    created_at: float
    total: int
    duplicates: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.counts.get("queued", 0) == 0 and self.counts.get("running", 0) == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "queue": self.queue,
            "status": self.status,
            "created_at": int(self.created_at),
            "duplicates": self.duplicates,
            "request_counts": {
                "total": self.total,
                "completed": self.counts.get("completed", 0),
                "failed": self.counts.get("failed", 0),
            },
            "queued": self.counts.get("queued", 0),
            "running": self.counts.get("running", 0),
            "cancelled": self.counts.get("cancelled", 0),
            "expired": self.counts.get("expired", 0),
        }


class Batch:
    def __init__(self, batch_id: str, connection: redis.Redis):
        self.id = batch_id
        self.connection = connection

    def __repr__(self) -> str:
        return f"Batch({self.id!r})"

    def meta(self) -> dict[str, str]:
        raw = self.connection.hgetall(keys.batch_key(self.id))
        if not raw:
            raise NoSuchBatchError(f"no batch {self.id!r} (it may have expired); `jobctl status` lists the batches")
        return {keys.text(k): keys.text(v) for k, v in raw.items()}

    def job_ids(self) -> list[str]:
        return [keys.text(j) for j in self.connection.lrange(keys.batch_jobs_key(self.id), 0, -1)]

    def job_statuses(self, ids: list[str] | None = None) -> list[str | None]:
        ids = self.job_ids() if ids is None else ids
        out: list[str | None] = []
        for start in range(0, len(ids), 5000):
            with self.connection.pipeline(transaction=False) as p:
                for j in ids[start : start + 5000]:
                    p.hget(keys.job_key(j), "status")
                out.extend(s.decode() if s else None for s in p.execute())
        return out

    def status(self) -> BatchStatus:
        meta = self.meta()
        counts = Counter(BUCKETS.get(s, "queued") if s else "expired" for s in self.job_statuses())
        total = int(meta.get("total", 0))
        cancel_requested = "cancelled_at" in meta
        pending = counts["queued"] + counts["running"]
        if pending:
            state = "cancelling" if cancel_requested else "in_progress"
        elif cancel_requested:
            state = "cancelled"
        elif total and counts["failed"] + counts["expired"] == total:
            state = "failed"
        else:
            state = "completed"
        return BatchStatus(
            self.id,
            meta.get("queue", ""),
            state,
            float(meta.get("created_at", 0)),
            total,
            int(meta.get("duplicates", 0)),
            dict(counts),
        )

    def outcomes(self, cipher: Cipher) -> Iterator[r.Outcome]:
        """Each finished or failed task's outcome, in submission order."""
        ids = self.job_ids()
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            with self.connection.pipeline(transaction=False) as p:
                for j in chunk:
                    p.xrevrange(keys.results_key(j), "+", "-", count=1)
                    p.hget(keys.job_key(j), "data")
                rows = p.execute()
            for i, j in enumerate(chunk):
                stream, data = rows[2 * i], rows[2 * i + 1]
                if not stream:
                    continue
                result_id, payload = stream[0]
                res = Result.restore(j, result_id.decode(), payload, connection=self.connection, serializer=_JSON)
                if res.type == Result.Type.SUCCESSFUL:
                    yield r.open_success(cipher, j, str(res.return_value))
                else:
                    out = r.open_failure(cipher, j, res.exc_string or "")
                    if not out.custom_id and data:
                        out.custom_id = read_task(cipher, j, data).custom_id
                    yield out


class _JSON:
    @staticmethod
    def dumps(obj: Any) -> bytes:
        return json.dumps(obj).encode()

    @staticmethod
    def loads(s: bytes) -> Any:
        return json.loads(s)


def read_task(cipher: Cipher, jid: str, data: bytes) -> Task:
    """The task inside an RQ job's `data` field (zlib'd JSON of [func, instance, args, kwargs])."""
    _func, _inst, args, _kw = json.loads(zlib.decompress(data))
    return Task.from_json(cipher.decrypt(args[0], keys.payload_context(jid)))


def recent_batches(connection: redis.Redis, limit: int = 20) -> list[Batch]:
    ids = connection.zrevrange(c.BATCHES_INDEX, 0, limit - 1)
    return [Batch(keys.text(i), connection) for i in ids]
