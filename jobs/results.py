"""Result records: what the worker encrypts into RQ's results stream, and the OpenAI Batch
output lines that `jobctl results` writes from them.

A success is stored as RQ's return value: a ciphertext of
`{"custom_id", "status_code", "request_id", "body", "attempts"}`. A failure is RQ's
exc_string: `jobctl <code>\\n<ciphertext of {"custom_id", "code", "message", "attempts"}>`,
so `rq info` shows the error code and nothing private.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from jobs import keys
from jobs.crypto import Cipher

FAILURE_PREFIX = "jobctl "

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
ABANDONED = "abandoned"
UNREADABLE = "unreadable"


MESSAGES = {
    ABANDONED: "the workers running this task stopped (killed or lost) too many times; `jobctl retry` re-queues it",
}


def seal_success(cipher: Cipher, jid: str, record: dict[str, Any]) -> str:
    return cipher.encrypt(json.dumps(record, separators=(",", ":")).encode(), keys.result_context(jid))


def seal_failure(cipher: Cipher, jid: str, record: dict[str, Any]) -> str:
    token = cipher.encrypt(json.dumps(record, separators=(",", ":")).encode(), keys.result_context(jid))
    return f"{FAILURE_PREFIX}{record['code']}\n{token}"


_SEALED = re.compile(r"jobctl (\w+)\n(jc1\.\S+|-)")


def failure_code(exc_string: str | None) -> str:
    m = _SEALED.search(exc_string or "")
    return m.group(1) if m else UNREADABLE


@dataclass
class Outcome:
    """One task's end, decrypted: a batch output line."""

    job_id: str
    custom_id: str
    ok: bool
    status_code: int | None
    body: dict[str, Any] | None
    error: dict[str, str] | None
    request_id: str | None = None

    def line(self) -> dict[str, Any]:
        response = None
        if self.status_code is not None:
            response = {"status_code": self.status_code, "request_id": self.request_id or "", "body": self.body}
        return {
            "id": f"batch_req_{self.job_id}",
            "custom_id": self.custom_id,
            "response": response,
            "error": self.error,
        }


def open_success(cipher: Cipher, jid: str, token: str) -> Outcome:
    rec = json.loads(cipher.decrypt(token, keys.result_context(jid)))
    return Outcome(
        jid, rec["custom_id"], True, rec.get("status_code", 200), rec.get("body"), None, rec.get("request_id")
    )


def open_failure(cipher: Cipher, jid: str, exc_string: str) -> Outcome:
    # A plain `rq worker` stores a traceback whose last line carries the sealed record.
    m = _SEALED.search(exc_string or "")
    if not m:
        # Not written by jobctl (e.g. RQ's own abandoned-job handling): report its last line.
        last = (exc_string or "").strip().splitlines()[-1:] or [""]
        return Outcome(jid, "", False, None, None, {"code": UNREADABLE, "message": last[0][-300:]})
    code, token = m.group(1), m.group(2)
    if token == "-":
        return Outcome(jid, "", False, None, None, {"code": code, "message": MESSAGES.get(code, code)})
    rec = json.loads(cipher.decrypt(token, keys.result_context(jid)))
    status = rec.get("status_code")
    return Outcome(
        jid,
        rec.get("custom_id", ""),
        False,
        status,
        rec.get("body"),
        {"code": rec["code"], "message": rec.get("message", "")},
    )
