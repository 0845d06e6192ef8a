"""Reading task files: our JSON (a list of tasks, or {"tasks": [...]}) and OpenAI Batch JSONL.

The format is told apart from the content. Every problem is reported with its place
(file, line, index, field), all of them at once up to a limit, and a file with any problem
yields no tasks at all: submit is all or nothing.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from jobs import constants as c
from jobs.errors import JobctlError
from jobs.kinds import KINDS
from jobs.kinds.base import estimate_tokens
from jobs.outcomes import UNSUPPORTED
from jobs.tasks import Rejection, Task

MAX_REPORTED = 20
TASK_FIELDS = {"custom_id", "kind", "input", "options"}
BATCH_LINE_ORDER = ("custom_id", "method", "url", "body")
BATCH_LINE_FIELDS = set(BATCH_LINE_ORDER)
BATCH_URLS = ("/v1/chat/completions",)
# Deeper JSON is refused: nothing a task needs is this deep, and the JSON decoder, the schema
# checker and the encoder all recurse, so a deep value would crash them instead of being reported.
MAX_DEPTH = 64
_TASKS_HEAD = re.compile(r'\s*\{\s*"tasks"\s*:\s*(?=\[)')


@dataclass
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class InputError(JobctlError):
    """A task file has problems. `problems` lists each with its place; nothing was enqueued."""

    def __init__(self, source: str, problems: list[Problem], total: int | None = None):
        self.source = source
        self.problems = problems
        self.total = total if total is not None else len(problems)
        lines = [str(p) for p in problems[:MAX_REPORTED]]
        if self.total > len(lines):
            lines.append(f"... and {self.total - len(lines)} more problems")
        noun = "problem" if self.total == 1 else "problems"
        super().__init__(f"{source}: {self.total} {noun}, nothing was submitted:\n  " + "\n  ".join(lines))


@dataclass
class Limits:
    max_file_bytes: int = c.DEFAULT_MAX_FILE_BYTES
    max_task_bytes: int = c.DEFAULT_MAX_TASK_BYTES
    context_tokens: int = c.DEFAULT_CONTEXT_TOKENS
    style: str = "json_schema"
    # Options for every task of the file (`submit --options`); a task's own options win.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Parsed:
    """A file's tasks, and its OpenAI batch lines for endpoints jobctl does not serve (refused one by one)."""

    tasks: list[Task]
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.tasks) + len(self.rejected)

    # It reads as its list of tasks, so callers that only want the tasks need not know it is more.
    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]


def parse_bytes(raw: bytes, source: str = "<stdin>", limits: Limits | None = None) -> Parsed:
    limits = limits or Limits()
    text = decode(raw, source, limits)
    stripped = text.lstrip()
    if not stripped:
        raise InputError(
            source, [Problem(source, "the file is empty; give a JSON list of tasks or OpenAI batch JSONL")]
        )
    if stripped[0] == "[":
        entries = list(_array_entries(text, source))
        return _validate_all(entries, source, limits, "tasks")
    if stripped[0] != "{":
        line = _line_of(text, len(text) - len(stripped))
        raise InputError(
            source,
            [Problem(f"{source}:{line}", 'expected a JSON list of tasks, an object with "tasks", or JSONL lines')],
        )
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg.startswith("Extra data"):
            return _validate_all(list(_jsonl_entries(text, source)), source, limits, "line")
        raise InputError(source, [Problem(f"{source}:{e.lineno}:{e.colno}", f"malformed JSON: {e.msg}")]) from e
    except (RecursionError, ValueError) as e:
        pos, msg = _undecodable(e, text, 0)
        raise InputError(source, [Problem(f"{source}:{_line_col(text, pos)}", msg)]) from None
    if isinstance(whole, dict) and "tasks" in whole:
        extra = sorted(set(whole) - {"tasks", "options"})
        if extra:
            raise InputError(
                source,
                [Problem(source, f'unknown top-level field {extra[0]!r}; only "tasks" and "options" are allowed')],
            )
        file_options = whole.get("options") or {}
        if not isinstance(file_options, dict):
            raise InputError(source, [Problem(f"{source}: options", "must be an object of options for every task")])
        # The file's options are defaults under the command line's (--options), under each task's own.
        limits = replace(limits, options={**file_options, **limits.options})
        if not isinstance(whole["tasks"], list):
            raise InputError(
                source, [Problem(f"{source}: tasks", f"must be a list of tasks, not {_json_type(whole['tasks'])}")]
            )
        return _validate_all(_wrapped_entries(text, source, whole["tasks"]), source, limits, "tasks")
    # A single JSON object: one line of JSONL.
    return _validate_all(list(_jsonl_entries(text, source)), source, limits, "line")


def decode(raw: bytes, source: str, limits: Limits) -> str:
    if len(raw) > limits.max_file_bytes:
        mb = len(raw) / 1e6
        raise InputError(
            source,
            [
                Problem(
                    source,
                    f"the file is {mb:.1f} MB, over the {limits.max_file_bytes // (1024 * 1024)} MiB limit; "
                    "split it into smaller files (or raise JOBCTL_MAX_FILE_BYTES)",
                )
            ],
        )
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(
            source,
            [
                Problem(
                    f"{source}:1:1", "the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8"
                )
            ],
        )
    nul = raw.find(b"\x00", 0, 65536)
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        col = nul - (raw.rfind(b"\n", 0, nul) + 1) + 1
        raise InputError(
            source,
            [
                Problem(
                    f"{source}:{line}:{col}",
                    "the file looks binary (it contains NUL bytes); give a JSON or JSONL text file",
                )
            ],
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError(
            source,
            [
                Problem(
                    f"{source}:{line}:{col}",
                    f"the file is not valid UTF-8 (byte 0x{raw[e.start]:02x}); save it as UTF-8",
                )
            ],
        ) from e


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, max(pos, 0)) + 1


def _line_col(text: str, pos: int) -> str:
    return f"{_line_of(text, pos)}:{pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


def _undecodable(e: Exception, text: str, start: int) -> tuple[int, str]:
    """Where and why the JSON decoder failed with something other than a syntax error: a value
    nested too deeply for it (RecursionError) or an integer too long to convert (ValueError)."""
    limit = sys.get_int_max_str_digits() or 10**9
    tokens = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]|\d{' + str(limit + 1) + ",}")
    depth = 0
    for m in tokens.finditer(text, start):
        tok = m.group()
        if tok in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH and isinstance(e, RecursionError):
                return m.start(), f"the JSON is nested more than {MAX_DEPTH} levels deep; flatten it"
        elif tok in ("]", "}"):
            depth -= 1
        elif tok[0].isdigit() and not isinstance(e, RecursionError):
            return m.start(), f"a number has more than {limit} digits; shorten it or write it as a string"
    if isinstance(e, RecursionError):
        return start, f"the JSON is nested more than {MAX_DEPTH} levels deep; flatten it"
    return start, f"malformed JSON: {e}"


def _array_entries(
    text: str, source: str, start: int | None = None, closer: str = ""
) -> Iterator[tuple[str, int, Any]]:
    """Each element of a JSON array (the first "[", or the one at `start`) with the line it starts
    on. After the array only whitespace may follow, or `closer` (the "}" of {"tasks": [...]})."""
    dec = json.JSONDecoder()
    pos = (text.index("[") if start is None else start) + 1
    n = len(text)
    index = 0
    # Lines are counted from the previous element on, not from the top: a file of 100,000 tasks
    # would otherwise be rescanned 100,000 times.
    line, counted = 1, 0

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    def skip(p: int) -> int:
        while p < n and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip(pos)
    if pos < n and text[pos] == "]":
        _expect_end(text, skip(pos + 1), source, closer)
        return
    while True:
        pos = skip(pos)
        try:
            value, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise InputError(
                source, [Problem(f"{source}:{e.lineno}:{e.colno}", f"malformed JSON in tasks[{index}]: {e.msg}")]
            ) from e
        except (RecursionError, ValueError) as e:
            bad, msg = _undecodable(e, text, pos)
            raise InputError(source, [Problem(f"{source}:{_line_col(text, bad)}: tasks[{index}]", msg)]) from None
        at = line_at(pos)
        yield f"{source}:{at}: tasks[{index}]", at, value
        index += 1
        pos = skip(end)
        if pos < n and text[pos] == ",":
            pos += 1
            continue
        if pos < n and text[pos] == "]":
            _expect_end(text, skip(pos + 1), source, closer)
            return
        raise InputError(
            source, [Problem(f"{source}:{_line_col(text, pos)}", "malformed JSON: expected ',' or ']' after a task")]
        )


def _expect_end(text: str, pos: int, source: str, closer: str = "") -> None:
    if closer:
        if not text.startswith(closer, pos):
            raise InputError(
                source, [Problem(f"{source}:{_line_of(text, pos)}", f"malformed JSON: expected {closer!r}")]
            )
        pos += len(closer)
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
    if pos < len(text):
        raise InputError(
            source, [Problem(f"{source}:{_line_of(text, pos)}", "malformed JSON: extra data after the list")]
        )


def _wrapped_entries(text: str, source: str, tasks: list[Any]) -> list[tuple[str, int, Any]]:
    """The entries of {"tasks": [...]} with their lines where the plain layout allows finding them."""
    head = _TASKS_HEAD.match(text)
    if head:
        try:
            entries = list(_array_entries(text, source, head.end(), closer="}"))
        except InputError:
            entries = []
        if len(entries) == len(tasks):
            return [(f"{source}:{line}: tasks[{i}]", line, v) for i, (_w, line, v) in enumerate(entries)]
    return [(f"{source}: tasks[{i}]", 0, v) for i, v in enumerate(tasks)]


def _jsonl_entries(text: str, source: str) -> Iterator[tuple[str, int, Any]]:
    problems = []
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append((f"{source}:{lineno}", lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(Problem(f"{source}:{lineno}:{e.colno}", f"malformed JSON line: {e.msg}"))
        except (RecursionError, ValueError) as e:
            pos, msg = _undecodable(e, line, 0)
            problems.append(Problem(f"{source}:{lineno}:{pos + 1}", msg))
    if problems:
        raise InputError(source, problems)
    yield from entries


def _validate_all(entries: list[tuple[str, int, Any]], source: str, limits: Limits, form: str) -> Parsed:
    if not entries:
        raise InputError(source, [Problem(source, "the file has no tasks")])
    problems: list[Problem] = []
    tasks: list[Task] = []
    rejected: list[Rejection] = []
    seen: dict[str, str] = {}
    for where, _line, value in entries:
        try:
            task = to_task(value, where, limits)
        except _TaskProblems as e:
            problems.extend(e.problems)
            continue
        except _Unserved as e:
            if e.rejection.custom_id in seen:
                problems.append(Problem(where, f"duplicate custom_id {e.rejection.custom_id!r}"))
            seen[e.rejection.custom_id] = where
            rejected.append(e.rejection)
            continue
        if task.custom_id in seen:
            problems.append(
                Problem(
                    where,
                    f"duplicate custom_id {task.custom_id!r} (first at {seen[task.custom_id]}); "
                    "give each task its own custom_id",
                )
            )
            continue
        seen[task.custom_id] = where
        tasks.append(task)
    if problems:
        raise InputError(source, problems[:MAX_REPORTED], total=len(problems))
    return Parsed(tasks, rejected)


class _TaskProblems(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems


class _Unserved(Exception):
    """A well-formed OpenAI batch line for an endpoint jobctl does not serve."""

    def __init__(self, rejection: Rejection):
        self.rejection = rejection


def to_task(value: Any, where: str, limits: Limits) -> Task:
    if not isinstance(value, dict):
        raise _TaskProblems([Problem(where, f"a task must be a JSON object, not {_json_type(value)}")])
    cid = value.get("custom_id")
    if isinstance(cid, str) and cid:
        where = f"{where} ({cid[:60]!r})"
    # Values no later step can handle (too deep, unpaired surrogates, NaN, non-JSON Python objects)
    # are reported here, with their path, before they crash the checks below.
    bad_values = _check_values(value, where)
    if bad_values:
        raise _TaskProblems(bad_values)
    field = "input"
    batch_line = "body" in value or "url" in value or "method" in value
    if batch_line:
        value, field = _from_batch_line(value, where), "body"
    problems = []
    unknown = sorted(set(value) - TASK_FIELDS, key=str)
    for name in unknown:
        close = difflib.get_close_matches(str(name), TASK_FIELDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        problems.append(
            Problem(
                f"{where}: {name}",
                f"unknown field; {hint}a task has custom_id, kind, input and options (remove the others)",
            )
        )
    problems += _check_custom_id(cid, where)
    kind_name = value.get("kind")
    if kind_name is None:
        problems.append(Problem(f"{where}: kind", f"missing field 'kind'; add one of: {', '.join(KINDS)}"))
    elif not isinstance(kind_name, str) or kind_name not in KINDS:
        close = difflib.get_close_matches(str(kind_name), KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known kinds: {', '.join(KINDS)}"
        problems.append(Problem(f"{where}: kind", f"unknown kind {kind_name!r}{hint}"))
    if "input" not in value:
        problems.append(Problem(f"{where}: input", "missing field 'input'; add the task's input object"))
    options = value.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict):
        problems.append(Problem(f"{where}: options", f"must be an object, not {_json_type(options)}"))
    elif limits.options:
        options = {**limits.options, **options}
    if problems:
        raise _TaskProblems(problems)
    kind = KINDS[kind_name]
    data = _validate_model(kind.input_model, value["input"], f"{where}: {field}")
    opts = _validate_model(kind.options_model, options, f"{where}: options")
    assert isinstance(cid, str)  # _check_custom_id reported anything else
    task = Task(
        custom_id=cid, kind=kind_name, input=value["input"], options=options, origin=where, content_scoped=batch_line
    )
    size = len(task.to_json())
    if size > limits.max_task_bytes:
        raise _TaskProblems(
            [
                Problem(
                    where,
                    f"the task is {size:,} bytes, over the {limits.max_task_bytes:,}-byte "
                    "limit; shorten it or raise JOBCTL_MAX_TASK_BYTES",
                )
            ]
        )
    try:
        body = kind.request(data, opts, limits.style)
        need = estimate_tokens(body) + int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
    except Exception as e:  # a kind's own code failing on an input its model let through
        raise _TaskProblems(
            [
                Problem(
                    f"{where}: {field}",
                    f"cannot be turned into a request ({type(e).__name__}: "
                    f"{e}); check it against the {kind_name!r} kind's fields",
                )
            ]
        ) from e
    if need > limits.context_tokens:
        raise _TaskProblems(
            [
                Problem(
                    where,
                    f"the task needs about {need:,} tokens (prompt and max_tokens), more "
                    f"than the model's context of {limits.context_tokens:,} tokens; shorten the "
                    "input, lower max_tokens, or raise JOBCTL_CONTEXT_TOKENS",
                )
            ]
        )
    return task


def _validate_model(model: Any, value: Any, prefix: str) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise _TaskProblems(_pydantic_problems(e, prefix, model)) from e
    except Exception as e:  # a validator that fails on an unexpected shape instead of reporting it
        raise _TaskProblems(
            [Problem(prefix, f"has an unexpected shape ({type(e).__name__}: {e}); check its fields and their types")]
        ) from e


def _check_custom_id(cid: Any, where: str) -> list[Problem]:
    if cid is None:
        return [Problem(f"{where}: custom_id", "missing field 'custom_id'; give each task a unique custom_id string")]
    if not isinstance(cid, str):
        return [Problem(f"{where}: custom_id", f"must be a string, not {_json_type(cid)}")]
    if not cid.strip():
        return [Problem(f"{where}: custom_id", "must not be empty; give each task a unique custom_id")]
    if len(cid) > c.MAX_CUSTOM_ID_CHARS:
        return [
            Problem(
                f"{where}: custom_id",
                f"is {len(cid)} characters, over the limit of {c.MAX_CUSTOM_ID_CHARS}; shorten it",
            )
        ]
    if any(unicodedata.category(ch) == "Cc" for ch in cid):
        return [Problem(f"{where}: custom_id", "must not contain control characters (newlines, tabs...); remove them")]
    return []


def _check_values(value: Any, where: str) -> list[Problem]:
    """Values inside a task that are not plain JSON data, by path (depth-first, iterative)."""
    problems: list[Problem] = []

    def add(node: tuple[Any, Any] | None, message: str) -> None:
        parts = []
        while node is not None:
            node, key = node
            parts.append(str(key))
        path = ".".join(reversed(parts))
        path = path if len(path) <= 80 else path[:77] + "..."
        problems.append(Problem(f"{where}: {path}" if path else where, message))

    # Each entry: a value, its place as a (parent place, key) chain (None at the top), its depth.
    stack: list[tuple[Any, tuple[Any, Any] | None, int]] = [(value, None, 0)]
    while stack and len(problems) < 5:
        v, node, depth = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                add(node, "contains an unpaired UTF-16 surrogate (like \\ud800); fix the escape")
        elif isinstance(v, dict):
            if depth >= MAX_DEPTH:
                add(node, f"is nested more than {MAX_DEPTH} levels deep; flatten it")
                continue
            for k, child in reversed(v.items()):
                if not isinstance(k, str):
                    add(node, f"has a key {k!r} that is not a string; JSON keys are strings")
                    continue
                stack.append((child, (node, k), depth + 1))
                stack.append((k, (node, k), depth + 1))
        elif isinstance(v, list | tuple):
            if depth >= MAX_DEPTH:
                add(node, f"is nested more than {MAX_DEPTH} levels deep; flatten it")
                continue
            for i in range(len(v) - 1, -1, -1):
                stack.append((v[i], (node, i), depth + 1))
        elif isinstance(v, float):
            if not math.isfinite(v):
                add(node, "is NaN or infinite, which JSON does not allow; give a finite number")
        elif v is not None and not isinstance(v, int):
            add(node, f"holds a Python {type(v).__name__}, not a JSON value; use strings, numbers, lists and objects")
    return problems


def _from_batch_line(value: dict[str, Any], where: str) -> dict[str, Any]:
    problems = [
        Problem(f"{where}: {k}", f"unknown field in an OpenAI batch line; a line has {', '.join(BATCH_LINE_ORDER)}")
        for k in sorted(set(value) - BATCH_LINE_FIELDS, key=str)
    ]
    method = value.get("method")
    if method != "POST":
        problems.append(Problem(f"{where}: method", f'must be "POST", not {method!r}'))
    url = value.get("url")
    if not isinstance(url, str) or not url.startswith("/"):
        problems.append(Problem(f"{where}: url", 'must be an endpoint path such as "/v1/chat/completions"'))
    if not isinstance(value.get("body"), dict):
        problems.append(Problem(f"{where}: body", "must be a request object"))
    problems += _check_custom_id(value.get("custom_id"), where)
    if problems:
        raise _TaskProblems(problems)
    if url not in BATCH_URLS:
        # Like `vllm run-batch`: an error line for this request, the rest of the file still runs.
        raise _Unserved(
            Rejection(
                str(value["custom_id"]),
                UNSUPPORTED,
                f"{str(url)[:80]!r} is not served; jobctl runs /v1/chat/completions",
                where,
            )
        )
    return {"custom_id": value.get("custom_id"), "kind": "chat", "input": value["body"]}


def _pydantic_problems(e: ValidationError, prefix: str, model: Any = None) -> list[Problem]:
    out = []
    # The input is read for its JSON type only: a message never quotes task content.
    for err in e.errors(include_url=False, include_input=True):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or fix its spelling"
            fields = _field_names(model) if len(err["loc"]) == 1 else []
            close = difflib.get_close_matches(str(err["loc"][0]), fields, n=1) if fields else []
            if close:
                msg += f" (did you mean {close[0]!r}?)"
            elif fields:
                msg += f" (known fields: {', '.join(fields)})"
        elif err["type"] == "missing":
            msg = "missing required field; add it"
        elif err["type"].endswith(("_type", "_parsing")) and "input" in err:
            got = _json_type(err["input"])
            if got.split()[-1] not in msg:
                msg += f" (got {got})"
        out.append(Problem(f"{prefix}.{loc}" if loc else prefix, msg))
    return out


def _field_names(model: Any) -> list[str]:
    fields = getattr(model, "model_fields", None) or {}
    return [f.alias or name for name, f in fields.items()]


def _json_type(v: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
    }.get(type(v), type(v).__name__)


def parse_objects(values: list[Any], source: str = "tasks", limits: Limits | None = None) -> Parsed:
    """Validate tasks given as Python objects (the Python API), with the same rules as a file."""
    limits = limits or Limits()
    if not isinstance(values, list):
        raise InputError(source, [Problem(source, "expected a list of tasks")])
    entries = [(f"{source}[{i}]", 0, v) for i, v in enumerate(values)]
    return _validate_all(entries, source, limits, "tasks")


def validate_entries(entries: list[tuple[str, int, Any]], source: str, limits: Limits | None = None) -> Parsed:
    """Validate (where, line, task object) entries made by an importer, with the same rules as a file."""
    return _validate_all(entries, source, limits or Limits(), "tasks")


def check_task(task: Task, limits: Limits | None = None) -> None:
    """Check a task changed after submit (`retry --options`) with the submit's rules; raises InputError."""
    value = {"custom_id": task.custom_id, "kind": task.kind, "input": task.input, "options": task.options}
    try:
        to_task(value, f"task {task.custom_id!r}", limits or Limits())
    except _TaskProblems as e:
        raise InputError(f"task {task.custom_id!r}", e.problems) from None
