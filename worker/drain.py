"""The drain: many requests in flight against one OpenAI-compatible server, each task still moving
through RQ's states (queued -> started -> finished/failed).

RQ runs one job at a time per worker; an inference server wants hundreds at once. So one asyncio
loop claims tasks from one or more RQ queues (atomically, in batches, fairly across queues), runs
up to a window of them as coroutines over one AsyncOpenAI client, and writes results back in
batched pipelines, all through the store (jobs.store.work). Against vLLM the window follows the
server's own load (worker.window); elsewhere it is the configured concurrency.

Each claimed task holds a lease that the loop renews; a task whose worker died is put back once
its lease runs out, by whichever worker sweeps next (or by RQ's own cleanup). Only the worker that
still holds the lease writes a result. The drain registers as an RQ worker while it runs, so
`rq info` lists it with its state.

When the model server goes away (every connection refused) the drain stops with
ServerUnreachableError and hands its running tasks back rather than failing them one by one
(worker.llm's ServerHealth). A task sealed with another key stops the drain the same way: a worker
never seals a result under a key that is not the queue's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis
from openai import AsyncOpenAI

from jobs import outcomes as o
from jobs.config import Settings
from jobs.connection import RedisUnavailableError, describe
from jobs.crypto import Cipher, CryptoError, DecryptError
from jobs.errors import JobctlError
from jobs.kinds.base import OutputInvalid
from jobs.outcomes import Failure
from jobs.store import queues as store_queues
from jobs.store.submit import roll_forward_if_needed
from jobs.store.work import Claimed, Finished, WorkQueue
from worker.http import auth_headers, make_client
from worker.llm import FatalServerError, Policy, ServerHealth, TaskOutcome, run_task
from worker.report import DrainReport
from worker.window import AdaptiveWindow, WindowController

log = logging.getLogger("jobctl.worker")

# Kinds whose answers are checked against a schema the user wrote: checked off the event loop,
# with a time limit, so no answer can stall the drain or its signal handling.
USER_SCHEMA_KINDS = ("extract", "chat")
VALIDATION_TIMEOUT = 10.0
REDIS_WARNING_EVERY = 10.0  # seconds between "redis unreachable" warnings while an outage lasts


class WrongKeyError(CryptoError):
    """The queue's tasks are sealed with another key than this worker's."""


@dataclass
class DrainOptions:
    queues: list[str] = field(default_factory=lambda: ["jobctl"])
    model: str | None = None
    # Requests in flight against a server without load metrics; against vLLM (adaptive=True) the window
    # starts here and follows the server's load up to max_in_flight.
    concurrency: int = 64
    max_in_flight: int = 1024
    adaptive: bool = True
    burst: bool = True
    max_seconds: float | None = None
    # When the time budget started (time.monotonic()); None: when the drain starts. Modal counts its cold start.
    started_at: float | None = None
    lease_seconds: int = 30
    result_ttl: int = 7 * 24 * 3600
    style: str = "json_schema"
    poll_interval: float = 1.0
    # How long Redis may be gone before the drain gives up (it keeps results it holds meanwhile).
    redis_patience: float = 30.0
    # After the time budget, how long running requests may finish before they are handed back.
    grace_seconds: float = 30.0
    worker_name: str = ""
    register: bool = True


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
        self.queues = [
            WorkQueue(
                connection,
                cipher,
                q,
                options.lease_seconds,
                options.result_ttl,
                f"{options.worker_name}-{i}" if options.worker_name and i else (options.worker_name or None),
            )
            for i, q in enumerate(dict.fromkeys(options.queues))
        ]
        self.report = DrainReport(queue=",".join(q.queue for q in self.queues))
        self._inflight: dict[str, tuple[Claimed, WorkQueue, asyncio.Task[None]]] = {}
        self._done: list[tuple[WorkQueue, Finished]] = []
        self._unflushed: list[tuple[WorkQueue, Finished]] = []
        self._wake = asyncio.Event()
        self._stopping = ""
        self._fatal: BaseException | None = None
        self._hard_stop = False
        self._next = 0  # the queue that claims first next round (fairness)
        self._validator = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jobctl-validate")
        self.window: AdaptiveWindow | None = None

    def stop(self, reason: str = "stop requested") -> None:
        """Stop claiming; running requests finish (within grace_seconds) and are written."""
        if not self._stopping:
            self._stopping = reason
        self._wake.set()

    def stop_now(self) -> None:
        """Stop at once: running requests are cancelled and their tasks handed back to the queue."""
        self.stop("stopped at once")
        self._hard_stop = True
        self._wake.set()

    @property
    def ceiling(self) -> int:
        return max(self.opt.concurrency, self.opt.max_in_flight) if self.opt.adaptive else self.opt.concurrency

    @property
    def target(self) -> int:
        if self.window is not None and self.window.adaptive:
            return min(self.ceiling, self.window.target)
        return self.opt.concurrency

    async def drain(self) -> DrainReport:
        t0 = time.monotonic()
        start = self.opt.started_at if self.opt.started_at is not None else t0
        deadline = start + self.opt.max_seconds if self.opt.max_seconds else None
        self._check_key()  # before the server: a wrong key is the first thing to say
        if not self.opt.model or self.opt.style == "auto":
            await self._discover_server()
        self.report.model = self.opt.model or self.report.model
        if self.opt.register:
            self._guard(self._register)
        if self.opt.adaptive:
            self.window = AdaptiveWindow(
                str(self.client.base_url),
                _api_key(self.client),
                WindowController(
                    initial=self.opt.concurrency,
                    min_window=min(8, self.opt.concurrency),
                    max_window=self.ceiling,
                ),
                in_flight=lambda: len(self._inflight),
                headers=auth_headers(self.client),
            )
            self.window.start()
        self._guard(self._sweep)
        log.info("drain start: queues=%s in flight=%d (at most %d)", self.report.queue, self.target, self.ceiling)
        last_beat = last_sweep = time.monotonic()
        redis_down_since: float | None = None
        last_redis_warning = -math.inf
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
                    free = self.target - len(self._inflight)
                    if not self._stopping and free > 0:
                        claimed_any = self._claim(free)
                    if now - last_beat >= self.opt.lease_seconds / 3:
                        self._heartbeat()
                        last_beat = now
                    if now - last_sweep >= max(1.0, self.opt.lease_seconds / 2):
                        # Claim what went back next round: a burst drain must not call the queue empty now.
                        claimed_any = self._sweep() or claimed_any
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
                    # Once as an outage starts, then every 10 s: a line per 10 s in a cron mail, not 2 a second.
                    if now - last_redis_warning >= REDIS_WARNING_EVERY:
                        log.warning(
                            "redis unreachable for %.0fs, retrying: %s", now - redis_down_since, type(e).__name__
                        )
                        last_redis_warning = now
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
                if not claimed_any or self.target - len(self._inflight) <= 0:
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

    def _claim(self, free: int) -> bool:
        """Claim up to `free` tasks, shared fairly across the queues; True if any came."""
        n = len(self.queues)
        order = [self.queues[(self._next + i) % n] for i in range(n)]
        self._next = (self._next + 1) % n
        got = False
        for i, wq in enumerate(order):
            share = -(-free // (n - i))
            claimed = wq.claim(share)
            for k, cl in enumerate(claimed):
                if not self._accept(wq, cl):
                    wq.release(claimed[k:])  # none of these was started: back to the queue as they were
                    return got
                self._start(wq, cl)
            free -= len(claimed)
            got = got or bool(claimed)
            if free <= 0:
                break
        if got and self.opt.register:
            for wq in self.queues:
                wq.set_busy(True)
        return got

    def _accept(self, wq: WorkQueue, cl: Claimed) -> bool:
        key_id = cl.key_id()
        if key_id is not None and key_id != self.cipher.key_id:
            if self._guard(wq.queue_key_id) == self.cipher.key_id:
                # The queue is sealed with our key, and submit refuses a second key: this task was put
                # there around jobctl (a stray or a planted one). It fails on its own (perform_task
                # cannot open it) instead of stopping every drain of the queue.
                return True
            # A worker with the wrong key: never seal anything under our key for a task sealed with
            # another; it goes back, and the drain stops.
            self._fatal = WrongKeyError(
                f"queue {wq.queue!r} holds tasks sealed with key {key_id}, but this worker's key is "
                f"{self.cipher.key_id}; give the worker the submitter's JOBCTL_KEY. Nothing was run"
            )
            self._wake.set()
            return False
        return True

    def _register(self) -> None:
        for wq in self.queues:
            wq.register()
            store_queues.note_worker_seen(self.conn, wq.queue)

    def _heartbeat(self) -> None:
        by_queue: dict[str, list[str]] = {}
        for cl, wq, _ in self._inflight.values():
            by_queue.setdefault(wq.queue, []).append(cl.member)
        for wq in self.queues:
            wq.heartbeat(by_queue.get(wq.queue, []))
            if self.opt.register:
                store_queues.note_worker_seen(self.conn, wq.queue)
                wq.set_busy(bool(by_queue.get(wq.queue)))

    def _sweep(self) -> bool:
        back = False
        for wq in self.queues:
            requeued, exhausted = wq.sweep()
            self.report.requeued_abandoned += requeued
            back = back or requeued > 0
            wq.fail_abandoned(exhausted)
            roll_forward_if_needed(self.conn, wq.queue)
        return back

    def _start(self, wq: WorkQueue, cl: Claimed) -> None:
        task = asyncio.get_running_loop().create_task(self.perform_task(wq, cl))
        self._inflight[cl.member] = (cl, wq, task)

    async def perform_task(self, wq: WorkQueue, cl: Claimed) -> None:
        try:
            try:
                task = cl.open(self.cipher)
            except (DecryptError, ValueError, KeyError, TypeError) as e:
                what = "failed authentication (changed or replayed in Redis)" if isinstance(e, DecryptError) else ""
                if cl.key_id() not in (None, self.cipher.key_id):
                    what = "it was sealed with another key than its queue's (put there around `jobctl submit`)"
                outcome = TaskOutcome(
                    Failure("", o.UNREADABLE, f"the task could not be read: {what or type(e).__name__}")
                )
            else:
                outcome = await run_task(
                    self.client, self.report.model, task, self.opt.style, self.policy, self.health, self._validate
                )
            self.handle_outcome(wq, cl, outcome)
        except FatalServerError as e:
            self._fatal = e
            self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # one task's bug must not stop the drain; its text stays out of the log
            log.error("task %s: the worker's code failed (%s)", cl.job_id, type(e).__name__)
            self.handle_outcome(wq, cl, TaskOutcome(Failure("", o.WORKER_ERROR, type(e).__name__)))

    async def _validate(self, kind: Any, content: Any, data: Any, options: Any) -> Any:
        if kind.name not in USER_SCHEMA_KINDS:
            return kind.parse_output(content, data, options)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._validator, kind.parse_output, content, data, options)
        try:
            return await asyncio.wait_for(fut, VALIDATION_TIMEOUT)
        except TimeoutError as e:
            raise OutputInvalid(f"checking the answer against the schema took over {VALIDATION_TIMEOUT:g}s") from e

    def handle_outcome(self, wq: WorkQueue, cl: Claimed, outcome: TaskOutcome) -> None:
        res = outcome.result
        if not res.ok:
            log.info("task %s failed: %s after %d attempts", cl.job_id, getattr(res, "code", "?"), res.attempts)
        self.report.retries += len(outcome.retried)
        self.report.prompt_tokens += res.usage.prompt_tokens
        self.report.completion_tokens += res.usage.completion_tokens
        self.report.add_batch(cl.batch_id, res.usage.prompt_tokens, res.usage.completion_tokens)
        self._done.append((wq, Finished(cl, res)))
        self._inflight.pop(cl.member, None)
        self._wake.set()

    def _flush(self) -> None:
        if self._done:
            self._unflushed.extend(self._done)
            self._done = []
        if not self._unflushed:
            return
        items = self._unflushed
        by_queue: dict[str, list[tuple[WorkQueue, Finished]]] = {}
        for wq, f in items:
            by_queue.setdefault(wq.queue, []).append((wq, f))
        written: list[tuple[Finished, bool]] = []
        for pairs in by_queue.values():
            flags = pairs[0][0].finish([f for _, f in pairs])  # raises on a Redis fault: items stay unflushed
            written += list(zip([f for _, f in pairs], flags, strict=True))
        self._unflushed = []
        for f, ok in written:
            if not ok:
                self.report.superseded += 1
            elif f.result.ok:
                self.report.done += 1
            else:
                self.report.failed += 1
                self.report.errors[getattr(f.result, "code", "?")] += 1

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
        # Tasks other workers hold: a burst drain waits for them, so a dead worker's tasks (put back when
        # their leases run out) are not left behind. Tasks put back into a queue since this round's claim
        # (released, re-queued, retried) are not left behind either.
        try:
            held = queued = 0
            for wq in self.queues:
                q, h = wq.pending()
                queued += q
                held += h
            return held > len(self._inflight) or queued > 0
        except redis.ConnectionError:
            return True  # Redis went away after this round's calls: the loop's next round waits for it

    async def _wind_down(self) -> None:
        if self.window is not None:
            await self.window.stop()
            self.report.window = self.window.history[-20:]
        if self._inflight:
            for _cl, _wq, t in self._inflight.values():
                t.cancel()
            await asyncio.gather(*(t for _, _, t in self._inflight.values()), return_exceptions=True)
            left = list(self._inflight.values())
            self._inflight.clear()
            try:
                for wq in self.queues:
                    self.report.released += wq.release([cl for cl, q, _ in left if q is wq])
            except redis.ConnectionError:
                log.warning("could not hand %d running tasks back; their leases will", len(left))
        try:
            self._flush()
        except redis.ConnectionError:
            log.warning("could not write %d results; their tasks return by lease", len(self._unflushed))
        if self.opt.register:
            try:
                for wq in self.queues:
                    wq.unregister()
                    # A drain shorter than one heartbeat must still count as a worker seen.
                    store_queues.note_worker_seen(self.conn, wq.queue)
            except redis.ConnectionError:
                pass  # the registration expires on its own
        self._validator.shutdown(wait=False, cancel_futures=True)

    async def _discover_server(self) -> None:
        """The model to use (the server's first), and with style "auto" how it takes structured output."""
        from worker.errors import describe_server_error

        try:
            models = await self.client.models.list()
        except Exception as e:
            raise describe_server_error(e, self.client) from e
        if not models.data:
            raise JobctlError("the server lists no models; pass --model")
        self.report.model = self.opt.model or models.data[0].id
        if self.opt.style == "auto":
            self.opt.style = style_for(getattr(models.data[0], "owned_by", "") or "")
            self.report.notes.append(f"structured output: {self.opt.style} (detected)")

    def _check_key(self) -> None:
        for wq in self.queues:
            held = self._guard(wq.queue_key_id)
            if held is not None and held != self.cipher.key_id:
                raise WrongKeyError(
                    f"queue {wq.queue!r} holds tasks sealed with key {held}, but this worker's key is "
                    f"{self.cipher.key_id}; give the worker the submitter's JOBCTL_KEY"
                )

    def _guard(self, fn):  # type: ignore[no-untyped-def]
        try:
            return fn()
        except redis.ConnectionError as e:
            kw = self.conn.connection_pool.connection_kwargs
            where = describe(self.conn) if kw else "Redis"
            if isinstance(e, redis.AuthenticationError):
                raise RedisUnavailableError(f"Redis at {where} refused the credentials; fix REDIS_URL") from e
            raise RedisUnavailableError(f"cannot reach Redis at {where} ({type(e).__name__}); check REDIS_URL") from e


def _api_key(client: Any) -> str | None:
    key = getattr(client, "api_key", None)
    return key if isinstance(key, str) and key != "none" else None


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
    pool = max(options.concurrency, options.max_in_flight) if options.adaptive else options.concurrency
    async with make_client(base_url, api_key, pool, timeout) as client:
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
    queues: list[str] | None = None,
    **overrides: Any,
) -> DrainReport:
    """One drain with the options a Settings gives (flags, env, defaults); `overrides` win."""
    fields: dict[str, Any] = {
        "queues": queues or [settings.queue],
        "model": settings.model,
        "concurrency": settings.concurrency,
        "max_in_flight": settings.max_in_flight,
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
            api_key or settings.api_key_text,
            DrainOptions(**fields),
            policy,
            signals=signals,
            timeout=settings.request_timeout,
        )
    )
