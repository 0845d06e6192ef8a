"""The task state changes a drain makes in Redis, each one atomic (jobs.scripts) and batched
into one round trip where it can be: claim, heartbeat, finish, release, requeue abandoned."""

from __future__ import annotations

import json
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from jobs import constants as c
from jobs import keys
from jobs import results as r
from jobs.scripts import Scripts


@dataclass
class Claimed:
    job_id: str
    execution_id: str
    data: bytes
    started: float

    @property
    def member(self) -> str:
        return f"{self.job_id}:{self.execution_id}"

    def payload(self) -> str:
        _func, _inst, args, _kw = json.loads(zlib.decompress(self.data))
        token: str = args[0]
        return token


@dataclass
class Finish:
    claimed: Claimed
    ok: bool
    sealed: str  # the encrypted return value, or the failure exc_string


class QueueState:
    def __init__(self, conn: redis.Redis, queue: str, worker_name: str, lease_seconds: int, result_ttl: int):
        self.conn = conn
        self.queue = queue
        self.worker_name = worker_name
        self.lease = lease_seconds
        self.result_ttl = result_ttl
        self.scripts = Scripts(conn)
        self.queue_key = keys.queue_key(queue)
        self.started_key = keys.started_key(queue)
        # Execution ids must be unique per claim; a per-process prefix plus a counter is.
        self._exec_prefix = uuid.uuid4().hex[:12]
        self._seq = 0

    def claim(self, count: int) -> list[Claimed]:
        now = time.time()
        self._seq += 1
        flat = self.scripts.claim(
            keys=[self.queue_key, self.started_key],
            args=[
                count,
                now + self.lease,
                self.worker_name,
                _iso(now),
                now,
                self.lease + 60,
                f"{self._exec_prefix}{self._seq}x",
            ],
        )
        return [Claimed(flat[i].decode(), flat[i + 1].decode(), flat[i + 2], now) for i in range(0, len(flat), 3)]

    def heartbeat(self, members: list[str]) -> None:
        if not members:
            return
        score = time.time() + self.lease
        with self.conn.pipeline(transaction=False) as p:
            # XX: a lease that another worker already took back stays taken back.
            for start in range(0, len(members), 1000):
                p.zadd(self.started_key, {m: score for m in members[start : start + 1000]}, xx=True)
            p.execute()

    def finish_many(self, items: list[Finish]) -> list[bool]:
        """Write each result if this worker still holds the task. False means it was taken back."""
        if not items:
            return []
        now = time.time()
        ended = _iso(now)
        with self.conn.pipeline(transaction=False) as p:
            for f in items:
                jid = f.claimed.job_id
                res = Result(
                    jid,
                    Result.Type.SUCCESSFUL if f.ok else Result.Type.FAILED,
                    self.conn,
                    return_value=f.sealed if f.ok else None,
                    exc_string=None if f.ok else f.sealed,
                    worker_name=self.worker_name,
                    serializer=JSONSerializer,
                    execution_id=f.claimed.execution_id,
                )
                status = "finished" if f.ok else "failed"
                registry = keys.finished_key(self.queue) if f.ok else keys.failed_key(self.queue)
                fields = res.serialize()
                fields["execution_started_at"] = f.claimed.started
                fields["execution_ended_at"] = now
                flat: list[Any] = []
                for k, v in fields.items():
                    flat += [k, v]
                self.scripts.finish(
                    keys=[self.started_key, keys.job_key(jid), registry, keys.results_key(jid)],
                    args=[
                        f.claimed.member,
                        status,
                        ended,
                        now + self.result_ttl,
                        self.result_ttl,
                        f.claimed.execution_id,
                        jid,
                        *flat,
                    ],
                    client=p,
                )
            return [bool(x) for x in p.execute()]

    def release(self, claimed: list[Claimed]) -> int:
        if not claimed:
            return 0
        with self.conn.pipeline(transaction=False) as p:
            for cl in claimed:
                self.scripts.release(
                    keys=[self.started_key, self.queue_key, keys.job_key(cl.job_id)],
                    args=[cl.member, cl.job_id],
                    client=p,
                )
            return sum(int(x) for x in p.execute())

    def requeue_abandoned(self) -> tuple[int, int]:
        """Put back tasks whose worker stopped heart-beating. Returns (requeued, failed)."""
        now = time.time()
        res = Result(
            "",
            Result.Type.FAILED,
            self.conn,
            exc_string=f"{r.FAILURE_PREFIX}{r.ABANDONED}\n-",
            worker_name=self.worker_name,
            serializer=JSONSerializer,
        )
        flat: list[Any] = []
        for k, v in res.serialize().items():
            flat += [k, v]
        requeued, failed = self.scripts.requeue_abandoned(
            keys=[self.started_key, self.queue_key, keys.failed_key(self.queue)],
            args=[now, c.MAX_ABANDONS, now + self.result_ttl, self.result_ttl, _iso(now), *flat],
        )
        return int(requeued), int(failed)

    def depth(self) -> int:
        return int(self.conn.llen(self.queue_key))

    def running(self) -> int:
        return int(self.conn.zcard(self.started_key))


def _iso(ts: float) -> str:
    return utcformat(datetime.fromtimestamp(ts, tz=UTC))
