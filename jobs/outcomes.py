"""What became of a task, typed end to end.

A worker's `run_task` returns a `Success` or a `Failure`; the store seals that into RQ's results
stream; `jobctl results` opens it again into an `Outcome` (one line of OpenAI Batch output).
Nothing on the way is a loose dict, and nothing is parsed back out of a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Error codes, stable for scripts that read the errors file.
SERVER_ERROR = "server_error"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
RATE_LIMITED = "rate_limited"
BAD_REQUEST = "bad_request"
CONTEXT_TOO_LONG = "context_length_exceeded"
LENGTH = "max_tokens_reached"
INVALID_OUTPUT = "invalid_output"
INVALID_TASK = "invalid_task"
UNSUPPORTED = "unsupported_endpoint"
ABANDONED = "abandoned"
WORKER_ERROR = "worker_error"
UNREADABLE = "unreadable"
# What `results` reports when what Redis holds does not check out (docs/SECURITY.md).
MISSING = "missing"
TAMPERED = "tampered"
REPLAYED = "replayed"

INTEGRITY_CODES = (MISSING, TAMPERED, REPLAYED)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)


@dataclass(frozen=True)
class Success:
    """A chat completion that passed its checks. `body` is the completion, with `parsed` added for typed kinds."""

    custom_id: str
    body: dict[str, Any] = field(repr=False)  # the answer: never in a repr (RQ logs `result: %r`)
    request_id: str = ""
    attempts: int = 1
    usage: Usage = field(default_factory=Usage)

    ok = True

    def record(self) -> dict[str, Any]:
        return {
            "custom_id": self.custom_id,
            "request_id": self.request_id,
            "body": self.body,
            "attempts": self.attempts,
            "usage": [self.usage.prompt_tokens, self.usage.completion_tokens],
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Success:
        p, c = rec.get("usage") or (0, 0)
        return cls(
            str(rec["custom_id"]), rec["body"], str(rec.get("request_id") or ""), int(rec["attempts"]), Usage(p, c)
        )


@dataclass(frozen=True)
class Failure:
    """A task that ended without a usable answer: a stable `code` and a message that quotes no content."""

    custom_id: str
    code: str
    message: str
    attempts: int = 0
    status_code: int | None = None
    body: dict[str, Any] | None = field(default=None, repr=False)
    usage: Usage = field(default_factory=Usage)

    ok = False

    def record(self) -> dict[str, Any]:
        return {
            "custom_id": self.custom_id,
            "code": self.code,
            "message": self.message,
            "attempts": self.attempts,
            "status_code": self.status_code,
            "body": self.body,
            "usage": [self.usage.prompt_tokens, self.usage.completion_tokens],
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Failure:
        p, c = rec.get("usage") or (0, 0)
        return cls(
            str(rec["custom_id"]),
            str(rec["code"]),
            str(rec.get("message") or ""),
            int(rec.get("attempts") or 0),
            rec.get("status_code"),
            rec.get("body"),
            Usage(p, c),
        )


TaskResult = Success | Failure


@dataclass
class Outcome:
    """One task's end as `jobctl results` reads it back: a batch output line, plus the task's input.

    `error` is None for a success; else {"code", "message"}. `input` is the task's input (decrypted),
    None when it could not be read. `parsed` is the validated answer of typed kinds.
    """

    job_id: str
    custom_id: str
    ok: bool
    status_code: int | None
    body: dict[str, Any] | None = field(repr=False)
    error: dict[str, str] | None
    request_id: str | None = None
    kind: str = ""
    input: dict[str, Any] | None = field(default=None, repr=False)
    attempts: int = 0
    usage: Usage = field(default_factory=Usage)

    @property
    def parsed(self) -> Any:
        """The validated JSON answer of a typed kind (or a `chat` task with a json_schema), else None."""
        if not self.ok or not self.body:
            return None
        try:
            return self.body["choices"][0]["message"].get("parsed")
        except (KeyError, IndexError, TypeError, AttributeError):
            return None

    @property
    def content(self) -> str | None:
        """The answer's text."""
        try:
            content = self.body["choices"][0]["message"].get("content") if self.body else None
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return content if isinstance(content, str) else None

    def line(self) -> dict[str, Any]:
        """The OpenAI Batch output line."""
        response = None
        if self.status_code is not None:
            response = {"status_code": self.status_code, "request_id": self.request_id or "", "body": self.body}
        return {
            "id": f"batch_req_{self.job_id}",
            "custom_id": self.custom_id,
            "response": response,
            "error": self.error,
        }

    @classmethod
    def of(cls, job_id: str, result: TaskResult, kind: str = "", input: dict[str, Any] | None = None) -> Outcome:
        if isinstance(result, Success):
            return cls(
                job_id,
                result.custom_id,
                True,
                200,
                result.body,
                None,
                result.request_id,
                kind,
                input,
                result.attempts,
                result.usage,
            )
        return cls(
            job_id,
            result.custom_id,
            False,
            result.status_code,
            result.body,
            {"code": result.code, "message": result.message},
            None,
            kind,
            input,
            result.attempts,
            result.usage,
        )

    @classmethod
    def problem(cls, job_id: str, custom_id: str, code: str, message: str, kind: str = "") -> Outcome:
        """An outcome that is not a task's own: missing, tampered or replayed data, or an unsealed RQ failure."""
        return cls(job_id, custom_id, False, None, None, {"code": code, "message": message}, None, kind)
