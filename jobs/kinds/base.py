"""What a task kind is: an input model, options, a prompt, and the output schema it must meet."""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from referencing.exceptions import Unresolvable

from jobs.errors import JobctlError
from jobs.kinds.schema_safety import UnsafeSchema, safe_validator


class OutputInvalid(JobctlError):
    """The model's answer is not valid JSON, or does not meet the task's schema."""


class Strict(BaseModel):
    """Unknown fields are errors, so a typo in a task file is caught at submit."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class NoOptions(Strict):
    pass


_HINTS: dict[tuple[str, int], tuple[dict[str, Any], str]] = {}


class Kind:
    """A task kind. Subclasses set the class attributes and `messages`."""

    name: ClassVar[str]
    input_model: ClassVar[type[BaseModel]]
    options_model: ClassVar[type[BaseModel]] = NoOptions
    output_model: ClassVar[type[BaseModel] | None] = None
    max_tokens: ClassVar[int] = 512
    system: ClassVar[str] = ""

    def messages(self, data: Any, options: Any) -> list[dict[str, str]]:
        raise NotImplementedError

    def output_schema(self, data: Any, options: Any) -> dict[str, Any] | None:
        if self.output_model is None:
            return None
        return _model_schema(self.output_model)

    def request(self, data: Any, options: Any, style: str) -> dict[str, Any]:
        """The chat body for this task, less `model`, which the worker sets."""
        schema = self.output_schema(data, options)
        msgs = self.messages(data, options)
        if schema is not None:
            # Small models follow a schema better when they can read it, as well as being held to it.
            msgs = [{"role": "system", "content": self._system_with(schema)}, *msgs]
        body: dict[str, Any] = {"messages": msgs, "max_tokens": getattr(options, "max_tokens", None) or self.max_tokens}
        temperature = getattr(options, "temperature", None)
        body["temperature"] = 0.0 if temperature is None else temperature
        if schema is not None:
            body["response_format"] = response_format(self.name, schema, style)
        return body

    def _system_with(self, schema: dict[str, Any]) -> str:
        # Schemas come from caches, so one dumps per schema object serves every task that uses it.
        key = (self.name, id(schema))
        cached = _HINTS.get(key)
        if cached is None or cached[0] is not schema:
            hint = "Answer with one JSON object that matches this JSON schema:\n" + json.dumps(schema)
            if len(_HINTS) > 512:
                _HINTS.clear()
            cached = _HINTS[key] = (schema, f"{self.system}\n\n{hint}".strip())
        return cached[1]

    def parse_output(self, content: str | None, data: Any, options: Any) -> Any:
        """The validated answer: a JSON value for typed kinds, None for free text."""
        schema = self.output_schema(data, options)
        if schema is None:
            return None
        return parse_json_output(content, schema)


@cache
def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


# llama.cpp turns maxLength into one nested grammar rule per character; past a few hundred its
# grammar parser gives up ("exceeds sane defaults") and the server went down. The answer is
# still checked against the full schema afterwards.
GRAMMAR_MAX_LENGTH = 300


def response_format(name: str, schema: dict[str, Any], style: str) -> dict[str, Any]:
    if style == "json_object":
        return {"type": "json_object", "schema": _grammar_safe(schema)}
    return {"type": "json_schema", "json_schema": {"name": name.replace(".", "_"), "schema": schema, "strict": True}}


def _grammar_safe(schema: Any) -> Any:
    cached = _GRAMMAR_SAFE.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    safe = _drop_long_limits(schema)
    if len(_GRAMMAR_SAFE) > 512:
        _GRAMMAR_SAFE.clear()
    _GRAMMAR_SAFE[id(schema)] = (schema, safe)
    return safe


def _drop_long_limits(node: Any) -> Any:
    if isinstance(node, list):
        return [_drop_long_limits(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _drop_long_limits(v) for k, v in node.items()}
    if isinstance(out.get("maxLength"), int) and out["maxLength"] > GRAMMAR_MAX_LENGTH:
        del out["maxLength"]
    return out


_GRAMMAR_SAFE: dict[int, tuple[Any, Any]] = {}


# Far above any answer max_tokens allows (131,072 tokens of a few characters each), and a bound on
# the work one answer can cost: decoding and validating are linear in its size.
MAX_ANSWER_CHARS = 4_000_000


def parse_json_output(content: Any, schema: dict[str, Any]) -> Any:
    """The answer decoded and checked against the schema; OutputInvalid for anything else.

    Never raises anything but OutputInvalid, whatever the answer: a content list, 100k nested
    brackets (RecursionError), a 5,000-digit integer (ValueError), megabytes of text.
    """
    if not content:
        raise OutputInvalid("the answer was empty")
    if not isinstance(content, str):
        raise OutputInvalid(f"the answer's content is a JSON {_json_type(content)}, not text")
    if len(content) > MAX_ANSWER_CHARS:
        raise OutputInvalid(f"the answer is {len(content)} characters long; at most {MAX_ANSWER_CHARS} are checked")
    try:
        value = json.loads(content)
    except json.JSONDecodeError as e:
        raise OutputInvalid(f"the answer is not valid JSON ({e.msg} at char {e.pos})") from e
    except RecursionError as e:
        raise OutputInvalid("the answer's JSON is nested too deeply to decode") from e
    except ValueError as e:  # integers past Python's 4,300-digit conversion limit
        raise OutputInvalid("the answer's JSON holds a number too long to decode") from e
    validator = _validator(schema)
    try:
        if validator.is_valid(value):
            return value
        errors = sorted(validator.iter_errors(value), key=lambda err: list(err.path))
    except RecursionError as e:
        raise OutputInvalid("the answer is nested too deeply to check against the schema") from e
    except Unresolvable as e:
        # Tasks queued before submit checked references: the registry refused, nothing was fetched.
        raise OutputInvalid(
            "the task's schema has a reference that cannot be resolved inside it (only local #... references "
            "are followed); fix the schema and submit again"
        ) from e
    except UnsafeSchema as e:
        raise _unsafe(e) from e
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        # The validator's message quotes the value; keep it out, since answers are private.
        raise OutputInvalid(f"the answer does not meet the schema at {where}: {err.validator} {err.validator_value!r}")
    return value


def _unsafe(e: UnsafeSchema) -> OutputInvalid:
    # The place only: the reason can quote part of the schema, which is the user's own content.
    return OutputInvalid(
        f"the task's schema cannot be run safely (at {e.where or '(root)'}); submit it again to see why"
    )


def _json_type(v: Any) -> str:
    return {list: "array", dict: "object", bool: "boolean", int: "number", float: "number"}.get(type(v), "value")


_VALIDATORS: dict[int, tuple[dict[str, Any], Any]] = {}
_VALIDATORS_BY_TEXT: dict[str, Any] = {}


def _validator(schema: dict[str, Any]) -> Any:
    # Building a validator costs far more than using one, and a drain checks thousands of answers
    # per schema. Cached schema objects hit by identity; per-task schemas (extract) by their text.
    hit = _VALIDATORS.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    key = json.dumps(schema, sort_keys=True)
    v = _VALIDATORS_BY_TEXT.get(key)
    if v is None:
        if len(_VALIDATORS_BY_TEXT) > 512:
            _VALIDATORS_BY_TEXT.clear()
            _VALIDATORS.clear()
        try:
            # Checked again here, not only at submit: tasks queued by older versions were not.
            v = safe_validator(schema)
        except UnsafeSchema as e:
            raise _unsafe(e) from e
        _VALIDATORS_BY_TEXT[key] = v
    _VALIDATORS[id(schema)] = (schema, v)
    return v


# Validation runs on its own threads: a slow one never holds the drain's event loop (or its signal
# handling), and never queues behind the default executor's other work. One pool per process: a
# pool inherited through fork() believes in threads the child does not have, and would never run.
_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _validation_pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (
            os.getpid(),
            ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="jobctl-validate"),
        )
    return _POOL[1]


async def validate_in_thread(content: Any, schema: dict[str, Any] | None, timeout: float) -> Any:
    """parse_json_output off the event loop, within `timeout` seconds (else OutputInvalid).

    None for a free-text task (no schema). A validation that runs late is abandoned, not killed
    (a thread cannot be); RE2 and MAX_ANSWER_CHARS keep each one bounded.
    """
    if schema is None:
        return None
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(_validation_pool(), _parse_in_thread, content, schema)
    try:
        return await asyncio.wait_for(fut, timeout)
    except TimeoutError as e:
        raise OutputInvalid(f"checking the answer against the schema ran past its {timeout:g}s time limit") from e


def _parse_in_thread(content: Any, schema: dict[str, Any]) -> Any:
    # Looked up at call time, so tests can stand in a slow parser.
    return parse_json_output(content, schema)


def estimate_tokens(body: dict[str, Any]) -> int:
    """A conservative token count for a request: about 3 bytes per token for mixed text."""
    text = "".join(str(m.get("content", "")) for m in body.get("messages", []))
    return len(text.encode()) // 3 + 8 * len(body.get("messages", []))
