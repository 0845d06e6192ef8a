"""What jobctl seals into Redis, and the context each seal is bound to.

Every value jobctl stores is AES-GCM sealed with associated data that says what it claims to be,
so a value moved to another place, another job, another batch or another role fails to open:

    payload   task:{job id}:{batch}:{fingerprint}      the task (custom_id, kind, input, options)
    success   result:success:{job id}                   a Success record (its fingerprint inside)
    failure   result:failure:{job id}                   a Failure record (its fingerprint inside)
    header    batch:{batch}                              name, metadata, total, chunk count
    manifest  manifest:{batch}:{index}/{chunks}          a chunk of the batch's members

Job ids and fingerprints are keyed MACs: they reveal nothing of a custom_id or of content without
the key. A fingerprint is keyed by the batch that created the job too, so equal content in two
batches is not linkable; a later submit recomputes it under the existing job's batch to compare.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jobs.crypto import Cipher, DecryptError
from jobs.outcomes import Failure, Success, TaskResult
from jobs.tasks import Task

JOB_ID_PREFIX = "jc"


def job_id(cipher: Cipher, queue: str, task: Task) -> str:
    """Stable for (queue, kind, custom_id), so a re-submit finds the same job. OpenAI batch lines are scoped by
    their content too: their custom_ids are unique within a file only, as at OpenAI."""
    parts = [queue, task.kind, task.custom_id]
    if task.content_scoped:
        parts.append(cipher.mac("content-scope", task.canonical()))
    return JOB_ID_PREFIX + cipher.mac("job", *parts)[:30]


def fingerprint(cipher: Cipher, queue: str, batch_id: str, canonical: str) -> str:
    return cipher.mac("content", queue, batch_id, canonical)[:32]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# -- payloads --------------------------------------------------------------------------------------


def payload_context(jid: str, batch_id: str, fp: str) -> str:
    return f"task:{jid}:{batch_id}:{fp}"


def seal_payload(cipher: Cipher, jid: str, batch_id: str, fp: str, task: Task) -> str:
    return cipher.encrypt(task.to_json(), payload_context(jid, batch_id, fp))


def open_payload(cipher: Cipher, jid: str, batch_id: str, fp: str, token: str) -> Task:
    """The task, checked against the fingerprint it was stored with. Raises DecryptError."""
    task = Task.from_json(cipher.decrypt(token, payload_context(jid, batch_id, fp)))
    return task


# -- results ---------------------------------------------------------------------------------------

FAILURE_PREFIX = "jobctl "


def _result_context(jid: str, ok: bool) -> str:
    return f"result:{'success' if ok else 'failure'}:{jid}"


@dataclass(frozen=True)
class OpenedResult:
    result: TaskResult
    batch_id: str  # the batch whose payload the worker ran
    fp: str  # the fingerprint of the content the worker ran


def seal_result(cipher: Cipher, jid: str, batch_id: str, fp: str, result: TaskResult) -> str:
    """A Success seals to RQ's return value; a Failure to RQ's exc_string: `jobctl CODE` then the ciphertext,
    so `rq info` and RQ's tools show the code and nothing private."""
    record = {**result.record(), "batch": batch_id, "fp": fp}
    token = cipher.encrypt(_dumps(record), _result_context(jid, result.ok))
    if isinstance(result, Success):
        return token
    return f"{FAILURE_PREFIX}{result.code}\n{token}"


def split_failure(exc_string: str) -> tuple[str, str] | None:
    """(code, token) of an exc_string jobctl wrote, else None (a failure RQ recorded itself)."""
    head, sep, token = exc_string.partition("\n")
    if not sep or not head.startswith(FAILURE_PREFIX) or "\n" in token:
        return None
    return head[len(FAILURE_PREFIX) :], token


def open_result(cipher: Cipher, jid: str, ok: bool, sealed: str) -> OpenedResult:
    """Raises DecryptError when the value fails authentication, or claims a code its record does not hold."""
    if ok:
        rec = json.loads(cipher.decrypt(sealed, _result_context(jid, True)))
        result: TaskResult = Success.from_record(rec)
    else:
        parts = split_failure(sealed)
        if parts is None:
            raise DecryptError("this failure was not written by a jobctl worker")
        code, token = parts
        rec = json.loads(cipher.decrypt(token, _result_context(jid, False)))
        result = Failure.from_record(rec)
        if result.code != code:
            raise DecryptError("the failure's visible code does not match its sealed record")
    return OpenedResult(result, str(rec.get("batch", "")), str(rec.get("fp", "")))


# -- batch header and manifest ---------------------------------------------------------------------


def seal_header(cipher: Cipher, batch_id: str, header: dict[str, Any]) -> str:
    return cipher.encrypt(_dumps(header), f"batch:{batch_id}")


def open_header(cipher: Cipher, batch_id: str, token: str) -> dict[str, Any]:
    value = json.loads(cipher.decrypt(token, f"batch:{batch_id}"))
    if not isinstance(value, dict):
        raise DecryptError("the batch header is not an object")
    return value


def seal_chunk(cipher: Cipher, batch_id: str, index: int, chunks: int, entries: list[list[Any]]) -> str:
    return cipher.encrypt(_dumps(entries), f"manifest:{batch_id}:{index}/{chunks}")


def open_chunk(cipher: Cipher, batch_id: str, index: int, chunks: int, token: str) -> list[list[Any]]:
    value = json.loads(cipher.decrypt(token, f"manifest:{batch_id}:{index}/{chunks}"))
    if not isinstance(value, list):
        raise DecryptError("a manifest chunk is not a list")
    return value


def key_id_of(token: str) -> str | None:
    """The key id a ciphertext was sealed with, read without the key (None if it is no jobctl ciphertext)."""
    parts = token.split(".", 2)
    return parts[1] if len(parts) == 3 else None
