"""Kinds that carry the user's own request: `chat` (a raw OpenAI chat body) and `extract`
(the user's own JSON schema over free text)."""

from __future__ import annotations

from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobs.kinds.base import Kind, Strict, parse_json_output, response_format
from jobs.kinds.email import Common
from jobs.kinds.schema_safety import UnsafeSchema, check_safe

# Fields of a chat body that would break a batch drain or leak elsewhere.
FORBIDDEN_CHAT_FIELDS = ("stream", "n", "tools", "functions")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(pattern="^(system|user|assistant|tool|developer)$")
    content: Any = None


class ChatBody(BaseModel):
    """An OpenAI chat.completions body. Fields beyond these pass through to the server."""

    model_config = ConfigDict(extra="allow")
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=131072)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=131072)
    response_format: dict[str, Any] | None = None

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        kind = v.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise ValueError("type must be text, json_object or json_schema")
        if kind == "json_schema":
            spec = v.get("json_schema")
            if not isinstance(spec, dict):
                raise ValueError('json_schema must be an object with a "schema"')
            schema = spec.get("schema")
            if not isinstance(schema, dict):
                raise ValueError("json_schema.schema must be an object")
            check_schema(schema, "json_schema.schema")
        return v


def check_schema(schema: dict[str, Any], field: str = "") -> None:
    """Refuse, with its place, a schema that is invalid or that a worker must not run (see schema_safety).
    `field` is where the schema sits in the task's input, for chat's nested json_schema.schema."""
    try:
        check_safe(schema)
    except UnsafeSchema as e:
        raise ValueError(f"not a safe JSON schema at {_place(field, e.where)}: {e.reason}") from e
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.path)
        raise ValueError(f"not a valid JSON schema at {_place(field, where)}: {e.message}") from e
    if schema.get("type") not in (None, "object"):
        raise ValueError('the schema\'s top level must be an object ("type": "object")')


def _place(field: str, where: str) -> str:
    where = "" if where == "(root)" else where
    return "/".join(p for p in (field, where) if p) or "(root)"


class ChatOptions(Strict):
    """What jobctl may change in a raw chat body: room to answer (`jobctl retry --options`)."""

    max_tokens: int | None = Field(default=None, ge=1, le=131072)


class Chat(Kind):
    name = "chat"
    input_model = ChatBody
    options_model = ChatOptions
    max_tokens = 1024

    def request(self, data: Any, options: Any, style: str) -> dict[str, Any]:
        body = data.model_dump(exclude_none=True)
        body.pop("model", None)
        for f in FORBIDDEN_CHAT_FIELDS:
            body.pop(f, None)
        if getattr(options, "max_tokens", None):
            # An answer cut off at max_tokens says to raise it: the options' value wins over the body's.
            body.pop("max_completion_tokens", None)
            body["max_tokens"] = options.max_tokens
        elif "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = self.max_tokens
        return body

    def schema_of(self, data: Any) -> dict[str, Any] | None:
        fmt = data.response_format or {}
        if fmt.get("type") == "json_schema":
            schema: dict[str, Any] = fmt["json_schema"]["schema"]
            return schema
        return None

    def output_schema(self, data: Any, options: Any) -> dict[str, Any] | None:
        return self.schema_of(data)

    def parse_output(self, content: str | None, data: Any, options: Any) -> Any:
        schema = self.schema_of(data)
        if schema is not None:
            return parse_json_output(content, schema)
        return None


class ExtractInput(Strict):
    text: str = Field(min_length=1, max_length=500_000)
    schema_: dict[str, Any] = Field(alias="schema")
    instructions: str | None = Field(default=None, max_length=4000)

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_schema(v)
        return v


class ExtractKind(Kind):
    name = "extract"
    input_model = ExtractInput
    options_model = Common
    max_tokens = 1024
    system = "You extract structured data from the user's text. Use only what the text says."

    def output_schema(self, data: Any, options: Any) -> dict[str, Any]:
        schema: dict[str, Any] = data.schema_
        return schema

    def messages(self, data: Any, options: Any) -> list[dict[str, str]]:
        ask = data.instructions or "Extract the data the schema asks for."
        return [{"role": "user", "content": f"{ask}\n\n{data.text}"}]


__all__ = ["Chat", "Common", "ExtractKind", "Strict", "response_format"]
