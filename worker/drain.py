"""The drain: many requests in flight against one OpenAI-compatible server, each task still
moving through RQ's states (queued -> started -> finished/failed).

RQ runs one job at a time per worker; an inference server wants hundreds at once. So one
asyncio loop claims tasks from the RQ queue (atomically, in batches), runs up to
`concurrency` of them as coroutines over one AsyncOpenAI client, and writes results back
in batched pipelines. Each claimed task holds a lease in RQ's started registry that the
loop renews; a task whose worker died is put back once its lease runs out, by whichever
worker looks next. A result is written only by the worker that still holds the lease,
so two workers on one queue never both write one task.

When the model server goes away (every connection refused), the drain does not fail task
after task with `connection_error`: after `Policy.unreachable_after` refused connections in
a row across tasks (any answer from the server resets the count), or when a task would fail
on a refusal that follows another, it stops with ServerUnreachableError and hands its
running tasks back to the queue (worker.llm's ServerHealth). Tasks already finished stay
written; a worker run once the server is back takes up the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import redis
from openai import AsyncOpenAI

from jobs import results as r
from jobs.config import Settings
from jobs.crypto import Cipher, CryptoError
from jobs.errors import JobctlError
from jobs.tasks import Task
from worker.llm import FatalServerError, Policy, ServerHealth, TaskOutcome, run_task
from worker.report import DrainReport
from worker.state import Claimed, Finish, QueueState

log = logging.getLogger("jobctl.worker")


class RedisUnavailableError(JobctlError):
    """Redis stayed unreachable past the drain's patience; unfinished tasks return by their leases."""


@dataclass
class DrainOptions:
    queue: str
    model: str | None = None
    concurrency: int = 64
    burst: bool = True
    max_seconds: float | None = None
    lease_seconds: int = 30
    result_ttl: int = 7 * 24 * 3600
    style: str = "json_schema"
    poll_interval: float = 1.0
    # How long Redis may be gone before the drain gives up (it keeps results it holds meanwhile).
    redis_patience: float = 30.0
    # After the time budget, how long running requests may finish before they are handed back.
    grace_seconds: float = 30.0
    worker_name: str = ""


class Drainer:
    def __init__(
        self,
        connection: redis.Redis,
        cipher: Cipher,
        client: AsyncOpenAI,
        options: DrainOptions,
        policy: Policy | None = None,
    ):
        self.conn = connection
        self.cipher = cipher
        self.client = client
        self.opt = options
        self.policy = policy or Policy()
        self.health = ServerHealth()
        name = options.worker_name or f"jobctl-{socket.gethostname()}-{os.getpid()}"
        self.state = QueueState(connection, options.queue, name, options.lease_seconds, options.result_ttl)
        self.report = DrainReport(queue=options.queue)
        self._inflight: dict[str, tuple[Claimed, asyncio.Task[None]]] = {}
        self._done: list[Finish] = []
        self._unflushed: list[Finish] = []
        self._wake = asyncio.Event()
        self._stopping = ""
        self._fatal: BaseException | None = None
        self._hard_stop = False
        self._deadline: float | None = None

    def stop(self, reason: str = "stop requested") -> None:
        """Stop claiming; running requests finish (within grace_seconds) and are written."""
        if not self._stopping:
            self._stopping = reason
        self._wake.set()

    async def drain(self) -> DrainReport:
        t0 = time.monotonic()
        self._deadline = deadline = t0 + self.opt.max_seconds if self.opt.max_seconds else None
        self._check_key()  # before the server: a wrong key is the first thing to say
        if not self.opt.model or self.opt.style == "auto":
            await self._discover_server()
        self.report.model = self.opt.model or self.report.model
        self.report.requeued_abandoned += self._guard(self.state.requeue_abandoned)[0]
        log.info(
            "drain start: queue=%s concurrency=%d model=%s", self.opt.queue, self.opt.concurrency, self.report.model
        )
        last_beat = last_sweep = time.monotonic()
        redis_down_since: float | None = None
        try:
            while True:
                now = time.monotonic()
                if deadline and now >= deadline and not self._stopping:
                    self.stop("time budget")
                if self._fatal:
                    raise self._fatal
                if self._hard_stop:
                    break
                try:
                    self._flush()
                    claimed_any = False
                    free = self.opt.concurrency - len(self._inflight)
                    if not self._stopping and free > 0:
                        claimed = self.state.claim(free)
                        claimed_any = bool(claimed)
                        for cl in claimed:
                            self._start(cl)
                    if now - last_beat >= self.opt.lease_seconds / 3:
                        self.state.heartbeat([cl.member for cl, _ in self._inflight.values()])
                        last_beat = now
                    if now - last_sweep >= max(1.0, self.opt.lease_seconds / 2):
                        requeued = self.state.requeue_abandoned()[0]
                        self.report.requeued_abandoned += requeued
                        # Claim them next round: a burst drain must not call the queue empty now.
                        claimed_any = claimed_any or requeued > 0
                        last_sweep = now
                    redis_down_since = None
                except redis.ConnectionError as e:
                    redis_down_since = redis_down_since or now
                    if now - redis_down_since > self.opt.redis_patience:
                        raise RedisUnavailableError(
                            f"Redis has been unreachable for {self.opt.redis_patience:.0f}s ({type(e).__name__}); "
                            "stopping. Unfinished tasks go back to the queue when their leases run out; run the "
                            "worker again once Redis is back"
                        ) from e
                    log.warning("redis unreachable, retrying: %s", type(e).__name__)
                    await asyncio.sleep(0.5)
                    continue
                self.report.max_in_flight = max(self.report.max_in_flight, len(self._inflight))
                if not self._inflight and not self._unflushed:
                    if self._stopping:
                        break
                    if not claimed_any:
                        if self.opt.burst and not self._others_running():
                            self.stop("queue empty")
                            continue
                        await self._sleep(self.opt.poll_interval, deadline)
                    continue
                if self._stopping and deadline and time.monotonic() > deadline + self.opt.grace_seconds:
                    break
                if self._stopping and not self.opt.grace_seconds:
                    break
                if not claimed_any or not free:
                    await self._sleep(self.opt.lease_seconds / 3, deadline)
                else:
                    # Let the new requests get going before claiming again.
                    await asyncio.sleep(0)
        finally:
            await self._wind_down()
            self.report.wall_seconds = time.monotonic() - t0
            self.report.stop_reason = self.report.stop_reason or self._stopping or "error"
            log.info(
                "drain end: done=%d failed=%d wall=%.2fs",
                self.report.done,
                self.report.failed,
                self.report.wall_seconds,
            )
        return self.report

    # -- steps -------------------------------------------------------------------------------

    def stop_now(self) -> None:
        """Stop at once: running requests are cancelled and their tasks handed back to the queue."""
        self.stop("stopped at once")
        self._hard_stop = True
        self._wake.set()

    def _start(self, cl: Claimed) -> None:
        task = asyncio.get_running_loop().create_task(self.perform_task(cl))
        self._inflight[cl.member] = (cl, task)

    async def perform_task(self, cl: Claimed) -> None:
        try:
            try:
                task = Task.from_json(self.cipher.decrypt(cl.payload(), f"task:{cl.job_id}"))
            except (CryptoError, ValueError, KeyError) as e:
                outcome = TaskOutcome(
                    False, {"custom_id": "", "code": r.UNREADABLE, "message": f"the task could not be read: {e}"}, 0
                )
            else:
                outcome = await run_task(self.client, self.report.model, task, self.opt.style, self.policy, self.health)
            self.handle_outcome(cl, outcome)
        except FatalServerError as e:
            self._fatal = e
            self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # one task's bug must not stop the drain
            log.exception("task %s crashed the worker code", cl.job_id)
            self.handle_outcome(
                cl, TaskOutcome(False, {"custom_id": "", "code": "worker_error", "message": type(e).__name__}, 0)
            )

    def handle_outcome(self, cl: Claimed, outcome: TaskOutcome) -> None:
        jid = cl.job_id
        if outcome.ok:
            sealed = r.seal_success(self.cipher, jid, outcome.record)
        else:
            sealed = r.seal_failure(self.cipher, jid, outcome.record)
            log.info("task %s failed: %s after %d attempts", jid, outcome.code, outcome.attempts)
        self.report.retries += len(outcome.retried)
        self.report.prompt_tokens += outcome.prompt_tokens
        self.report.completion_tokens += outcome.completion_tokens
        self._done.append(Finish(cl, outcome.ok, sealed))
        self._inflight.pop(cl.member, None)
        self._wake.set()

    def _flush(self) -> None:
        if self._done:
            self._unflushed.extend(self._done)
            self._done = []
        if not self._unflushed:
            return
        items = self._unflushed
        written = self.state.finish_many(items)  # raises on a Redis fault: items stay unflushed
        self._unflushed = []
        for f, ok in zip(items, written, strict=True):
            if not ok:
                self.report.superseded += 1
            elif f.ok:
                self.report.done += 1
            else:
                self.report.failed += 1
                self.report.errors[r.failure_code(f.sealed)] += 1

    async def _sleep(self, seconds: float, deadline: float | None) -> None:
        if deadline:
            seconds = max(0.0, min(seconds, deadline - time.monotonic()))
        self._wake.clear()
        if self._done or self._fatal:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass

    def _others_running(self) -> bool:
        # Tasks other workers hold: a burst drain waits for them, so a dead worker's tasks
        # (put back when their leases run out) are not left behind. Tasks put back into the
        # queue since this round's claim (released, re-queued, retried) are not left behind either.
        try:
            return self.state.running() > len(self._inflight) or self.state.depth() > 0
        except redis.ConnectionError:
            return True  # Redis went away after this round's calls: the loop's next round waits for it

    async def _wind_down(self) -> None:
        if self._inflight:
            for _cl, t in self._inflight.values():
                t.cancel()
            await asyncio.gather(*(t for _, t in self._inflight.values()), return_exceptions=True)
            left = [cl for cl, _ in self._inflight.values()]
            self._inflight.clear()
            try:
                self.report.released += self.state.release(left)
            except redis.ConnectionError:
                log.warning("could not hand %d running tasks back; their leases will", len(left))
        try:
            self._flush()
        except redis.ConnectionError:
            log.warning("could not write %d results; their tasks return by lease", len(self._unflushed))

    async def _discover_server(self) -> None:
        """The model to use (the server's first), and with style "auto" how it takes structured output."""
        try:
            models = await self.client.models.list()
        except Exception as e:
            raise JobctlError(
                f"cannot list the server's models ({type(e).__name__}); is the server up at "
                f"{self.client.base_url}? Pass --model and --structured-output to skip this check"
            ) from e
        if not models.data:
            raise JobctlError("the server lists no models; pass --model")
        self.report.model = models.data[0].id
        if self.opt.style == "auto":
            self.opt.style = style_for(getattr(models.data[0], "owned_by", "") or "")
            self.report.notes.append(f"structured output: {self.opt.style} (detected)")

    def _check_key(self) -> None:
        from jobs import constants as c

        held = self._guard(lambda: self.conn.hget(c.QUEUE_KEY_IDS, self.opt.queue))
        if held is not None and held.decode() != self.cipher.key_id:
            raise CryptoError(
                f"queue {self.opt.queue!r} holds tasks encrypted with key {held.decode()}, but this worker's key is "
                f"{self.cipher.key_id}; give the worker the submitter's JOBCTL_KEY"
            )

    def _guard(self, fn):  # type: ignore[no-untyped-def]
        try:
            return fn()
        except redis.ConnectionError as e:
            raise RedisUnavailableError(f"cannot reach Redis ({type(e).__name__}); check REDIS_URL") from e


def install_signal_handlers(drainer: Drainer) -> None:
    """First SIGINT/SIGTERM: finish what is running and stop. Second: hand running tasks back now."""
    loop = asyncio.get_running_loop()
    count = {"n": 0}

    def handler(signame: str) -> None:
        count["n"] += 1
        if count["n"] == 1:
            log.warning("%s: finishing running tasks, then stopping (again to stop now)", signame)
            drainer.stop(f"signal {signame}")
        else:
            drainer.stop_now()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handler, sig.name)
        except (NotImplementedError, RuntimeError):
            pass


# llama.cpp's servers take {"type": "json_object", "schema": ...} and not json_schema; vLLM, OpenAI,
# Ollama and others take json_schema. llama-cpp-python lists its models as owned by "me".
JSON_OBJECT_OWNERS = ("me", "llamacpp", "llama.cpp")


def style_for(owned_by: str) -> str:
    return "json_object" if owned_by.lower() in JSON_OBJECT_OWNERS else "json_schema"


def make_client(base_url: str, api_key: str | None, concurrency: int, timeout: float) -> Any:
    """The drain's client: AsyncOpenAI shards whose pools together fit the concurrency (worker.http)."""
    from worker.http import ShardedClient

    return ShardedClient(base_url, api_key, concurrency, timeout)


async def drain_queue(
    connection: redis.Redis,
    cipher: Cipher,
    base_url: str,
    api_key: str | None,
    options: DrainOptions,
    policy: Policy | None = None,
    signals: bool = False,
    timeout: float = 120.0,
) -> DrainReport:
    client = make_client(base_url, api_key, options.concurrency, timeout)
    async with client:
        drainer = Drainer(connection, cipher, client, options, policy)
        if signals:
            install_signal_handlers(drainer)
        return await drainer.drain()


def run_drain(
    settings: Settings,
    connection: redis.Redis,
    cipher: Cipher,
    base_url: str,
    burst: bool = True,
    max_seconds: float | None = None,
    signals: bool = False,
    api_key: str | None = None,
    **overrides: Any,
) -> DrainReport:
    """One drain with the options a Settings gives (flags, env, defaults); `overrides` win."""
    fields: dict[str, Any] = {
        "queue": settings.queue,
        "model": settings.model,
        "concurrency": settings.concurrency,
        "burst": burst,
        "max_seconds": max_seconds,
        "lease_seconds": settings.lease_seconds,
        "result_ttl": settings.result_ttl,
        "style": settings.structured_output,
    }
    fields.update(overrides)
    policy = Policy(max_attempts=settings.max_attempts)
    return asyncio.run(
        drain_queue(
            connection,
            cipher,
            base_url,
            api_key or settings.api_key,
            DrainOptions(**fields),
            policy,
            signals=signals,
            timeout=settings.request_timeout,
        )
    )
