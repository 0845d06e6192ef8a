"""RQ's formats, written and read in one place: the job hash and its `data` blob, result stream
entries, and RQ's timestamps. Built with RQ's own classes wherever RQ offers them, so a layout
change in RQ shows up here (and in tests/test_rq_contract.py), not as silent corruption.
"""

from __future__ import annotations

import binascii
import json
import zlib
from base64 import b64decode
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import utcformat

# The dotted path every jobctl job names; `rq worker -w worker.rq_worker.TaskWorker` runs it.
TASK_FUNC = "worker.rq_worker.perform_task"
# How often RQ's own cleanup (and jobctl's sweep) may put back a task whose worker stopped
# heart-beating before the task fails as abandoned. RQ reads this as the job's retries_left.
MAX_ABANDONS = 3
JOB_TIMEOUT = 900
SERIALIZER = JSONSerializer
# The most a job's data or a result may inflate to. Redis is not trusted: a few kilobytes of planted
# zlib would otherwise inflate to gigabytes in whoever reads it (jobctl tasks stay far below this:
# JOBCTL_MAX_TASK_BYTES is capped at 64 MiB, which seals to under 90 MiB).
MAX_DATA_BYTES = 128 * 1024 * 1024


def number(value: Any, default: float = 0.0) -> float:
    """A number stored as text in Redis, or `default` when it is missing or not a finite number: a value
    changed in Redis must not crash whoever reads it."""
    try:
        out = float(value) if value not in (None, b"", "") else default
    except (TypeError, ValueError):
        return default
    return out if out == out and abs(out) != float("inf") else default


def inflate(blob: bytes, limit: int = MAX_DATA_BYTES) -> bytes:
    """zlib.decompress that stops at `limit` bytes. Raises zlib.error for data that is not one whole
    zlib stream, ValueError for a stream that inflates past the limit."""
    d = zlib.decompressobj()
    out = d.decompress(blob, limit)
    if d.unconsumed_tail:
        raise ValueError(f"the data inflates past {limit} bytes")
    if not d.eof:
        raise zlib.error("incomplete or truncated zlib stream")
    return out


def iso(ts: float) -> str:
    """A Unix time in RQ's timestamp format."""
    return utcformat(datetime.fromtimestamp(ts, tz=UTC))


def encode_data(token: str) -> bytes:
    """The job's `data` field: RQ's JSON serializer over (func, instance, args, kwargs), compressed as RQ stores it."""
    return zlib.compress(json.dumps([TASK_FUNC, None, [token], {}]).encode())


def decode_data(data: bytes) -> str:
    """The sealed payload inside a job's `data` field. Raises ValueError for anything jobctl did not write."""
    try:
        raw = inflate(data)
    except zlib.error:
        raw = data  # RQ stores data uncompressed when it does not deflate (and reads it back the same way)
    except ValueError as e:
        raise ValueError("the job's data is not a jobctl task (it inflates past the limit)") from e
    try:
        func, _inst, args, kwargs = json.loads(raw)
    except (ValueError, TypeError, RecursionError) as e:
        raise ValueError("the job's data is not a jobctl task") from e
    if func != TASK_FUNC or not isinstance(args, list) or len(args) != 1 or not isinstance(args[0], str) or kwargs:
        raise ValueError("the job's data is not a jobctl task")
    return args[0]


def job_template(conn: redis.Redis, queue_name: str, result_ttl: int, batch_id: str) -> dict[str, Any]:
    """The job hash RQ itself would write for a queued task (built by RQ once per submit), less the per-task
    fields. RQ's enqueue_many costs ~100 us a job in Python; writing these fields in pipelines is what lets
    a 10,000-task file go in within a couple of seconds."""
    queue = Queue(queue_name, connection=conn, serializer=SERIALIZER)
    job = queue.create_job(
        TASK_FUNC,
        args=[""],
        job_id="template",
        result_ttl=result_ttl,
        failure_ttl=result_ttl,
        timeout=JOB_TIMEOUT,
        description="jobctl task",
        status=JobStatus.CREATED,
        retry=Retry(max=MAX_ABANDONS),
    )
    job.origin = queue_name
    # Empty fields are left out: RQ reads a missing field as empty, and each one costs at this volume.
    mapping = {k: v for k, v in job.to_dict().items() if v != ""}
    mapping.pop("data", None)
    mapping["status"] = JobStatus.CREATED.value
    return mapping


def result_fields(
    jid: str,
    ok: bool,
    sealed: str,
    worker_name: str,
    execution_id: str | None,
    started: float | None,
    ended: float,
) -> list[Any]:
    """A results-stream entry exactly as RQ's Result.save writes it, flattened for a Lua XADD."""
    res = Result(
        jid,
        Result.Type.SUCCESSFUL if ok else Result.Type.FAILED,
        None,  # type: ignore[arg-type]  # serialize() never touches the connection
        return_value=sealed if ok else None,
        exc_string=None if ok else sealed,
        worker_name=worker_name,
        serializer=SERIALIZER,
        execution_id=execution_id,
        execution_started_at=datetime.fromtimestamp(started, tz=UTC) if started else None,
        execution_ended_at=datetime.fromtimestamp(ended, tz=UTC),
    )
    flat: list[Any] = []
    for k, v in res.serialize().items():
        flat += [k, v]
    return flat


def read_result(payload: dict[bytes, bytes]) -> tuple[bool, str]:
    """(succeeded, the text it holds) from a results-stream entry as RQ writes it with its JSON serializer.
    Read here rather than by RQ's Result.restore: nothing in Redis is trusted, so decompression is
    bounded and every field checked. Raises ValueError for anything that is not such an entry."""
    try:
        kind = int(payload[b"type"])
        if kind == Result.Type.SUCCESSFUL.value:
            value = json.loads(b64decode(payload[b"return_value"], validate=True))
        elif b"exc_string" in payload:
            value = inflate(b64decode(payload[b"exc_string"], validate=True)).decode()
        else:
            value = ""
    except (KeyError, ValueError, TypeError, RecursionError, zlib.error, binascii.Error) as e:
        raise ValueError("the entry is not a result RQ or jobctl wrote") from e
    if not isinstance(value, str):
        raise ValueError("the entry's value is not text")
    return kind == Result.Type.SUCCESSFUL.value, value


# Job hash fields jobctl never writes; a job that has one was not enqueued by jobctl, and RQ would act
# on them (import and call a callback, post a webhook, enqueue dependents, repeat).
FOREIGN_FIELDS = (
    "success_callback_name",
    "failure_callback_name",
    "stopped_callback_name",
    "webhooks",
    "dependency_ids",
    "dependency_id",
    "repeats_left",
)


NOT_JOBCTL_DATA = "it is not a jobctl task (it names another function, or its data is not jobctl's)"
FOREIGN_FIELDS_PROBLEM = "it carries callbacks, webhooks, dependencies or repeats, which jobctl never sets"


def data_problem(data: bytes) -> str | None:
    """Why a job's data is not a jobctl task's (None if it is); nothing of it is deserialized."""
    try:
        decode_data(data)
    except ValueError:
        return NOT_JOBCTL_DATA
    return None


def foreign_job_problem(conn: redis.Redis, jid: str, data: bytes) -> str | None:
    """Why a job is not one jobctl wrote (None if it is), read from the raw hash: nothing is deserialized."""
    problem = data_problem(data)
    if problem is not None:
        return problem
    from jobs.store import keys

    if any(v for v in conn.hmget(keys.job(jid), *FOREIGN_FIELDS)):
        return FOREIGN_FIELDS_PROBLEM
    return None
