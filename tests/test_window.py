"""The adaptive in-flight window (worker/window.py): its policy on samples, its /metrics
reading, and end to end against the fake server's simulated vLLM engine."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time

import httpx2
import pytest

from tests.fake_engine import EngineConfig, metrics_page
from tests.fake_openai import FakeOpenAI
from worker.window import (
    UNREACHABLE_ROUNDS,
    AdaptiveWindow,
    ServerSample,
    WindowController,
    metrics_url,
    parse_metrics,
)

# ----------------------------------------------------------------------------- parsing


def test_parse_reads_vllm_gauges_and_skips_the_rest() -> None:
    text = metrics_page("m", running=12, waiting=3, kv_usage=0.25, preemptions=2, generation_tokens=900)
    s = parse_metrics(text)
    assert s is not None
    assert (s.running, s.waiting, s.kv_usage, s.preemptions, s.generation_tokens) == (12, 3, 0.25, 2, 900)


def test_parse_takes_the_v0_kv_name_labels_with_spaces_and_timestamps() -> None:
    text = "\n".join(
        [
            "# HELP vllm:num_requests_running Number of requests currently running on GPU.",
            'vllm:num_requests_running{model_name="my model {v2}"} 7.0 1700000000000',
            "vllm:num_requests_waiting 1",
            'vllm:gpu_cache_usage_perc{model_name="my model {v2}"} 0.5',
            'vllm:num_requests_running_total{model_name="x"} 99',  # a different metric with the same prefix
        ]
    )
    s = parse_metrics(text)
    assert s is not None
    assert (s.running, s.waiting, s.kv_usage, s.preemptions) == (7, 1, 0.5, None)


def test_parse_sums_engines_and_averages_their_kv_use() -> None:
    text = "\n".join(
        f'vllm:{name}{{engine="{e}",model_name="m"}} {value}'
        for e in (0, 1)
        for name, value in (("num_requests_running", 10), ("num_requests_waiting", 2), ("kv_cache_usage_perc", 0.4))
    )
    s = parse_metrics(text)
    assert s is not None
    assert (s.running, s.waiting, s.kv_usage) == (20, 4, pytest.approx(0.4))


@pytest.mark.parametrize(
    "text",
    ["", "llamacpp:requests_processing 3\nllamacpp:requests_deferred 0\n", "vllm:num_requests_running 3\n"],
)
def test_parse_without_vllm_scheduler_gauges_is_none(text: str) -> None:
    assert parse_metrics(text) is None


def test_metrics_url() -> None:
    assert metrics_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/metrics"
    assert metrics_url("http://h:1/v1/") == "http://h:1/metrics"
    assert metrics_url("http://h:1") == "http://h:1/metrics"


# ----------------------------------------------------------------------------- policy


def simulate(ctl: WindowController, capacity: int, rounds: int = 40) -> list[int]:
    """A server that runs at most `capacity` at once; the client keeps `target` in flight."""
    targets = []
    for _ in range(rounds):
        n = ctl.target
        targets.append(ctl.update(ServerSample(running=min(n, capacity), waiting=max(0, n - capacity))))
    return targets


@pytest.mark.parametrize("capacity", [24, 60, 256, 900])
def test_grows_to_the_capacity_and_settles_just_above_it(capacity: int) -> None:
    ctl = WindowController(initial=16, max_window=1024)
    targets = simulate(ctl, capacity)
    buffer = ctl.buffer(capacity)
    settled = targets[-10:]
    assert all(capacity <= t <= capacity + 2 * buffer for t in settled), (capacity, targets)


def test_one_setting_serves_a_small_and_a_large_server() -> None:
    # The same controller settings settle near 40 for a "70B" and near 1,000 for a "1B".
    assert 40 <= simulate(WindowController(initial=64), 40)[-1] <= 56
    assert 1000 <= simulate(WindowController(initial=64, max_window=2048), 1000)[-1] <= 1200


def test_growth_doubles_then_slows_after_the_first_full_server() -> None:
    ctl = WindowController(initial=64, max_window=4096)
    assert [ctl.update(ServerSample(running=n, waiting=0)) for n in (64, 128, 256)] == [128, 256, 512]
    for _ in range(2):  # crowded twice in a row
        ctl.update(ServerSample(running=300, waiting=212))
    assert not ctl.slow_start
    t = ctl.target
    assert ctl.update(ServerSample(running=t, waiting=0)) == t + max(8, math.ceil(t * 0.1))


def test_waiting_requests_shrink_the_window_after_patience() -> None:
    ctl = WindowController(initial=512, max_window=1024)
    crowded = ServerSample(running=100, waiting=412)
    assert ctl.update(crowded) == 512  # one sample could be a burst of prefills
    first = ctl.update(crowded)
    assert first == 256  # the excess, at most halving
    for _ in range(10):
        ctl.update(ServerSample(running=100, waiting=max(0, ctl.target - 100)))
    assert 100 <= ctl.target <= 100 + 2 * ctl.buffer(100)


def test_an_oversized_start_settles_near_capacity_instead_of_collapsing() -> None:
    """On the H100 a window that started at 2,048 sent 2,000 requests, then shrank to 8 while they waited."""
    ctl = WindowController(initial=2048, max_window=2048)
    in_flight, capacity, finished_per_step = 2000, 1024, 150
    targets = []
    for _ in range(60):
        running, waiting = min(in_flight, capacity), max(0, in_flight - capacity)
        targets.append(ctl.update(ServerSample(running=running, waiting=waiting), in_flight=in_flight))
        in_flight = max(in_flight - finished_per_step, 0)
        in_flight = max(in_flight, min(targets[-1], 2000))  # the drain tops up to its window, never above
    assert min(targets) >= capacity // 2, targets  # it never starves the server on the way down
    assert capacity <= ctl.target <= capacity + 2 * ctl.buffer(capacity), ctl.target


def test_a_few_waiting_is_the_goal_and_holds_the_window() -> None:
    ctl = WindowController(initial=110)
    for _ in range(5):
        assert ctl.update(ServerSample(running=100, waiting=10)) == 110


def test_kv_above_high_water_stops_growth() -> None:
    ctl = WindowController(initial=64)
    assert ctl.update(ServerSample(running=64, waiting=0, kv_usage=0.95)) == 64
    assert ctl.update(ServerSample(running=64, waiting=0, kv_usage=0.5)) == 128


def test_preemption_backs_off_below_what_runs() -> None:
    ctl = WindowController(initial=200)
    ctl.update(ServerSample(running=200, waiting=0, kv_usage=0.99, preemptions=5))  # first sight of the counter
    assert ctl.target == 200
    assert ctl.update(ServerSample(running=150, waiting=30, kv_usage=0.99, preemptions=9)) == 162  # 0.9 x 180
    assert ctl.update(ServerSample(running=160, waiting=2, kv_usage=0.97, preemptions=9)) == 162  # counter still


def test_no_growth_while_the_client_does_not_fill_its_window() -> None:
    ctl = WindowController(initial=256)
    assert ctl.update(ServerSample(running=40, waiting=0)) == 256  # the queue ran dry: no evidence
    assert ctl.update(ServerSample(running=0, waiting=0), in_flight=250) == 512


def test_bounds_and_fallback() -> None:
    ctl = WindowController(initial=64, min_window=16, max_window=100)
    for _ in range(5):
        ctl.update(ServerSample(running=ctl.target, waiting=0))
    assert ctl.target == 100
    for _ in range(6):
        ctl.update(ServerSample(running=1, waiting=500))
    assert ctl.target == 16
    assert ctl.update(None) == 16  # no answer this round: hold
    assert ctl.fallback() == 64  # no metrics at all: the configured window
    with pytest.raises(ValueError):
        WindowController(min_window=10, max_window=5)


# ----------------------------------------------------------------------------- against the fake server


def test_no_metrics_endpoint_means_the_fixed_window() -> None:
    async def go(srv: FakeOpenAI) -> AdaptiveWindow:
        async with AdaptiveWindow(srv.url, "k", WindowController(initial=48), interval=0.05) as w:
            await asyncio.sleep(0.3)
        return w

    with FakeOpenAI() as srv:  # plain mode stands for OpenAI: no /metrics
        w = asyncio.run(go(srv))
    assert w.adaptive is False
    assert w.target == 48
    assert srv.calls.count(("GET", "/metrics")) == 1  # asked once, then never again


def test_metrics_unreachable_falls_back_after_a_few_rounds() -> None:
    async def go() -> list[tuple[bool, int]]:
        w = AdaptiveWindow("http://127.0.0.1:9/v1", None, WindowController(initial=32))
        seen = []
        for _ in range(UNREACHABLE_ROUNDS):
            await w.poll_once()
            seen.append((w.adaptive, w.target))
        await w.stop()
        return seen

    seen = asyncio.run(go())
    assert seen[:-1] == [(True, 32)] * (UNREACHABLE_ROUNDS - 1)  # the small initial window meanwhile
    assert seen[-1] == (False, 32)


def test_a_missing_sample_after_metrics_were_seen_holds_the_window() -> None:
    async def go(srv: FakeOpenAI) -> AdaptiveWindow:
        w = AdaptiveWindow(srv.url, None, WindowController(initial=16))
        await w.poll_once()
        srv.metrics = False
        srv._routes.pop("/metrics")
        await w.poll_once()
        await w.stop()
        return w

    with FakeOpenAI(metrics=True) as srv:
        w = asyncio.run(go(srv))
    assert w.adaptive is True and w.confirmed


BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "x" * 400}],  # ~100 prompt tokens
    "max_tokens": 200,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "t", "schema": {"type": "object", "properties": {"a": {"minLength": 120}}}},
    },
}


async def drive(srv: FakeOpenAI, seconds: float) -> tuple[AdaptiveWindow, list[int]]:
    """A client that keeps `window.target` requests in flight, as the drain does."""
    targets: list[int] = []
    payload = json.dumps(BODY).encode()
    limits = httpx2.Limits(max_connections=600, max_keepalive_connections=600)
    async with (
        httpx2.AsyncClient(base_url=srv.url, limits=limits, timeout=30, trust_env=False) as http,
        AdaptiveWindow(srv.url, None, WindowController(initial=8, max_window=512), interval=0.2) as window,
    ):
        inflight: set[asyncio.Task[httpx2.Response]] = set()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            while len(inflight) < window.target:
                t = asyncio.create_task(http.post("/chat/completions", content=payload))
                inflight.add(t)
                t.add_done_callback(inflight.discard)
            targets.append(window.target)
            await asyncio.sleep(0.02)
        for t in list(inflight):
            t.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
    return window, targets


@pytest.mark.parametrize(
    ("engine", "low", "high"),
    [
        # max_num_seqs is the limit (a small model's server with a low cap)
        (EngineConfig(max_num_seqs=32, step_seconds=0.005), 32, 56),
        # the KV cache is the limit: ~140 tokens a sequence, room for ~24 (a large model's server)
        # (under load the samples lag, and the saw-tooth of preemptions sits lower: half the room, at least)
        (EngineConfig(max_num_seqs=256, kv_tokens=24 * 140, step_seconds=0.005), 12, 48),
    ],
    ids=["max_num_seqs", "kv_cache"],
)
def test_window_converges_near_the_simulated_capacity(engine: EngineConfig, low: int, high: int) -> None:
    with FakeOpenAI(engine=engine) as srv:
        window, targets = asyncio.run(drive(srv, 5.0))
        sim = srv.engine
    assert sim is not None
    assert window.adaptive is True
    late = targets[len(targets) // 2 :]
    assert low <= statistics.median(late) <= high, (window.history, sim.max_running)
    assert max(targets) < 256  # found the limit well before the bound
    assert srv.stats.completed > 100
