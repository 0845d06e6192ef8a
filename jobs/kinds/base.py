"""What a task kind is: an input model, options, a prompt, and the output schema it must meet."""

from __future__ import annotations

import json
from functools import lru_cache
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
            hint = "Answer with one JSON object that matches this JSON schema:\n" + json.dumps(schema)
            msgs = [{"role": "system", "content": f"{self.system}\n\n{hint}".strip()}, *msgs]
        body: dict[str, Any] = {"messages": msgs, "max_tokens": getattr(options, "max_tokens", None) or self.max_tokens}
        temperature = getattr(options, "temperature", None)
        body["temperature"] = 0.0 if temperature is None else temperature
        if schema is not None:
            body["response_format"] = response_format(self.name, schema, style)
        return body

    def parse_output(self, content: str | None, data: Any, options: Any) -> Any:
        """The validated answer: a JSON value for typed kinds, None for free text."""
        schema = self.output_schema(data, options)
        if schema is None:
            return None
        return parse_json_output(content, schema)


@lru_cache(maxsize=None)
def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def response_format(name: str, schema: dict[str, Any], style: str) -> dict[str, Any]:
    if style == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": name.replace(".", "_"), "schema": schema, "strict": True}}


def parse_json_output(content: str | None, schema: dict[str, Any]) -> Any:
    if not content:
        raise OutputInvalid("the answer was empty")
    try:
        value = json.loads(content)
    except json.JSONDecodeError as e:
        raise OutputInvalid(f"the answer is not valid JSON ({e.msg} at char {e.pos})") from e
    errors = sorted(_validator(schema).iter_errors(value), key=lambda err: list(err.path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        # The validator's message quotes the value; keep it out, since answers are private.
        raise OutputInvalid(f"the answer does not meet the schema at {where}: {err.validator} {err.validator_value!r}")
    return value


_VALIDATORS: dict[str, Any] = {}


def _validator(schema: dict[str, Any]) -> Any:
    # Building a validator costs far more than using one; a drain checks thousands of answers per schema.
    key = json.dumps(schema, sort_keys=True)
    v = _VALIDATORS.get(key)
    if v is None:
        if len(_VALIDATORS) > 512:
            _VALIDATORS.clear()
        v = _VALIDATORS[key] = jsonschema.Draft202012Validator(schema)
    return v


def estimate_tokens(body: dict[str, Any]) -> int:
    """A conservative token count for a request: about 3 bytes per token for mixed text."""
    text = "".join(str(m.get("content", "")) for m in body.get("messages", []))
    text += json.dumps(body.get("response_format", ""))
    return len(text.encode()) // 3 + 8 * len(body.get("messages", []))
