"""Results as a table: one row per task with its status, the record's main fields and the answer
flattened, for `jobctl results BATCH --format csv`.

Every cell is untrusted (an email subject, a model's answer, a user schema's key): control
characters become spaces, and a cell a spreadsheet would run as a formula (=, +, -, @ first) is
written with a leading apostrophe, unless it is a plain number such as -4.75.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any, Protocol, TextIO

from jobs.errors import JobctlError

BASE_COLUMNS = ("custom_id", "status", "error_code")
EXTRA_COLUMNS = ("error_message",)
# The fields that say which record a row is about, by the family of its kind ("email.triage").
RECORD_COLUMNS = {
    "email": ("from", "subject", "date"),
    "transaction": ("date", "description", "amount", "currency"),
}
ANSWER_PREFIX = "answer."
INPUT_PREFIX = "input."
# Where a task's answer is not an object (a list, a number), or is free text: one column.
ANSWER_COLUMN = "answer"

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_FORMULA_START = ("=", "+", "-", "@")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


class Outcome(Protocol):
    """What a row is made from (jobs.outcomes.Outcome is one). `content`, the answer's text, is
    read where present, for tasks whose answer is free text."""

    @property
    def custom_id(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def kind(self) -> str: ...
    @property
    def input(self) -> dict[str, Any] | None: ...
    @property
    def parsed(self) -> Any: ...
    @property
    def error(self) -> dict[str, str] | None: ...


class FieldsError(JobctlError):
    """--fields names a column the results do not have."""


def write_csv(outcomes: Iterable[Outcome], out: TextIO, fields: Sequence[str] | None = None) -> int:
    """Write the table as CSV (a header row, then one row per outcome); returns the rows written.

    `out` should be opened with newline="" (the csv module writes its own line ends)."""
    header, rows = table(outcomes, fields)
    writer = csv.writer(out)
    writer.writerow([safe_cell(h) for h in header])
    writer.writerows(rows)
    return len(rows)


def table(outcomes: Iterable[Outcome], fields: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """The header and the rows, every cell a safe string.

    Columns, by default: custom_id, status, error_code, the record's main fields (mail: from,
    subject, date; transaction: date, description, amount, currency), then the answer's fields,
    nested objects as dotted names ("people.0.name" does not occur: lists are one cell). `fields`
    picks and orders columns: any of those, error_message, any input field ("to", "input.body"),
    "answer.NAME" where an answer field's name is taken by a record field."""
    flat = [_flatten_row(o) for o in outcomes]
    answer_cols = _answer_columns(flat)
    record_cols: list[str] = []
    for _o, _inp, _ans, family in flat:
        for name in RECORD_COLUMNS.get(family, ()):
            if name not in record_cols:
                record_cols.append(name)
    taken = set(BASE_COLUMNS) | set(EXTRA_COLUMNS) | set(record_cols)
    # An answer field named like a record field (an extract schema's "date") keeps its prefix.
    answer_names = {(ANSWER_PREFIX + a if a in taken else a): a for a in answer_cols}
    default = [*BASE_COLUMNS, *record_cols, *answer_names]
    columns = list(fields) if fields else default
    input_cols = {k for _o, inp, _a, _f in flat for k in inp}
    _check_fields(columns, default, answer_cols, input_cols)
    rows = []
    for outcome, inp, ans, _family in flat:
        row = []
        for col in columns:
            row.append(safe_cell(_cell(col, outcome, inp, ans, answer_names)))
        rows.append(row)
    return columns, rows


def _cell(col: str, outcome: Outcome, inp: dict[str, str], ans: dict[str, str], answer_names: dict[str, str]) -> str:
    if col == "custom_id":
        return str(outcome.custom_id)
    if col == "status":
        return "completed" if outcome.ok else "failed"
    if col in ("error_code", "error_message"):
        err = outcome.error or {}
        return str(err.get("code" if col == "error_code" else "message") or "")
    if col in answer_names:
        return ans.get(answer_names[col], "")
    if col.startswith(ANSWER_PREFIX):
        return ans.get(col[len(ANSWER_PREFIX) :], "")
    if col.startswith(INPUT_PREFIX):
        return inp.get(col[len(INPUT_PREFIX) :], "")
    # A record column (or input field) this row's input lacks stays empty: an answer field of the
    # same name is not the record's (a drafted reply's subject is not the mail's) and has its
    # own column, answer.NAME.
    return inp.get(col, "")


def _check_fields(columns: list[str], default: list[str], answers: list[str], inputs: set[str]) -> None:
    known = [*default, *EXTRA_COLUMNS, *(ANSWER_PREFIX + a for a in answers), *sorted(inputs)]
    known += [INPUT_PREFIX + k for k in sorted(inputs)]
    for col in columns:
        if col in known:
            continue
        close = difflib.get_close_matches(col, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        shown = ", ".join(dict.fromkeys([*default, *EXTRA_COLUMNS]))
        raise FieldsError(f"--fields: no column {safe_cell(col)!r} in these results; {hint}columns: {shown}")


def _flatten_row(outcome: Outcome) -> tuple[Outcome, dict[str, str], dict[str, str], str]:
    kind = outcome.kind or ""
    family = kind.split(".", 1)[0]
    inp: dict[str, str] = {}
    data = outcome.input
    if isinstance(data, dict):
        flatten(data, "", inp)
        if family == "transaction" and isinstance(data.get("amount"), int | float):
            inp["amount"] = f"{data['amount']:.2f}"
    ans: dict[str, str] = {}
    parsed = outcome.parsed
    if isinstance(parsed, dict):
        flatten(_in_schema_order(kind, parsed), "", ans)
    elif parsed is not None:
        ans[ANSWER_COLUMN] = _scalar(parsed) if not isinstance(parsed, list) else _list(parsed)
    elif outcome.ok:
        content = getattr(outcome, "content", None)
        if isinstance(content, str):
            ans[ANSWER_COLUMN] = content
    return outcome, inp, ans, family


def _answer_columns(flat: list[tuple[Any, dict[str, str], dict[str, str], str]]) -> list[str]:
    """Answer columns in the order they first appear: rows keep the batch's order and each
    answer its schema's order, so the same results give the same columns."""
    seen: dict[str, None] = {}
    for _o, _inp, ans, _family in flat:
        for k in ans:
            seen.setdefault(k, None)
    return list(seen)


def flatten(value: dict[str, Any], prefix: str, out: dict[str, str]) -> None:
    """Nested objects as dotted names; lists of plain values joined with "; ", other lists as JSON."""
    for key, v in value.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict):
            if v:
                flatten(v, name + ".", out)
            else:
                out[name] = ""
        elif isinstance(v, list):
            out[name] = _list(v)
        else:
            out[name] = _scalar(v)


def _list(v: list[Any]) -> str:
    if all(not isinstance(x, dict | list) for x in v):
        return "; ".join(_scalar(x) for x in v)
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def _scalar(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return str(v)


def _in_schema_order(kind: str, answer: dict[str, Any]) -> dict[str, Any]:
    order = _schema_order(kind)
    if not order:
        return answer
    rank = {k: i for i, k in enumerate(order)}
    return dict(sorted(answer.items(), key=lambda kv: rank.get(kv[0], len(rank))))


@cache
def _schema_order(kind: str) -> tuple[str, ...]:
    """The answer fields of a kind in its schema's order, where the kind alone fixes its schema
    (every typed kind; not `extract` or `chat`, whose schema comes with each task)."""
    from jobs.kinds import KINDS

    k = KINDS.get(kind)
    if k is None:
        return ()
    try:
        schema = k.output_schema(None, k.options_model.model_validate({}))
    except Exception:  # a kind whose schema needs the task
        return ()
    props = schema.get("properties") if isinstance(schema, dict) else None
    return tuple(props) if isinstance(props, dict) else ()


def safe_cell(value: str) -> str:
    """A cell no spreadsheet runs as a formula, with no control characters."""
    value = _CONTROL.sub(" ", value)
    stripped = value.lstrip()
    if stripped.startswith(_FORMULA_START) and not _NUMBER.fullmatch(stripped):
        return "'" + value
    return value
