"""The drain report: what a drain did, for the CLI's closing screen and Modal's return value."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class DrainReport:
    queue: str = ""
    model: str = ""
    done: int = 0
    failed: int = 0
    # Results dropped because another worker had taken the task back (its lease ran out).
    superseded: int = 0
    retries: int = 0
    released: int = 0
    requeued_abandoned: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_seconds: float = 0.0
    max_in_flight: int = 0
    stop_reason: str = ""
    errors: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    # Per batch drained: [tasks, prompt tokens, completion tokens], to share out the GPU time (Modal).
    batches: dict[str, list[int]] = field(default_factory=dict)
    # The adaptive window's last changes: (seconds since the drain began, requests in flight).
    window: list[tuple[float, int]] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.done + self.failed

    @property
    def jobs_per_second(self) -> float:
        return self.processed / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def output_tokens_per_second(self) -> float:
        return self.completion_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def add_batch(self, batch_id: str, prompt_tokens: int, completion_tokens: int) -> None:
        row = self.batches.setdefault(batch_id or "", [0, 0, 0])
        row[0] += 1
        row[1] += prompt_tokens
        row[2] += completion_tokens

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["errors"] = dict(self.errors)
        d["jobs_per_second"] = round(self.jobs_per_second, 2)
        d["output_tokens_per_second"] = round(self.output_tokens_per_second, 1)
        d["wall_seconds"] = round(self.wall_seconds, 3)
        return d

    def lines(self) -> list[str]:
        out = [
            f"queue {self.queue}  model {self.model}  stopped: {self.stop_reason}",
            f"done {self.done}  failed {self.failed}  retries {self.retries}  "
            f"requeued-abandoned {self.requeued_abandoned}  released {self.released}",
            f"tokens in {self.prompt_tokens}  out {self.completion_tokens}  "
            f"({self.output_tokens_per_second:.1f} out/s)",
            f"wall {self.wall_seconds:.2f}s  {self.jobs_per_second:.2f} jobs/s  peak in flight {self.max_in_flight}",
        ]
        if self.errors:
            out.append("failures: " + ", ".join(f"{k} {v}" for k, v in self.errors.most_common()))
        out += self.notes
        return out
