"""The drain's in-flight window, sized to the server from vLLM's Prometheus `/metrics`.

A fixed number of requests in flight fits one model on one GPU: 256 starves a 1B model
that runs 1,000 sequences at once, and floods a 70B model whose KV cache holds 60. vLLM
says how full it is, so the drain asks it every half second and keeps just enough
requests in flight to keep its batch full.

Policy (`WindowController.update`, one sample of the server each ~0.5 s):

* **Grow while the server has room**: no waiting queue beyond a small buffer, KV-cache use
  below `kv_high` (0.90), and the drain actually filling its window (else there is no
  evidence that more would help: the queue runs dry, or claims lag). Doubling until the
  first sign of a full server, then +10% a step (TCP's slow start, then congestion
  avoidance): 64 -> 1,024 takes two seconds, and growth near the limit is careful.
* **A small waiting queue is the goal, not zero.** When a sequence finishes, vLLM schedules
  a waiting one in the same step; with nothing waiting, the batch runs short for a drain
  round trip (a Redis claim plus an HTTP request). Buffer: max(8, 10% of running).
* **Shrink when more than the buffer wait, two samples in a row**, by that excess: the
  server runs only `running` at once (max_num_seqs, the KV cache or the token budget is the
  limit), so the rest add latency and lease time and no throughput. One sample is not
  enough: a burst of long prompts waits a few steps for prefill and then runs. No second cut
  while the drain still has more in flight than the window: those were claimed before the last
  cut, and cutting again for them would overshoot far below what the server runs.
* **Back off to 90% of what the server holds when the preemption counter moves**: vLLM is
  evicting running sequences for lack of KV blocks and will recompute them, pure waste. KV use past
  `kv_high` without preemption only stops growth: vLLM admits a sequence only when its
  prompt fits, and a KV-bound server sits near 100% while doing fine.
* Bounds [min_window, max_window]. No vLLM metrics (OpenAI, llama.cpp, Ollama: /metrics
  missing or without vLLM's gauges): the configured window, fixed.

Pure logic (`WindowController`, `parse_metrics`) is apart from I/O (`read_metrics`,
`AdaptiveWindow`), so the policy is unit-tested on samples. The drain asks
`window.target` before each claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2

from worker.http import split_credentials

log = logging.getLogger("jobctl.window")

# vLLM >= 0.10 (V1 engine) names first; `gpu_cache_usage_perc` is the V0 name of the KV gauge.
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREEMPTIONS = "vllm:num_preemptions_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
_WANTED = (RUNNING, WAITING, *KV_USAGE, PREEMPTIONS, GENERATION_TOKENS)
# Failed reads before the first sample after which the server is taken to have no metrics.
UNREACHABLE_ROUNDS = 4


@dataclass(frozen=True)
class ServerSample:
    """What the server says at one moment (gauges summed over its engines)."""

    running: float
    waiting: float
    kv_usage: float | None = None  # 0..1
    preemptions: float | None = None  # a counter: only its increase means anything
    generation_tokens: float | None = None  # a counter
    at: float = field(default_factory=time.monotonic)


def parse_metrics(text: str) -> ServerSample | None:
    """The sample in a Prometheus text page, or None when it has no vLLM scheduler gauges.

    Only the few lines wanted are looked at (by prefix, before any parsing): vLLM's page is
    mostly histogram buckets, and this runs twice a second on the drain's event loop.
    """
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        # `name{labels} value [timestamp]` or `name value [timestamp]`; label values may hold spaces.
        brace, space = line.find("{"), line.find(" ")
        if brace >= 0 and (space < 0 or brace < space):
            name, rest = line[:brace], line[line.rfind("}") + 1 :]
        else:
            name, rest = line[:space], line[space:]
        if name not in _WANTED:
            continue
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        if math.isfinite(value):
            sums[name] = sums.get(name, 0.0) + value
    if RUNNING not in sums or WAITING not in sums:
        return None
    kv = next((sums[k] for k in KV_USAGE if k in sums), None)
    # With several engines (data parallel) each reports its own KV use: the summed gauge is not a fraction.
    engines = max(1, text.count(RUNNING + "{"))
    return ServerSample(
        running=sums[RUNNING],
        waiting=sums[WAITING],
        kv_usage=kv / engines if kv is not None else None,
        preemptions=sums.get(PREEMPTIONS),
        generation_tokens=sums.get(GENERATION_TOKENS),
    )


class WindowController:
    """The target number of requests in flight, from samples of the server (see the module doc)."""

    def __init__(
        self,
        initial: int = 64,
        min_window: int = 8,
        max_window: int = 1024,
        kv_high: float = 0.90,
        min_buffer: int = 8,
        buffer_fraction: float = 0.10,
        patience: int = 2,
        growth: float = 0.10,
        backoff: float = 0.90,
    ):
        if not 1 <= min_window <= max_window:
            raise ValueError(f"window bounds must satisfy 1 <= min <= max (got {min_window}, {max_window})")
        self.fixed = max(min_window, min(max_window, initial))
        self.min_window, self.max_window = min_window, max_window
        self.kv_high, self.min_buffer, self.buffer_fraction = kv_high, min_buffer, buffer_fraction
        self.patience, self.growth, self.backoff = patience, growth, backoff
        self.target = self.fixed
        self.slow_start = True
        self.samples = 0
        self._crowded = 0
        self._last_preemptions: float | None = None

    def buffer(self, running: float) -> int:
        return max(self.min_buffer, math.ceil(self.buffer_fraction * running))

    def fallback(self) -> int:
        """No metrics from this server: the configured window, for good."""
        self.target = self.fixed
        return self.target

    def update(self, sample: ServerSample | None, in_flight: int | None = None) -> int:
        """The new target after one sample. None (no answer this round) keeps the target.

        `in_flight` is the drain's own count; without it, running + waiting stands for it
        (right when the drain is the server's only client).
        """
        if sample is None:
            return self.target
        self.samples += 1
        preempted = (
            sample.preemptions is not None
            and self._last_preemptions is not None
            and sample.preemptions > self._last_preemptions
        )
        if sample.preemptions is not None:
            self._last_preemptions = sample.preemptions
        buffer = self.buffer(sample.running)
        used = in_flight if in_flight is not None else sample.running + sample.waiting
        target = self.target
        if preempted:
            self.slow_start = False
            self._crowded = 0
            # Of what the server holds, not of what still runs: the preempted ones went back to waiting.
            target = math.floor(min(target, sample.running + sample.waiting) * self.backoff)
        elif sample.waiting > buffer:
            self._crowded += 1
            # Requests claimed under an earlier, larger window cannot be called back: while more are in
            # flight than the window allows, no new ones go out anyway, so shrinking again would only
            # compound the cut (a window that started at 2,048 fell to 8 on the H100 this way).
            holding = in_flight is not None and in_flight > target
            if self._crowded >= self.patience and not holding:
                self.slow_start = False
                # Several clients each shed the whole excess, then grow back: they converge on a fair share.
                excess = math.ceil(sample.waiting - buffer)
                target = max(target - excess, target // 2)
                self._crowded = 0
        else:
            self._crowded = 0
            kv_room = sample.kv_usage is None or sample.kv_usage < self.kv_high
            if kv_room and sample.waiting == 0 and used >= 0.9 * target:
                step = target if self.slow_start else max(self.min_buffer, math.ceil(target * self.growth))
                target += step
        self.target = max(self.min_window, min(self.max_window, target))
        return self.target


def metrics_url(base_url: str) -> str:
    """The /metrics address of an OpenAI-style base URL (".../v1" -> ".../metrics")."""
    root = base_url.rstrip("/")
    return root.removesuffix("/v1") + "/metrics"


async def read_metrics(client: httpx2.AsyncClient, url: str) -> ServerSample | None:
    """One sample, or None when the server has no vLLM metrics there (404, another format).

    Transport errors (refused, timed out) are raised as httpx2.HTTPError: they say nothing
    about whether the server has metrics.
    """
    resp = await client.get(url)
    if resp.status_code != 200:
        return None
    return parse_metrics(resp.text)


class AdaptiveWindow:
    """Polls the server's /metrics in the background and keeps `target` up to date.

        async with AdaptiveWindow(base_url, api_key, WindowController(initial=64)) as window:
            free = window.target - len(in_flight)

    `on_update(target)` is called after each change; `in_flight()` gives the drain's count.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        controller: WindowController,
        interval: float = 0.5,
        timeout: float = 2.0,
        on_update: Callable[[int], None] | None = None,
        in_flight: Callable[[], int] | None = None,
        headers: dict[str, str] | None = None,
    ):
        """`headers`: the Authorization to send, where the caller has it (the drain's client's);
        else from `base_url`'s user info or `api_key`."""
        base_url, auth = split_credentials(base_url, api_key)
        self.url = metrics_url(base_url)
        self.controller = controller
        self.interval = interval
        self.on_update = on_update
        self.in_flight = in_flight
        # True until the server proves to have no vLLM metrics: until the first sample the window is the
        # controller's (small) initial one, never the whole configured concurrency.
        self.adaptive = True
        self.confirmed = False  # a vLLM sample has been read
        self._failures = 0
        self.history: list[tuple[float, int]] = []  # (monotonic time, target) at each change
        headers = auth if headers is None else headers
        # trust_env off: the server is usually on loopback, and a proxy from the environment would swallow the calls.
        self._client = httpx2.AsyncClient(headers=headers, timeout=timeout, trust_env=False)
        self._task: asyncio.Task[None] | None = None

    @property
    def target(self) -> int:
        return self.controller.target

    async def __aenter__(self) -> AdaptiveWindow:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jobctl-window")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()

    async def poll_once(self) -> int:
        """Read /metrics once and update the target (the loop's step; tests call it directly)."""
        before = self.target
        try:
            sample = await read_metrics(self._client, self.url)
        except httpx2.HTTPError as e:
            self._failures += 1
            log.debug("metrics unreadable this round (%s); window stays %d", type(e).__name__, self.target)
            if not self.confirmed and self._failures >= UNREACHABLE_ROUNDS:
                self._give_up(before, f"unreachable ({type(e).__name__})")
            return self.target
        self._failures = 0
        if sample is None:
            if not self.confirmed:  # a later miss (a restart, a proxy) holds the window instead
                self._give_up(before, "missing")
            return self.target
        if not self.confirmed:
            self.confirmed = True
            log.info("vLLM metrics at %s: the window follows the server", self.url)
        self._changed(before, self.controller.update(sample, self.in_flight() if self.in_flight else None))
        return self.target

    def _give_up(self, before: int, why: str) -> None:
        self.adaptive = False
        log.info("vLLM metrics at %s %s: a fixed window of %d in flight", self.url, why, self.controller.fixed)
        self._changed(before, self.controller.fallback())

    async def _run(self) -> None:
        while self.adaptive:
            await self.poll_once()
            await asyncio.sleep(self.interval)

    def _changed(self, before: int, after: int) -> None:
        if after == before and self.history:
            return
        self.history.append((time.monotonic(), after))
        log.debug("window %d -> %d", before, after)
        if self.on_update is not None:
            self.on_update(after)
