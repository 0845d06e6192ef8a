"""Names derived from a queue and a task: RQ's keys and jobctl's own (prefixes from jobs.constants)."""

from __future__ import annotations

from typing import Any

from jobs import constants as c
from jobs.crypto import Cipher


def job_id(cipher: Cipher, queue: str, custom_id: str) -> str:
    # Keyed, so the id reveals nothing of a custom_id, and stable, so a re-submit finds the same job.
    return "jc" + cipher.mac("job", queue, custom_id)[:30]


def fingerprint(cipher: Cipher, queue: str, canonical: str) -> str:
    return cipher.mac("content", queue, canonical)[:32]


def job_key(jid: str) -> str:
    return f"rq:job:{jid}"


def queue_key(queue: str) -> str:
    return f"rq:queue:{queue}"


def started_key(queue: str) -> str:
    return f"rq:wip:{queue}"


def finished_key(queue: str) -> str:
    return f"rq:finished:{queue}"


def failed_key(queue: str) -> str:
    return f"rq:failed:{queue}"


def canceled_key(queue: str) -> str:
    return f"rq:canceled:{queue}"


def results_key(jid: str) -> str:
    return f"rq:results:{jid}"


def batch_key(batch_id: str) -> str:
    return c.BATCH_PREFIX + batch_id


def batch_jobs_key(batch_id: str) -> str:
    return c.BATCH_PREFIX + batch_id + c.BATCH_JOBS_SUFFIX


def payload_context(jid: str) -> str:
    return f"task:{jid}"


def result_context(jid: str) -> str:
    return f"result:{jid}"


def text(value: bytes | str | Any) -> str:
    """A Redis reply as str (redis-py types replies as bytes or str)."""
    return value.decode() if isinstance(value, bytes) else str(value)
