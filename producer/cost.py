"""What the Modal drains cost, with the OpenAI Batch API's price for the same tokens beside it.

The Modal drainer (modal_worker.py) stores one report per drain (jobs.store.queues.record_drain): the
container's seconds from its start to the end of its idle window (snapshot restore and wake included, as far
as Python sees them), the GPU, the tokens, and an estimated price from JOBCTL_MODAL_GPU_PRICE_PER_SECOND. It
shares the seconds and the price out to the batches it drained, by tokens (BatchStatus.gpu_seconds and
cost_usd). This module reads them back for `jobctl cost` and `jobctl status`, and says why a queue may not be
draining. Figures are estimates: Modal's bill is the truth (it adds CPU and memory, region multipliers, and
whatever happens before Python runs in a container).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from jobs.config import ModalSettings
from jobs.store import queues as store_queues
from jobs.store.batches import BatchStatus


@dataclass(frozen=True)
class OpenAIBatchPrice:
    """The OpenAI Batch API's price per million tokens (JOBCTL_MODAL_OPENAI_BATCH_*)."""

    model: str
    input_per_million: float
    output_per_million: float

    @classmethod
    def from_settings(cls, cfg: ModalSettings) -> OpenAIBatchPrice:
        return cls(cfg.openai_batch_model, cfg.openai_batch_input_price, cfg.openai_batch_output_price)

    def usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


@dataclass
class DrainCost:
    """One Modal drain: what it did, what its container cost, and what OpenAI's Batch API would have charged."""

    at: float
    queue: str
    model: str
    gpu: str
    gpus: int
    start: str  # fresh (the boot that made the snapshot), restored, cold start, warm (a later call)
    container_seconds: float
    drain_seconds: float
    tasks: int
    prompt_tokens: int
    completion_tokens: int
    gpu_usd: float
    openai_usd: float

    @classmethod
    def from_report(cls, r: dict[str, Any], price: OpenAIBatchPrice) -> DrainCost:
        prompt, completion = int(r.get("prompt_tokens", 0)), int(r.get("completion_tokens", 0))
        return cls(
            at=float(r.get("at", 0.0)),
            queue=str(r.get("queue", "")),
            model=str(r.get("model", "")),
            gpu=str(r.get("gpu", "")),
            gpus=int(r.get("gpus", 1)),
            start=str(r.get("start", "")),
            container_seconds=float(r.get("container_seconds", 0.0)),
            drain_seconds=float(r.get("drain_seconds", 0.0)),
            tasks=int(r.get("done", 0)) + int(r.get("failed", 0)),
            prompt_tokens=prompt,
            completion_tokens=completion,
            gpu_usd=float(r.get("estimated_usd", 0.0)),
            openai_usd=price.usd(prompt, completion),
        )


@dataclass
class CostSummary:
    """The drains since a moment, and their totals."""

    rows: list[DrainCost]
    price: OpenAIBatchPrice
    since: float | None = None
    totals: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        r = self.rows
        tasks = sum(x.tasks for x in r)
        gpu_usd = sum(x.gpu_usd for x in r)
        self.totals = {
            "drains": len(r),
            "tasks": tasks,
            "container_seconds": round(sum(x.container_seconds for x in r), 1),
            "prompt_tokens": sum(x.prompt_tokens for x in r),
            "completion_tokens": sum(x.completion_tokens for x in r),
            "gpu_usd": round(gpu_usd, 4),
            "openai_batch_usd": round(sum(x.openai_usd for x in r), 4),
            "gpu_usd_per_1k_tasks": round(gpu_usd / tasks * 1000, 4) if tasks else None,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "openai_batch": asdict(self.price),
            "totals": self.totals,
            "drains": [asdict(x) for x in self.rows],
        }

    def lines(self) -> list[str]:
        t = self.totals
        since = f"since {_when(self.since)}" if self.since else "all recorded drains"
        if not self.rows:
            return [f"{since}: no Modal drains recorded"]
        out = [
            f"{since}: {t['drains']} drains, {t['tasks']:,} tasks, {t['prompt_tokens']:,} tokens in, "
            f"{t['completion_tokens']:,} out",
            f"GPU: {t['container_seconds']:,.0f} s, about ${t['gpu_usd']:.2f}; OpenAI Batch ({self.price.model}) "
            f"for the same tokens: ${t['openai_batch_usd']:.2f}",
        ]
        for x in self.rows:
            out.append(
                f"  {_when(x.at)}  {x.gpu}x{x.gpus}  {x.start:<10}  {x.container_seconds:>7,.0f} s  "
                f"${x.gpu_usd:>8.4f}  {x.tasks:>7,} tasks  OpenAI ${x.openai_usd:.4f}"
            )
        return out


@dataclass(frozen=True)
class BatchCost:
    """One batch's share of the GPU (by its tokens in each drain) and the OpenAI Batch price of its tokens."""

    batch_id: str
    prompt_tokens: int
    completion_tokens: int
    gpu_seconds: float
    gpu_usd: float
    openai_usd: float
    openai_model: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (
            f"tokens {self.prompt_tokens:,} in, {self.completion_tokens:,} out; GPU {self.gpu_seconds:,.1f} s, "
            f"about ${self.gpu_usd:.4f} (OpenAI Batch, {self.openai_model}: ${self.openai_usd:.4f})"
        )


def summarize(
    conn: redis.Redis, since: float | None = None, cfg: ModalSettings | None = None, queue: str | None = None
) -> CostSummary:
    """The Modal drains recorded since `since` (a Unix time; None: all kept), oldest first, and their totals."""
    price = OpenAIBatchPrice.from_settings(cfg or ModalSettings.from_env())
    rows = []
    for r in store_queues.drain_reports(conn, since):
        try:
            rows.append(DrainCost.from_report(r, price))
        except (AttributeError, TypeError, ValueError, OverflowError):
            continue  # a report changed in Redis (they are plaintext bookkeeping): left out, not a crash
    if queue is not None:
        rows = [x for x in rows if x.queue == queue]
    return CostSummary(rows, price, since)


def batch_cost(status: BatchStatus, cfg: ModalSettings | None = None) -> BatchCost:
    """A batch's tokens, its share of GPU time and estimated cost, and the OpenAI Batch price beside them."""
    price = OpenAIBatchPrice.from_settings(cfg or ModalSettings.from_env())
    u = status.usage
    return BatchCost(
        status.id,
        u.prompt_tokens,
        u.completion_tokens,
        status.gpu_seconds,
        status.cost_usd,
        price.usd(u.prompt_tokens, u.completion_tokens),
        price.model,
    )


def queue_notes(conn: redis.Redis, queue: str, now: float | None = None, cipher: Any = None) -> list[str]:
    """Why a queue may not be draining, from what Modal's drainer and cron left in Redis (empty when nothing)."""
    now = time.time() if now is None else now
    h = store_queues.health(conn, queue, cipher)
    notes = []
    if h.get("start_error"):
        failed_at = _float(h.get("start_failed_at"))
        until = _float(h.get("backoff_until"))
        then = (
            f"the cron starts no GPU before {_when(until)} (`jobctl drain --remote` tries now)"
            if until > now
            else "the cron tries again at its next run"
        )
        notes.append(f"the Modal drainer failed to start at {_when(failed_at)}: {h['start_error']}; {then}")
    if h.get("cron_decision"):
        notes.append(f"Modal's cron at {_when(_float(h.get('cron_at')))}: {h['cron_decision']}")
    return notes


def _float(v: str | None) -> float:
    try:
        return float(v or 0)
    except ValueError:
        return 0.0


def _when(ts: float | None) -> str:
    try:
        return datetime.fromtimestamp(ts or 0, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):  # a stamp changed in Redis: bookkeeping, not worth failing for
        return "(an unreadable time)"
