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
    q = settings.queue
    assert cost.queue_notes(conn, q) == []
    store_queues.report_start_failure(conn, q, "prepare: OSError: 401 gated repo", time.time() + 3600)
    store_queues.note_cron(conn, q, "started 0 drainers: a drainer failed to start")
    start, cron = cost.queue_notes(conn, q)
    assert start.startswith("the Modal drainer failed to start at ") and "prepare: OSError: 401 gated repo" in start
    assert "the cron starts no GPU before" in start and "`jobctl drain --remote` tries now" in start
    assert cron.startswith("Modal's cron at ") and cron.endswith("started 0 drainers: a drainer failed to start")
    assert "the cron tries again at its next run" in cost.queue_notes(conn, q, now=time.time() + 7200)[0]
