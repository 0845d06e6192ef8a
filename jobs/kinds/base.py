"""What a task kind is: an input model, options, a prompt, and the output schema it must meet."""

from __future__ import annotations

import json
from functools import cache
from typing import Any, ClassVar

import jsonschema
from pydantic import BaseModel, ConfigDict

from jobs.errors import JobctlError


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


def parse_json_output(content: str | None, schema: dict[str, Any]) -> Any:
    if not content:
        raise OutputInvalid("the answer was empty")
    try:
        value = json.loads(content)
    except json.JSONDecodeError as e:
        raise OutputInvalid(f"the answer is not valid JSON ({e.msg} at char {e.pos})") from e
    validator = _validator(schema)
    if validator.is_valid(value):
        return value
    errors = sorted(validator.iter_errors(value), key=lambda err: list(err.path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        # The validator's message quotes the value; keep it out, since answers are private.
        raise OutputInvalid(f"the answer does not meet the schema at {where}: {err.validator} {err.validator_value!r}")
    return value


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
        v = _VALIDATORS_BY_TEXT[key] = jsonschema.Draft202012Validator(schema)
    _VALIDATORS[id(schema)] = (schema, v)
    return v


def estimate_tokens(body: dict[str, Any]) -> int:
    """A conservative token count for a request: about 3 bytes per token for mixed text."""
    text = "".join(str(m.get("content", "")) for m in body.get("messages", []))
    return len(text.encode()) // 3 + 8 * len(body.get("messages", []))
