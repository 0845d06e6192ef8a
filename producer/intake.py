"""From what the user names on `jobctl submit PATH...` to one validated batch.

Each path is detected from its content (jobs.imports.detect): task files go through jobs.parse, and
mailboxes and bank exports through the importers, whose records become tasks of the batch's kind.
Everything is read and validated before anything is enqueued. The same record met twice (two
overlapping exports named together) is one task; the same custom_id with other content is an error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.imports import DEFAULT_KINDS, TASKS, ImportOptions, detect, family_of, read_bytes, read_records, sniff
from jobs.imports.reading import read_bounded
from jobs.kinds import KINDS
from jobs.parse import MAX_REPORTED, InputError, Limits, Parsed, Problem, parse_bytes, validate_entries
from jobs.tasks import Task


@dataclass
class Intake:
    """What `submit` reads: the batch-level choices of the command line."""

    limits: Limits
    kind: str | None = None
    columns: dict[str, str] | None = None


def read_paths(paths: list[str], intake: Intake) -> Parsed:
    """Every path's tasks, as one batch. `-` reads a task file from stdin."""
    if intake.kind is not None and intake.kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(intake.kind, KINDS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known kinds: {', '.join(KINDS)}"
        raise InputError("--kind", [Problem("--kind", f"unknown kind {intake.kind!r}; {hint}")])
    parts = [_read_one(p, intake) for p in paths]
    if len(parts) == 1:
        return parts[0]
    return _combine(parts, paths)


def _read_one(path: str, intake: Intake) -> Parsed:
    limits = intake.limits
    raw = None
    if path == "-":
        # stdin is told apart by its content too: a task file, or an mbox, a message, a CSV, an OFX file.
        path = "<stdin>"
        raw = sys.stdin.buffer.read(limits.max_file_bytes + 1)
        fmt = sniff(raw[:65536], Path("-"), path) if raw.strip() and len(raw) <= limits.max_file_bytes else TASKS
    else:
        fmt = detect(Path(path))
    family = family_of(fmt)
    if family is None:
        if intake.kind is not None:
            # A task file names its kinds itself; --kind is for imported records.
            raise InputError(path, [Problem(f"{path}", "--kind applies to mail and bank imports, not to task files")])
        if raw is None:
            raw = read_bounded(Path(path), path, limits.max_file_bytes)
        return parse_bytes(raw, path, limits)
    kind = intake.kind or DEFAULT_KINDS[family]
    opts = ImportOptions(
        columns=intake.columns,
        context_tokens=limits.context_tokens,
        max_file_bytes=limits.max_file_bytes,
        kind=kind,
        options=limits.options or None,
    )
    records = read_bytes(raw, path, fmt, opts) if raw is not None else read_records(Path(path), fmt, opts)
    checked = _Checked(path, limits)
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    for rec in records:
        # The same record twice in one import (a message in two Maildir folders): one task. The
        # importers keep ids unique otherwise.
        first = seen.get(rec.custom_id)
        if first is not None:
            if first[1] != rec.input:
                checked.problem(
                    Problem(rec.origin, f"duplicate custom_id {rec.custom_id!r} (first at {first[0]}); remove one")
                )
            continue
        seen[rec.custom_id] = (rec.origin, rec.input)
        checked.add((rec.origin, 0, {"custom_id": rec.custom_id, "kind": kind, "input": rec.input}))
    if not seen:
        what = "messages" if family == "email" else "transactions"
        raise InputError(path, [Problem(path, f"no {what} found; check that this is the right file")])
    return checked.result()


class _Checked:
    """Imported records validated as tasks a batch at a time, while they are read: a large mailbox is
    parsed by worker processes, and this process validates what they have sent meanwhile. Problems
    are gathered from every batch and reported together, as for a task file."""

    BATCH = 500

    def __init__(self, path: str, limits: Limits):
        self.path, self.limits = path, limits
        self.pending: list[tuple[str, int, Any]] = []
        self.tasks: list[Task] = []
        self.problems: list[Problem] = []
        self.total = 0

    def add(self, entry: tuple[str, int, Any]) -> None:
        self.pending.append(entry)
        if len(self.pending) >= self.BATCH:
            self._check()

    def problem(self, problem: Problem) -> None:
        self.problems.append(problem)
        self.total += 1

    def _check(self) -> None:
        if not self.pending:
            return
        try:
            self.tasks += validate_entries(self.pending, self.path, self.limits).tasks
        except InputError as e:
            self.problems += e.problems
            self.total += e.total
        self.pending = []

    def result(self) -> Parsed:
        self._check()
        if self.total:
            raise InputError(self.path, self.problems[:MAX_REPORTED], total=self.total)
        return Parsed(self.tasks)


def _combine(parts: list[Parsed], paths: list[str]) -> Parsed:
    tasks: list[Task] = []
    rejected = []
    seen: dict[str, Task] = {}
    problems: list[Problem] = []
    for part in parts:
        for t in part.tasks:
            prior = seen.get(t.custom_id)
            if prior is None:
                seen[t.custom_id] = t
                tasks.append(t)
            elif prior.kind == t.kind and prior.canonical() == t.canonical():
                continue  # the same record in two of the files: one task
            else:
                problems.append(
                    Problem(
                        t.origin or t.custom_id,
                        f"custom_id {t.custom_id!r} is also in {prior.origin or 'another file'} with other content; "
                        "give each task its own custom_id",
                    )
                )
        rejected += part.rejected
    if problems:
        raise InputError(", ".join(paths), problems[:20], total=len(problems))
    return Parsed(tasks, rejected)
