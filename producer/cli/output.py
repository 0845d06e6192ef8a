"""What the CLI prints: tables on a terminal, one plain line per row elsewhere (a cron log never wraps
a row), and progress while waiting.

Every string that came from a user, a file or a model goes through producer.safe_text: printed as
rich Text (never parsed as markup) with control characters shown as visible escapes. Long answers
are cut there too, with a marker that says how much was left out.

Ids, states and counts are never cut or broken: a table is drawn only where the terminal is wide
enough for them (each id on one line, each count word whole) and for some of the free text beside
them; on a narrower terminal each row is stacked on lines of its own, which the terminal wraps.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import click
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from jobs.outcomes import Outcome
from jobs.store import BatchStatus
from producer.safe_text import is_cut_mark, safe, safe_cut, visible, visible_cut

# The most characters of an answer shown in a table (or a stacked row), and in a plain line. The
# rest is cut, and marked as cut: `jobctl results --json` has all of it.
TABLE_CHARS = 300
LINE_CHARS = 10_000
# The narrowest a column of free text (a name, an answer) may get before rows are stacked instead.
FREE_MIN = 12
# Problems listed by `jobctl status BATCH`; --json lists them all.
MAX_PROBLEMS = 20
# Column kinds: "id" is never wrapped, "words" wraps between words only, "free" wraps anywhere.
ID, WORDS, FREE = "id", "words", "free"
# Cells between two columns of a table: padding, a divider (a space in this box style), padding.
GAP = 3


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


def _table(out: Console, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Text]]) -> Table | None:
    """`rows` as a table, or None where `out` is too narrow to show every ID column on one line, every
    WORDS column without breaking a word, and FREE_MIN cells of each FREE column."""
    wide = out.options.update_width(1_000_000)
    needed = GAP * (len(columns) - 1)
    for i, (header, kind) in enumerate(columns):
        if kind == FREE:
            needed += _free_min(row[i] for row in rows)
            continue
        cells = [Text(header), *(row[i] for row in rows)]
        sizes = [Measurement.get(out, wide, cell) for cell in cells]
        needed += max(m.maximum if kind == ID else m.minimum for m in sizes)
    if needed > out.width:
        return None
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, (header, kind) in enumerate(columns):
        t.add_column(
            header,
            no_wrap=kind == ID,
            overflow="ellipsis" if kind == ID else "fold",
            min_width=_free_min(row[i] for row in rows) if kind == FREE else None,
        )
    for row in rows:
        t.add_row(*row)
    return t


def _free_min(cells: Iterable[Text]) -> int:
    """The narrowest a FREE column may be: FREE_MIN, or wider where a cut's marker (a line of its own)
    would not fit, and would be wrapped into pieces."""
    marks = [cell_len(line) for cell in cells for line in cell.plain.split("\n") if is_cut_mark(line)]
    return max([FREE_MIN, *marks])


def _stacked(out: Console, head: Text, lines: Iterable[Text]) -> None:
    """One row as a head line and indented lines, each as it is: the terminal wraps a long line, so an
    id in it stays one string (no line break or ellipsis is put into it)."""
    out.print(head, soft_wrap=True)
    for text in lines:
        for line in text.split("\n"):  # a cut's marker is a line of its own
            out.print(Text("  ") + line, soft_wrap=True)


def status_rows(states: list[BatchStatus], hidden: str = "", filtered: bool = False) -> None:
    """The recent batches; where there are none, why: `hidden` (another key's batches), or filters."""
    if not states:
        if hidden:
            click.echo(f"jobctl: {hidden}", err=True)
        elif filtered:
            click.echo("no batches match; `jobctl status` without filters lists the recent ones")
        else:
            click.echo("no batches yet: `jobctl submit FILE` makes one")
        return
    if not is_tty():
        # One line per batch, tab-separated: greppable, and never wrapped in a log.
        for s in states:
            fields = [s.id, s.status, _when(s.created_at), s.queue, _counts(s), s.name or ""]
            click.echo("\t".join(visible(f) for f in fields))
        return
    out = console()
    named = any(s.name for s in states)
    columns = [("batch", ID), ("status", WORDS), ("created", WORDS), ("queue", ID)] + (
        [("name", FREE)] if named else []
    )
    rows = [
        [safe(s.id), safe(f"{s.status}, {_counts(s)}"), safe(_when(s.created_at)), safe(s.queue)]
        + ([safe(s.name or "")] if named else [])
        for s in states
    ]
    table = _table(out, columns, rows)
    if table is not None:
        out.print(table)
        return
    for s in states:
        more = [safe(_counts(s)), safe(f"created {_when(s.created_at)}, queue {s.queue}")]
        named_line = [Text("name ") + safe(s.name)] if s.name else []
        _stacked(out, safe(s.id, style="bold") + "  " + safe(s.status), more + named_line)


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
    for cid, problem in list(s.problems.items())[:MAX_PROBLEMS]:
        lines.append(("problem", f"{cid}: {problem}"))
    if len(s.problems) > MAX_PROBLEMS:
        more = len(s.problems) - MAX_PROBLEMS
        lines.append(("problem", f"... and {more} more (`jobctl status {s.id} --json` lists them all)"))
    for note in notes:
        lines.append(("note", note))
    for k, v in lines:
        if v:
            click.echo(f"{visible(k):<10} {visible(v)}")


def _answer(o: Outcome) -> str:
    """The text a row shows for an outcome, uncut: the answer, or the error's code and message."""
    if not o.ok:
        err = o.error or {}
        return f"{err.get('code', 'error')}: {err.get('message', '')}"
    if o.parsed is not None:
        return json.dumps(o.parsed, ensure_ascii=False)
    return o.content or ""


def results_rows(outcomes: Iterable[Outcome]) -> None:
    n_ok = n_bad = 0
    if not is_tty():
        for o in outcomes:
            n_ok, n_bad = n_ok + o.ok, n_bad + (not o.ok)
            fields = [visible(o.custom_id), "ok" if o.ok else "failed", visible_cut(_answer(o), LINE_CHARS)]
            click.echo("\t".join(fields))
        click.echo(f"{n_ok} succeeded, {n_bad} failed", err=True)
        return
    shown = list(outcomes)  # a table is measured whole before it is drawn
    n_ok = sum(o.ok for o in shown)
    n_bad = len(shown) - n_ok
    rows = [
        [safe(o.custom_id), Text("yes") if o.ok else Text("no", style="red"), safe_cut(_answer(o), TABLE_CHARS)]
        for o in shown
    ]
    out = console()
    table = _table(out, [("custom_id", ID), ("ok", ID), ("answer", FREE)], rows)
    if table is not None:
        out.print(table)
    else:
        for o, (_, ok, answer) in zip(shown, rows, strict=True):
            _stacked(out, safe(o.custom_id, style="bold") + "  " + ok, [answer])
    out.print(f"{n_ok} succeeded, {n_bad} failed", soft_wrap=True)


def progress_line(s: BatchStatus) -> str:
    return visible(f"{s.id}: {s.status}, {_counts(s)}")


class Progress:
    """A bar on a terminal; elsewhere one line every `every` seconds (and on changes of state). A
    terminal too narrow for the batch id and a bar beside it gets the lines too: a bar would cut the id.
    """

    # Cells a bar line needs beside the id, the bar and the digits of its counts: the longest state with
    # its running count (" cancelling (N running)"), done/total's slash, the time taken, and gaps.
    LINE_CELLS = 33
    MIN_BAR, MAX_BAR = 5, 40

    def __init__(self, quiet: bool = False, every: float = 10.0):
        self.quiet = quiet
        self.every = every
        self._tty = is_tty(stderr=True)
        self._bar: Any = None
        self._task: Any = None
        self._last = 0.0
        self._last_status = ""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def _start_bar(self, s: BatchStatus) -> None:
        """Start the bar at the first status (the id's width is known then), if it fits the terminal."""
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        out = console(stderr=True)
        bar = min(self.MAX_BAR, out.width - cell_len(visible(s.id)) - 3 * len(str(s.total)) - self.LINE_CELLS)
        if bar < self.MIN_BAR:
            self._tty = False
            return
        self._bar = Bar(
            TextColumn("{task.description}", markup=False),
            BarColumn(bar_width=bar),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=out,
        )
        self._bar.__enter__()
        self._task = self._bar.add_task(visible(s.id), total=s.total)

    def update(self, s: BatchStatus) -> None:
        if self.quiet:
            return
        if self._tty and self._bar is None:
            self._start_bar(s)
        finished = s.counts["completed"] + s.counts["failed"] + s.counts["cancelled"] + s.counts["expired"]
        if self._bar is not None:
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
