"""A plain `rq worker` for jobctl's queues: RQ's own worker loop, one task at a time.

    rq worker -w worker.rq_worker.TaskWorker -u "$REDIS_URL" jobctl

It is correct but slow against a GPU server that wants hundreds of requests in flight (`jobctl
worker` is the real drain); it exists so RQ's tooling works on a jobctl queue end to end, and as
the naive baseline in docs/BENCHMARKS.md. Configuration comes from the environment (jobs.config:
JOBCTL_KEY or JOBCTL_KEY_FILE, OPENAI_BASE_URL, OPENAI_API_KEY, JOBCTL_MODEL).

What it changes in RQ's SimpleWorker, and why:

* RQ's JSON serializer, whatever `--serializer` says: no pickle is ever loaded (a pickle planted in
  Redis ran a shell command on a default `rq worker`).
* Only jobctl tasks run: a job that names another function, or carries callbacks, webhooks or
  dependencies, is failed without anything of it being imported, called or fetched (RQ's failure
  path would post its webhooks and enqueue its dependents, so it is not used for these).
* Registry upkeep is jobctl's (WorkQueue.maintain): RQ's cleanup loads every abandoned job and runs
  the failure callback it names, which on a Redis others can write is a way to run code here.
* A job's data is inflated with a bound (a few KB of planted zlib must not become gigabytes).
* Results are sealed and written through the store (the same Lua step as the drain's), only if the
  worker still holds the task, and a failure is final: RQ's retries_left on a jobctl job counts
  abandoned leases (RQ's cleanup re-queues those), not failed answers.
* Logs say which task and which error code, never content.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import Any

from openai import AsyncOpenAI
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import decode_redis_hash, now
from rq.worker import SimpleWorker
from rq.worker_registration import clean_worker_registry

from jobs import outcomes as o
from jobs.config import Settings
from jobs.crypto import DecryptError
from jobs.errors import JobctlError
from jobs.outcomes import Failure, TaskResult
from jobs.store import codec, keys
from jobs.store.work import Claimed, Finished, WorkQueue
from worker.drain import style_for
from worker.errors import describe_server_error
from worker.http import client_args
from worker.llm import FatalServerError, Policy, ServerHealth, run_task

log = logging.getLogger("jobctl.rq_worker")

# The worker running in this process: perform_task runs inside it and uses its settings and client.
_current: dict[str, TaskWorker] = {}


class BoundedJob(Job):
    """RQ's Job as this worker loads it: nothing in the hash can make it run code, fetch, or exhaust
    memory, and nothing in it can stop the worker.

    The checks are made on the very hash the job object is built from (RQ runs a job's callbacks and
    webhooks from the object it loaded, so a check that read Redis again could be raced: fields
    added between the load and the check, removed before it). The fields jobctl never writes are
    noted as the job's problem and left out of the object; data and exc_info are inflated with a
    bound; a plaintext field RQ cannot parse (a date, a number) marks the job as not jobctl's
    instead of raising out of RQ's dequeue, which would end the worker with the job stuck.
    """

    jobctl_problem: str | None = None

    def restore(self, raw_data: Any) -> Any:
        obj = decode_redis_hash(raw_data)
        if any(obj.get(f) for f in codec.FOREIGN_FIELDS):
            self.jobctl_problem = codec.FOREIGN_FIELDS_PROBLEM
        for f in codec.FOREIGN_FIELDS:
            obj.pop(f, None)
        data = obj.get("data")
        if isinstance(data, bytes):
            try:
                data = codec.inflate(data)
            except zlib.error:
                pass  # stored as is (RQ does this with data that does not deflate)
            except ValueError:
                data = b"null"
            # RQ inflates again whatever still looks like zlib; a jobctl task is a JSON list by now.
            # Anything else becomes `null`, refused later as not a jobctl task with nothing of it loaded.
            obj["data"] = data if data[:1] == b"[" else b"null"
        exc = obj.get("exc_info")
        if isinstance(exc, bytes):
            try:
                # The prefix makes it not zlib: RQ inflates exc_info again, without a bound, if it is.
                obj["exc_info"] = b"(as text) " + codec.inflate(exc)[:4096]
            except zlib.error:
                obj["exc_info"] = b"(as text) " + exc[:4096]
            except ValueError:
                obj["exc_info"] = b"(too large to read)"
        try:
            return super().restore(obj)
        except NoSuchJobError:
            raise
        except Exception as e:  # RQ's parsing of plaintext fields: a date, an int, a JSON list, a status
            self.jobctl_problem = f"RQ cannot read its fields ({type(e).__name__}): it was changed in Redis"
            self.data = b"null"
            self.origin = keys.text(obj.get("origin") or b"")
            return None


class TaskWorker(SimpleWorker):
    """RQ's SimpleWorker for jobctl tasks only (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["serializer"] = JSONSerializer
        kwargs["job_class"] = BoundedJob
        super().__init__(*args, **kwargs)
        self._settings: Settings | None = None
        self._queues: dict[str, WorkQueue] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: AsyncOpenAI | None = None
        self._model = ""
        self._style = "json_schema"
        self._health = ServerHealth()
        _current["worker"] = self

    # -- RQ's steps ---------------------------------------------------------------------------

    def perform_job(self, job: Job, queue: Queue) -> bool:
        # Judged on the hash the job was loaded from (BoundedJob.restore), never on a second read.
        problem = getattr(job, "jobctl_problem", None) or codec.data_problem(job.data)
        if problem is not None:
            log.warning("job %s refused and failed: %s", job.id, problem)
            try:
                execution_id = self.execution.id if self.execution else ""
                self.work_queue(queue.name).refuse(job.id, execution_id, f"refused by jobctl's TaskWorker: {problem}")
            except JobctlError as e:
                log.error("cannot fail job %s: %s", job.id, e)
                self.request_stop(None, None)
            self._clear_current()
            return False
        return bool(super().perform_job(job, queue))

    def clean_registries(self) -> None:
        # Not RQ's cleanup: it loads each abandoned job and calls the failure callback the job names.
        for queue in self.queues:
            if not queue.acquire_maintenance_lock():
                continue
            try:
                back, failed = self.work_queue(queue.name).maintain()
                if back or failed:
                    log.info("queue %s: %d abandoned tasks re-queued, %d failed as abandoned", queue.name, back, failed)
                clean_worker_registry(queue)
            except JobctlError as e:
                log.error("stopping: %s", e)
                self.request_stop(None, None)
            finally:
                queue.release_maintenance_lock()
        self.last_cleaned_at = now()  # type: ignore[assignment]  # RQ annotates it None, sets a datetime

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any) -> None:
        result = job._result
        if not isinstance(result, o.Success | o.Failure):
            result = Failure("", o.WORKER_ERROR, "the task returned something that is not a jobctl result")
        self._finish(job, result)

    def handle_job_failure(
        self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = ""
    ) -> None:
        reason = getattr(job, "_jobctl_release", None)
        if reason is not None:
            # This worker cannot run any task (no server, wrong key): hand the task back and stop, burn nothing.
            self._release(job)
            log.error("stopping: %s", reason)
            self.request_stop(None, None)
            return
        # The job's code failed (RQ's timeout, or a bug); the traceback stays out of Redis and logs.
        self._finish(
            job, Failure("", o.WORKER_ERROR, "the worker failed while running the task (timed out or crashed)")
        )

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        # RQ logs the whole traceback here; an exception message could quote content.
        log.error("job %s: %s", job.id, exc_info[0].__name__ if exc_info and exc_info[0] else "error")

    # -- jobctl -------------------------------------------------------------------------------

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env(queue=None)
        return self._settings

    def work_queue(self, name: str) -> WorkQueue:
        wq = self._queues.get(name)
        if wq is None:
            s = self.settings()
            wq = self._queues[name] = WorkQueue(
                self.connection, s.cipher(), name, s.lease_seconds, s.result_ttl, self.name
            )
        return wq

    def run(self, job: Job, token: str) -> TaskResult:
        try:
            return self._run(job, token)
        except (FatalServerError, JobctlError) as e:
            job._jobctl_release = str(e)  # type: ignore[attr-defined]
            raise

    def _run(self, job: Job, token: str) -> TaskResult:
        s = self.settings()
        wq = self.work_queue(job.origin)
        batch, fp = self._ids(job)
        cl = Claimed(job.id, "", codec.encode_data(token), batch, fp, 0.0)
        key_id = cl.key_id()
        if key_id is not None and key_id != wq.cipher.key_id:
            if wq.queue_key_id() == wq.cipher.key_id:
                # The queue is ours, and submit refuses a second key: a stray or planted task fails alone.
                return Failure(
                    "", o.UNREADABLE, "the task could not be read: it was sealed with another key than its queue's"
                )
            # A worker with the wrong key: never seal a result under a key that is not the task's.
            raise JobctlError(
                f"queue {job.origin!r} holds tasks sealed with key {key_id}, not this worker's {wq.cipher.key_id}; "
                "give the worker the submitter's JOBCTL_KEY"
            )
        try:
            task = cl.open(wq.cipher)
        except (DecryptError, ValueError, KeyError, TypeError):
            return Failure("", o.UNREADABLE, "the task could not be read: it failed authentication")
        if self._loop is None:
            if not s.base_url:
                raise JobctlError("set OPENAI_BASE_URL for `rq worker` to reach the model server")
            self._loop = asyncio.new_event_loop()
            self._client = AsyncOpenAI(
                **client_args(s.base_url, s.api_key_text), max_retries=0, timeout=s.request_timeout
            )
            self._model, self._style = s.model or "", s.structured_output
            if not self._model or self._style == "auto":
                try:
                    first = self._loop.run_until_complete(self._client.models.list()).data[0]
                except Exception as e:
                    raise describe_server_error(e, self._client) from e
                self._model = self._model or first.id
                if self._style == "auto":
                    self._style = style_for(getattr(first, "owned_by", "") or "")
        assert self._client is not None
        coro = run_task(self._client, self._model, task, self._style, Policy(max_attempts=s.max_attempts), self._health)
        return self._loop.run_until_complete(coro).result

    def _ids(self, job: Job) -> tuple[str, str]:
        batch, fp = self.connection.hmget(job.key, "jobctl_batch", "jobctl_fp")
        return (keys.text(batch) if batch else "", keys.text(fp) if fp else "")

    def _claimed(self, job: Job) -> Claimed:
        batch, fp = self._ids(job)
        execution_id = self.execution.id if self.execution else ""
        started = job.started_at.timestamp() if job.started_at else 0.0
        return Claimed(job.id, execution_id, b"", batch, fp, started)

    def _release(self, job: Job) -> None:
        self.work_queue(job.origin).release([self._claimed(job)])
        self._clear_current()

    def _finish(self, job: Job, result: TaskResult) -> None:
        if not self.work_queue(job.origin).finish([Finished(self._claimed(job), result)])[0]:
            log.warning("job %s: its lease ran out and another worker took it; this result is dropped", job.id)
        self._clear_current()

    def _clear_current(self) -> None:
        with self.connection.pipeline() as p:
            self.set_current_job_id(None, pipeline=p)
            p.execute()
        self.execution = None


def perform_task(token: str) -> TaskResult:
    """The function every jobctl job names. Runs inside TaskWorker only: its result is a typed outcome
    that TaskWorker seals, and the job's data never reaches any other code."""
    job = get_current_job()
    worker = _current.get("worker")
    if job is None or worker is None:
        raise JobctlError("jobctl tasks run under `rq worker -w worker.rq_worker.TaskWorker` (see the README)")
    return worker.run(job, token)
