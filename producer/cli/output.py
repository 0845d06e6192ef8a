"""What the CLI prints: tables on a terminal, one plain line per row elsewhere (a cron log never wraps
a row), and progress while waiting.

Every string that came from a user, a file or a model goes through producer.safe_text: printed as
rich Text (never parsed as markup) with control characters shown as visible escapes.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from jobs.outcomes import Outcome
from jobs.store import BatchStatus
from producer.safe_text import safe, visible


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def is_tty(stderr: bool = False) -> bool:
    stream = sys.stderr if stderr else sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def _counts(s: BatchStatus) -> str:
    c = s.counts
    text = f"{c['completed']}/{s.total} done, {c['failed']} failed"
    for key in ("queued", "running", "cancelled", "expired", "missing"):
        if c[key]:
            text += f", {c[key]} {key}"
    return text


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def status_rows(states: list[BatchStatus]) -> None:
    if not states:
        click.echo("no batches yet: `jobctl submit FILE` makes one")
        return
    if not is_tty():
        # One line per batch, tab-separated: greppable, and never wrapped in a log.
        for s in states:
            fields = [s.id, s.status, _when(s.created_at), s.queue, _counts(s), s.name or ""]
            click.echo("\t".join(visible(f) for f in fields))
        return
    t = Table()
    t.add_column("batch", no_wrap=True, min_width=26)
    t.add_column("status", no_wrap=True)
    t.add_column("created, queue", no_wrap=True)
    t.add_column("tasks")
    t.add_column("name", overflow="fold")
    for s in states:
        t.add_row(
            safe(s.id), safe(s.status), safe(f"{_when(s.created_at)} {s.queue}"), safe(_counts(s)), safe(s.name or "")
        )
    console().print(t)


def status_detail(s: BatchStatus, notes: list[str]) -> None:
    lines = [
        ("batch", s.id),
        ("name", s.name or ""),
        ("status", s.status),
        ("queue", s.queue),
        ("created", _when(s.created_at)),
        ("completed", _when(s.completed_at) if s.completed_at else ""),
        ("tasks", _counts(s) + (f" ({s.duplicates} duplicates of earlier tasks)" if s.duplicates else "")),
        ("tokens", f"{s.usage.prompt_tokens} in, {s.usage.completion_tokens} out"),
    ]
    if s.gpu_seconds:
        lines.append(("GPU time", f"{s.gpu_seconds:.1f} s, about ${s.cost_usd:.4f}"))
    for k, v in sorted(s.metadata.items()):
        lines.append((f"meta {k}", v))
    for cid, problem in list(s.problems.items())[:20]:
        lines.append(("problem", f"{cid}: {problem}"))
    for note in notes:
        lines.append(("note", note))
    for k, v in lines:
        if v:
            click.echo(f"{k:<10} {visible(v)}")


def _answer(o: Outcome, width: int) -> str:
    if not o.ok:
        err = o.error or {}
        return f"{err.get('code', 'error')}: {err.get('message', '')}"[:width]
    if o.parsed is not None:
        return json.dumps(o.parsed, ensure_ascii=False)[:width]
    return (o.content or "")[:width]


def results_rows(outcomes: Iterable[Outcome]) -> None:
    n_ok = n_bad = 0
    if not is_tty():
        for o in outcomes:
            n_ok, n_bad = n_ok + o.ok, n_bad + (not o.ok)
            click.echo("\t".join([visible(o.custom_id), "ok" if o.ok else "failed", visible(_answer(o, 10_000))]))
        click.echo(f"{n_ok} succeeded, {n_bad} failed", err=True)
        return
    t = Table()
    t.add_column("custom_id", overflow="fold")
    t.add_column("ok", no_wrap=True)
    t.add_column("answer", ratio=3, overflow="fold")
    for o in outcomes:
        n_ok, n_bad = n_ok + o.ok, n_bad + (not o.ok)
        t.add_row(safe(o.custom_id), "yes" if o.ok else Text("no", style="red"), safe(_answer(o, 300)))
    out = console()
    out.print(t)
    out.print(f"{n_ok} succeeded, {n_bad} failed")


def progress_line(s: BatchStatus) -> str:
    return visible(f"{s.id}: {s.status}, {_counts(s)}")


class Progress:
    """A bar on a terminal; elsewhere one line every `every` seconds (and on changes of state)."""

    def __init__(self, quiet: bool = False, every: float = 10.0):
        self.quiet = quiet
        self.every = every
        self._tty = is_tty(stderr=True)
        self._bar: Any = None
        self._task: Any = None
        self._last = 0.0
        self._last_status = ""

    def __enter__(self) -> Progress:
        if not self.quiet and self._tty:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console(stderr=True),
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, s: BatchStatus) -> None:
        if self.quiet:
            return
        finished = s.counts["completed"] + s.counts["failed"] + s.counts["cancelled"] + s.counts["expired"]
        if self._bar is not None:
            if self._task is None:
                self._task = self._bar.add_task(visible(s.id), total=s.total)
            self._bar.update(
                self._task,
                completed=finished,
                description=visible(f"{s.id} {s.status} ({s.counts['running']} running)"),
            )
            return
        now = time.monotonic()
        if now - self._last >= self.every or s.status != self._last_status:
            self._last, self._last_status = now, s.status
            click.echo(progress_line(s), err=True)

    def note(self, message: str) -> None:
        if self._bar is not None:
            self._bar.console.print(safe(message))
        else:
            click.echo(f"jobctl: {visible(message)}", err=True)


def with_progress(wait: Callable[..., BatchStatus], quiet: bool, **kw: Any) -> BatchStatus:
    with Progress(quiet=quiet) as p:
        return wait(on_progress=p.update, on_note=p.note, **kw)
