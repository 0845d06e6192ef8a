"""The worker's side of the store: claim, heartbeat, finish, release and sweep tasks, and announce
the worker to RQ (and to `jobctl status` and Modal's cron) while it drains.

Every method is one round trip (a Lua script over a bounded batch, or one pipeline). Each claimed
task holds a lease in RQ's started registry that `heartbeat` renews; a task whose worker stopped is
put back by `sweep` (or by RQ's own cleanup, the same way: its retries_left counts down). Only the
lease holder can write a result, so a task gets exactly one.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from rq.worker import SimpleWorker, WorkerStatus

from jobs import outcomes as o
from jobs.crypto import Cipher, DecryptError
from jobs.outcomes import Failure, TaskResult
from jobs.store import codec, keys, sealed
from jobs.store.scripts import Scripts
from jobs.tasks import Task

# At most this many tasks per script call: each call then holds Redis for a few milliseconds at most.
STEP = 500
# How long a job may sit in RQ's intermediate list (popped by an `rq worker` that then died) before it
# goes back to the queue; RQ's own cleanup waits a minute too.
INTERMEDIATE_GRACE = 60


@dataclass
class Claimed:
    """A task this worker holds a lease on."""

    job_id: str
    execution_id: str
    data: bytes
    batch_id: str
    fp: str
    started: float

    @property
    def member(self) -> str:
        """Its member in RQ's started registry."""
        return f"{self.job_id}:{self.execution_id}"

    def key_id(self) -> str | None:
        """The key id its payload was sealed with (readable without the key)."""
        try:
            return sealed.key_id_of(codec.decode_data(self.data))
        except ValueError:
            return None

    def open(self, cipher: Cipher) -> Task:
        """The task. Raises ValueError (not a jobctl job) or DecryptError (tampered, replayed, wrong key)."""
        return sealed.open_payload(cipher, self.job_id, self.batch_id, self.fp, codec.decode_data(self.data))


@dataclass
class Finished:
    claimed: Claimed
    result: TaskResult


class WorkQueue:
    """One worker's view of one queue."""

    def __init__(
        self,
        conn: redis.Redis,
        cipher: Cipher,
        queue: str,
        lease_seconds: int,
        result_ttl: int,
        worker_name: str | None = None,
    ):
        self.conn = conn
        self.cipher = cipher
        self.queue = queue
        self.lease = lease_seconds
        self.result_ttl = result_ttl
        self.worker_name = worker_name or f"jobctl-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.scripts = Scripts(conn)
        self.queue_key = keys.queue(queue)
        self.started_key = keys.started(queue)
        # Execution ids must be unique per claim: a per-worker prefix plus a counter is.
        self._exec_prefix = uuid.uuid4().hex[:12]
        self._seq = 0
        self._rq_worker: SimpleWorker | None = None

    # -- tasks --------------------------------------------------------------------------------

    def _next_prefix(self) -> str:
        self._seq += 1
        return f"{self._exec_prefix}{self._seq}x"

    def claim(self, count: int) -> list[Claimed]:
        """Up to `count` queued tasks, each moved into RQ's started registry under this worker's lease."""
        if count <= 0:
            return []
        now = time.time()
        flat = self.scripts.claim(
            keys=[self.queue_key, self.started_key],
            args=[
                min(count, STEP),
                now + self.lease,
                self.worker_name,
                codec.iso(now),
                now,
                self.lease,
                self._next_prefix(),
            ],
        )
        return _claimed(flat, 0, now)

    def heartbeat(self, members: list[str]) -> int:
        """Renew the leases this worker still holds; returns how many it still holds."""
        if not members:
            return 0
        now = time.time()
        held = 0
        with self.conn.pipeline(transaction=False) as p:
            for start in range(0, len(members), STEP):
                self.scripts.heartbeat(
                    keys=[self.started_key],
                    args=[now + self.lease, now, codec.iso(now), self.lease, *members[start : start + STEP]],
                    client=p,
                )
            if self._rq_worker is not None:
                self._rq_worker.heartbeat(self.lease + 60, pipeline=p)
            results = p.execute()
        held = sum(int(x) for x in results[: -(-len(members) // STEP)])
        return held

    def finish(self, items: list[Finished]) -> list[bool]:
        """Seal and write each result if this worker still holds the task. False: another took it back."""
        if not items:
            return []
        now = time.time()
        ended = codec.iso(now)
        worker_key = keys.worker(self.worker_name)
        with self.conn.pipeline(transaction=False) as p:
            for f in items:
                cl, res = f.claimed, f.result
                jid = cl.job_id
                token = sealed.seal_result(self.cipher, jid, cl.batch_id, cl.fp, res)
                fields = codec.result_fields(jid, res.ok, token, self.worker_name, cl.execution_id, cl.started, now)
                self.scripts.finish(
                    keys=[
                        self.started_key,
                        keys.job(jid),
                        keys.finished(self.queue) if res.ok else keys.failed(self.queue),
                        keys.results(jid),
                        keys.usage(cl.batch_id or "none"),
                        worker_key,
                    ],
                    args=[
                        cl.member,
                        "finished" if res.ok else "failed",
                        ended,
                        now + self.result_ttl,
                        self.result_ttl,
                        res.usage.prompt_tokens,
                        res.usage.completion_tokens,
                        "successful_job_count" if res.ok else "failed_job_count",
                        round(max(0.0, now - cl.started), 6),
                        *fields,
                    ],
                    client=p,
                )
            return [bool(x) for x in p.execute()]

    def release(self, claimed: Iterable[Claimed]) -> int:
        """Hand claimed tasks back to the front of the queue; returns how many this worker still held."""
        members = [cl.member for cl in claimed]
        n = 0
        for start in range(0, len(members), STEP):
            n += int(self.scripts.release(keys=[self.started_key, self.queue_key], args=members[start : start + STEP]))
        return n

    def sweep(self) -> tuple[int, list[Claimed]]:
        """Put back tasks whose worker stopped heart-beating. Returns (how many went back, the tasks with no
        retries left, now claimed by this worker so that it seals their `abandoned` failure)."""
        now = time.time()
        flat = self.scripts.sweep(
            keys=[self.started_key, self.queue_key],
            args=[now, STEP, now + self.lease, self.worker_name, codec.iso(now), self.lease, self._next_prefix()],
        )
        return int(flat[0]), _claimed(flat, 1, now)

    def fail_abandoned(self, exhausted: list[Claimed]) -> int:
        """Fail the tasks `sweep` returned with no retries left: a jobctl task gets a sealed `abandoned`
        failure, anything else (planted on the queue) is refused with nothing of it loaded. Returns how
        many this worker still held."""
        done: list[Finished] = []
        n = 0
        for cl in exhausted:
            problem = codec.foreign_job_problem(self.conn, cl.job_id, cl.data)
            if problem is not None:
                n += self.refuse(cl.job_id, cl.execution_id, f"refused by jobctl: {problem}")
                continue
            try:
                cid = cl.open(self.cipher).custom_id
            except (DecryptError, ValueError, KeyError, TypeError):
                cid = ""
            message = (
                "the workers running this task stopped (killed or lost) too many times; `jobctl retry` re-queues it"
            )
            done.append(Finished(cl, Failure(cid, o.ABANDONED, message)))
        return n + sum(self.finish(done))

    def refuse(self, job_id: str, execution_id: str, reason: str) -> bool:
        """Fail a held job that is not jobctl's, with nothing of it run (see scripts.REFUSE). `reason` is
        stored in the clear as the job's exc_info: jobctl's own words, never anything from the job."""
        now = time.time()
        return bool(
            self.scripts.refuse(
                keys=[self.started_key, keys.job(job_id), keys.failed(self.queue), keys.intermediate(self.queue)],
                args=[f"{job_id}:{execution_id}", codec.iso(now), now + self.result_ttl, reason],
            )
        )

    def maintain(self) -> tuple[int, int]:
        """The upkeep RQ's worker does in `clean_registries`, done jobctl's way: abandoned tasks go back
        (or fail sealed, as `abandoned`), jobs stranded in RQ's intermediate list go back, and expired
        registry entries go. Unlike RQ's cleanup it never loads a job, so it never runs a callback someone
        planted in Redis. Returns (tasks put back, tasks failed as abandoned)."""
        back = failed = 0
        while True:
            requeued, exhausted = self.sweep()
            back += requeued
            failed += self.fail_abandoned(exhausted)
            if requeued + len(exhausted) < STEP:
                break
        back += int(
            self.scripts.recover_intermediate(
                keys=[keys.intermediate(self.queue), self.queue_key],
                args=[time.time(), INTERMEDIATE_GRACE, STEP, keys.intermediate_seen(self.queue, "")],
            )
        )
        now = time.time()
        with self.conn.pipeline(transaction=False) as p:
            p.zremrangebyscore(keys.finished(self.queue), 0, now)
            p.zremrangebyscore(keys.failed(self.queue), 0, now)
            p.execute()
        return back, failed

    def depth(self) -> int:
        return int(self.conn.llen(self.queue_key))

    def running(self) -> int:
        return int(self.conn.zcard(self.started_key))

    def pending(self) -> tuple[int, int]:
        """(queued, held by any worker) in one round trip."""
        with self.conn.pipeline(transaction=False) as p:
            p.llen(self.queue_key)
            p.zcard(self.started_key)
            queued, held = p.execute()
        return int(queued), int(held)

    def queue_key_id(self) -> str | None:
        """The key id the queue's tasks are sealed with, as the first submit recorded it."""
        held = self.conn.hget(keys.QUEUE_KEY_IDS, self.queue)
        return keys.text(held) if held is not None else None

    # -- the worker as RQ sees it -------------------------------------------------------------

    def register(self) -> None:
        """Announce this drainer as an RQ worker, so `rq info`, rq-dashboard, `jobctl status` and Modal's
        cron see it (RQ's own registration; its key expires if the drainer dies without unregistering)."""
        from rq.serializers import JSONSerializer

        w = SimpleWorker([self.queue], name=self.worker_name, connection=self.conn, serializer=JSONSerializer)
        w.worker_ttl = self.lease
        w.register_birth()
        w.set_state(WorkerStatus.IDLE)
        self._rq_worker = w

    def set_busy(self, busy: bool) -> None:
        if self._rq_worker is not None:
            state = WorkerStatus.BUSY if busy else WorkerStatus.IDLE
            if self._rq_worker.get_state() != state:
                self._rq_worker.set_state(state)

    def unregister(self) -> None:
        if self._rq_worker is not None:
            w, self._rq_worker = self._rq_worker, None
            w.register_death()


def _claimed(flat: list[Any], offset: int, now: float) -> list[Claimed]:
    return [
        Claimed(
            keys.text(flat[i]),
            keys.text(flat[i + 1]),
            flat[i + 2],
            keys.text(flat[i + 3]),
            keys.text(flat[i + 4]),
            now,
        )
        for i in range(offset, len(flat), 5)
    ]
