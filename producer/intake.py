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

from jobs.imports import DEFAULT_KINDS, ImportOptions, detect, family_of, read_records
from jobs.imports.reading import read_bounded
from jobs.kinds import KINDS
from jobs.parse import InputError, Limits, Parsed, Problem, parse_bytes, validate_entries
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
    if path == "-":
        raw = sys.stdin.buffer.read(limits.max_file_bytes + 1)
        return parse_bytes(raw, "<stdin>", limits)
    p = Path(path)
    fmt = detect(p)
    family = family_of(fmt)
    if family is None:
        if intake.kind is not None:
            # A task file names its kinds itself; --kind is for imported records.
            raise InputError(path, [Problem(f"{path}", "--kind applies to mail and bank imports, not to task files")])
        return parse_bytes(read_bounded(p, path, limits.max_file_bytes), path, limits)
    kind = intake.kind or DEFAULT_KINDS[family]
    opts = ImportOptions(
        columns=intake.columns,
        context_tokens=limits.context_tokens,
        max_file_bytes=limits.max_file_bytes,
        kind=kind,
        options=limits.options or None,
    )
    entries: list[tuple[str, int, Any]] = []
    seen: dict[str, tuple[str, str]] = {}
    for rec in read_records(p, fmt, opts):
        value = {"custom_id": rec.custom_id, "kind": kind, "input": rec.input}
        # The same record twice in one import (a message in two Maildir folders): one task.
        key = _canonical(value)
        if rec.custom_id in seen:
            if seen[rec.custom_id][1] == key:
                continue
        seen[rec.custom_id] = (rec.origin, key)
        entries.append((rec.origin, 0, value))
    if not entries:
        what = "messages" if family == "email" else "transactions"
        raise InputError(path, [Problem(path, f"no {what} found; check that this is the right file")])
    return validate_entries(entries, path, limits)


def _canonical(value: dict[str, Any]) -> str:
    import json

    return json.dumps(value, sort_keys=True)


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
