"""A task: one unit of work with a custom_id, a kind, its input and options."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jobs.kinds import KINDS, Kind


@dataclass
class Task:
    custom_id: str
    kind: str
    input: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    # Where it came from, for error messages: "inbox.json:12".
    origin: str = ""
    # OpenAI batch lines: their custom_ids are unique within one file only (as at OpenAI), so the same
    # custom_id with other content in another file is another task, not a conflict.
    content_scoped: bool = False

    def canonical(self) -> str:
        """The content that identifies a task for de-duplication (custom_id excluded)."""
        return json.dumps({"kind": self.kind, "input": self.input, "options": self.options}, sort_keys=True)

    def to_json(self) -> bytes:
        return json.dumps(
            {"custom_id": self.custom_id, "kind": self.kind, "input": self.input, "options": self.options},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Task:
        d = json.loads(raw)
        return cls(custom_id=d["custom_id"], kind=d["kind"], input=d["input"], options=d.get("options") or {})

    @property
    def kind_impl(self) -> Kind:
        return KINDS[self.kind]

    def build(self, style: str) -> tuple[Any, Any, dict[str, Any]]:
        """The validated input, options and the chat body (less `model`)."""
        kind = self.kind_impl
        data = kind.input_model.model_validate(self.input)
        options = kind.options_model.model_validate(self.options)
        return data, options, kind.request(data, options, style)


@dataclass(frozen=True)
class Rejection:
    """A line of an OpenAI batch file that jobctl does not serve (an embeddings or responses request, say).
    Like `vllm run-batch`, it gets an error line of its own in the batch's errors instead of refusing
    the whole file."""

    custom_id: str
    code: str
    message: str
    origin: str = ""
