"""Reading task files: our JSON (a list of tasks, or {"tasks": [...]}) and OpenAI Batch JSONL.

The format is told apart from the content. Every problem is reported with its place
(file, line, index, field), all of them at once up to a limit, and a file with any problem
yields no tasks at all: submit is all or nothing.
"""

from __future__ import annotations

import difflib
import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from jobs import constants as c
from jobs.errors import JobctlError
from jobs.kinds import KINDS
from jobs.kinds.base import estimate_tokens
from jobs.tasks import Task

MAX_REPORTED = 20
TASK_FIELDS = {"custom_id", "kind", "input", "options"}
BATCH_LINE_FIELDS = {"custom_id", "method", "url", "body"}
BATCH_URLS = ("/v1/chat/completions",)


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


def parse_bytes(raw: bytes, source: str = "<stdin>", limits: Limits | None = None) -> list[Task]:
    limits = limits or Limits()
    text = decode(raw, source, limits)
    stripped = text.lstrip()
    if not stripped:
        raise InputError(source, [Problem(source, "the file is empty; give a JSON list of tasks or OpenAI batch JSONL")])
    if stripped[0] == "[":
        entries = list(_array_entries(text, source))
        return _validate_all(entries, source, limits, "tasks")
    if stripped[0] != "{":
        line = _line_of(text, len(text) - len(stripped))
        raise InputError(
            source,
            [Problem(f"{source}:{line}", "expected a JSON list of tasks, an object with \"tasks\", or JSONL lines")],
        )
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg.startswith("Extra data"):
            return _validate_all(list(_jsonl_entries(text, source)), source, limits, "line")
        raise InputError(source, [Problem(f"{source}:{e.lineno}:{e.colno}", f"malformed JSON: {e.msg}")]) from e
    if isinstance(whole, dict) and "tasks" in whole:
        extra = sorted(set(whole) - {"tasks"})
        if extra:
            raise InputError(source, [Problem(source, f"unknown top-level field {extra[0]!r}; only \"tasks\" is allowed")])
        if not isinstance(whole["tasks"], list):
            raise InputError(source, [Problem(f"{source}: tasks", "must be a list of tasks")])
        first_line = _line_of(text, text.find("[", text.find('"tasks"')))
        entries = [(f"{source}: tasks[{i}]", first_line, v) for i, v in enumerate(whole["tasks"])]
        return _validate_all(entries, source, limits, "tasks")
    # A single JSON object: one line of JSONL.
    return _validate_all(list(_jsonl_entries(text, source)), source, limits, "line")


def decode(raw: bytes, source: str, limits: Limits) -> str:
    if len(raw) > limits.max_file_bytes:
        mb = len(raw) / 1e6
        raise InputError(
            source,
            [Problem(source, f"the file is {mb:.1f} MB, over the {limits.max_file_bytes // (1024 * 1024)} MiB limit; "
                     "split it into smaller files (or raise JOBCTL_MAX_FILE_BYTES)")],
        )
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(source, [Problem(source, "the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8")])
    if b"\x00" in raw[:65536]:
        raise InputError(source, [Problem(source, "the file looks binary (it contains NUL bytes); give a JSON or JSONL text file")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError(
            source,
            [Problem(f"{source}:{line}:{col}", f"the file is not valid UTF-8 (byte 0x{raw[e.start]:02x}); save it as UTF-8")],
        ) from e


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, max(pos, 0)) + 1


def _array_entries(text: str, source: str) -> Iterator[tuple[str, int, Any]]:
    """Each element of a top-level JSON array with the line it starts on."""
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    n = len(text)
    index = 0

    def skip(p: int) -> int:
        while p < n and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip(pos)
    if pos < n and text[pos] == "]":
        _expect_end(text, skip(pos + 1), source)
        return
    while True:
        pos = skip(pos)
        try:
            value, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise InputError(source, [Problem(f"{source}:{e.lineno}:{e.colno}", f"malformed JSON in tasks[{index}]: {e.msg}")]) from e
        yield f"{source}:{_line_of(text, pos)}: tasks[{index}]", _line_of(text, pos), value
        index += 1
        pos = skip(end)
        if pos < n and text[pos] == ",":
            pos += 1
            continue
        if pos < n and text[pos] == "]":
            _expect_end(text, skip(pos + 1), source)
            return
        line = _line_of(text, pos)
        raise InputError(source, [Problem(f"{source}:{line}", "malformed JSON: expected ',' or ']' after a task")])


def _expect_end(text: str, pos: int, source: str) -> None:
    if pos < len(text):
        raise InputError(source, [Problem(f"{source}:{_line_of(text, pos)}", "malformed JSON: extra data after the list")])


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
    if problems:
        raise InputError(source, problems)
    yield from entries


def _validate_all(entries: list[tuple[str, int, Any]], source: str, limits: Limits, form: str) -> list[Task]:
    if not entries:
        raise InputError(source, [Problem(source, "the file has no tasks")])
    problems: list[Problem] = []
    tasks: list[Task] = []
    seen: dict[str, str] = {}
    for where, _line, value in entries:
        try:
            task = to_task(value, where, limits)
        except _TaskProblems as e:
            problems.extend(e.problems)
            continue
        if task.custom_id in seen:
            problems.append(Problem(where, f"duplicate custom_id {task.custom_id!r} (first at {seen[task.custom_id]})"))
            continue
        seen[task.custom_id] = where
        tasks.append(task)
    if problems:
        raise InputError(source, problems[:MAX_REPORTED], total=len(problems))
    return tasks


class _TaskProblems(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems


def to_task(value: Any, where: str, limits: Limits) -> Task:
    if not isinstance(value, dict):
        raise _TaskProblems([Problem(where, f"a task must be a JSON object, not {_json_type(value)}")])
    if "body" in value or "url" in value or "method" in value:
        value = _from_batch_line(value, where)
    cid = value.get("custom_id")
    if isinstance(cid, str) and cid:
        where = f"{where} ({cid[:60]!r})"
    problems = []
    unknown = sorted(set(value) - TASK_FIELDS)
    for name in unknown:
        problems.append(Problem(where, f"unknown field {name!r}; a task has custom_id, kind, input and options"))
    problems += _check_custom_id(cid, where)
    kind_name = value.get("kind")
    if kind_name is None:
        problems.append(Problem(where, "missing field 'kind'"))
    elif not isinstance(kind_name, str) or kind_name not in KINDS:
        close = difflib.get_close_matches(str(kind_name), KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known kinds: {', '.join(KINDS)}"
        problems.append(Problem(f"{where}: kind", f"unknown kind {kind_name!r}{hint}"))
    if "input" not in value:
        problems.append(Problem(where, "missing field 'input'"))
    options = value.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict):
        problems.append(Problem(f"{where}: options", f"must be an object, not {_json_type(options)}"))
    if problems:
        raise _TaskProblems(problems)
    kind = KINDS[kind_name]
    try:
        data = kind.input_model.model_validate(value["input"])
    except ValidationError as e:
        raise _TaskProblems(_pydantic_problems(e, f"{where}: input")) from e
    try:
        opts = kind.options_model.model_validate(options)
    except ValidationError as e:
        raise _TaskProblems(_pydantic_problems(e, f"{where}: options")) from e
    task = Task(custom_id=cid, kind=kind_name, input=value["input"], options=options, origin=where)
    size = len(task.to_json())
    if size > limits.max_task_bytes:
        raise _TaskProblems([Problem(where, f"the task is {size:,} bytes, over the {limits.max_task_bytes:,}-byte limit "
                                     "(JOBCTL_MAX_TASK_BYTES)")])
    body = kind.request(data, opts, limits.style)
    need = estimate_tokens(body) + int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
    if need > limits.context_tokens:
        raise _TaskProblems([Problem(where, f"the task needs about {need:,} tokens (prompt and max_tokens), more than the "
                                     f"model's context of {limits.context_tokens:,} (JOBCTL_CONTEXT_TOKENS); shorten the input")])
    return task


def _check_custom_id(cid: Any, where: str) -> list[Problem]:
    if cid is None:
        return [Problem(where, "missing field 'custom_id'")]
    if not isinstance(cid, str):
        return [Problem(f"{where}: custom_id", f"must be a string, not {_json_type(cid)}")]
    if not cid.strip():
        return [Problem(f"{where}: custom_id", "must not be empty")]
    if len(cid) > c.MAX_CUSTOM_ID_CHARS:
        return [Problem(f"{where}: custom_id", f"is {len(cid)} characters, over the limit of {c.MAX_CUSTOM_ID_CHARS}")]
    if any(unicodedata.category(ch) == "Cc" for ch in cid):
        return [Problem(f"{where}: custom_id", "must not contain control characters")]
    return []


def _from_batch_line(value: dict[str, Any], where: str) -> dict[str, Any]:
    problems = [Problem(where, f"unknown field {k!r} in an OpenAI batch line") for k in sorted(set(value) - BATCH_LINE_FIELDS)]
    method = value.get("method")
    if method != "POST":
        problems.append(Problem(f"{where}: method", f"must be \"POST\", not {method!r}"))
    url = value.get("url")
    if url not in BATCH_URLS:
        problems.append(Problem(f"{where}: url", f"{url!r} is not supported; jobctl runs \"/v1/chat/completions\""))
    if not isinstance(value.get("body"), dict):
        problems.append(Problem(f"{where}: body", "must be a chat completions request object"))
    if problems:
        raise _TaskProblems(problems)
    return {"custom_id": value.get("custom_id"), "kind": "chat", "input": value["body"]}


def _pydantic_problems(e: ValidationError, prefix: str) -> list[Problem]:
    out = []
    for err in e.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append(Problem(f"{prefix}.{loc}" if loc else prefix, msg))
    return out


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def parse_objects(values: list[Any], source: str = "tasks", limits: Limits | None = None) -> list[Task]:
    """Validate tasks given as Python objects (the Python API), with the same rules as a file."""
    limits = limits or Limits()
    if not isinstance(values, list):
        raise InputError(source, [Problem(source, "expected a list of tasks")])
    entries = [(f"{source}[{i}]", 0, v) for i, v in enumerate(values)]
    return _validate_all(entries, source, limits, "tasks")
