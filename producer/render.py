"""Tables and progress bars for the CLI (rich)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobs.batch import BatchStatus
from jobs.results import Outcome

console = Console()
err_console = Console(stderr=True)


def status_table(states: list[BatchStatus]) -> None:
    if not states:
        console.print("no batches yet: `jobctl submit FILE` makes one")
        return
    t = Table()
    # The batch id is what the user copies into the next command: never cut it.
    t.add_column("batch", no_wrap=True, min_width=26)
    t.add_column("status", no_wrap=True)
    t.add_column("created, queue", no_wrap=True)
    t.add_column("tasks")
    for s in states:
        c = s.counts
        tasks = f"{c.get('completed', 0)}/{s.total} done, {c.get('failed', 0)} failed"
        for key in ("queued", "running", "cancelled", "expired"):
            if c.get(key):
                tasks += f", {c[key]} {key}"
        created = datetime.fromtimestamp(s.created_at).strftime("%m-%d %H:%M")
        t.add_row(s.id, s.status, f"{created} {s.queue}", tasks)
    console.print(t)


def _answer(o: Outcome) -> str:
    if not o.ok:
        return f"[red]{o.error['code'] if o.error else 'error'}[/red]: {(o.error or {}).get('message', '')[:80]}"
    msg: dict[str, Any] = (o.body or {}).get("choices", [{}])[0].get("message", {})
    if "parsed" in msg:
        return json.dumps(msg["parsed"], ensure_ascii=False)[:160]
    return str(msg.get("content", ""))[:160].replace("\n", " ")


def results_table(outcomes: list[Outcome]) -> None:
    t = Table()
    t.add_column("custom_id", overflow="fold")
    t.add_column("ok", no_wrap=True)
    t.add_column("answer", ratio=3)
    for o in outcomes:
        t.add_row(o.custom_id, "yes" if o.ok else "no", _answer(o))
    console.print(t)
    n_ok = sum(o.ok for o in outcomes)
    console.print(f"{n_ok} succeeded, {len(outcomes) - n_ok} failed")


def wait_with_progress(client: Any, batch: str, timeout: float | None, quiet: bool) -> BatchStatus:
    end = time.monotonic() + timeout if timeout else None
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=quiet,
    ) as bar:
        task = bar.add_task(batch, total=None)
        while True:
            st: BatchStatus = client.status(batch)
            finished = st.counts.get("completed", 0) + st.counts.get("failed", 0) + st.counts.get("cancelled", 0)
            bar.update(
                task,
                total=st.total,
                completed=finished,
                description=f"{batch} {st.status} ({st.counts.get('running', 0)} running)",
            )
            if st.done:
                return st
            if end and time.monotonic() > end:
                raise TimeoutError(f"{batch} is not done after {timeout}s")
            time.sleep(0.5)
