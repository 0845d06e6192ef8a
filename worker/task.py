"""The function every jobctl RQ job names, so a plain `rq worker` can run a queue too.

It does one request per job, one job at a time: correct, but slow against a GPU server
that wants hundreds of requests in flight. It exists for RQ compatibility and as the naive
baseline in docs/BENCHMARKS.md; `jobctl worker` is the real drain. Configuration comes
from the environment (JOBCTL_KEY, OPENAI_BASE_URL, OPENAI_API_KEY, JOBCTL_MODEL).
"""

from __future__ import annotations

import asyncio

from openai import AsyncOpenAI
from rq import get_current_job

from jobs import keys
from jobs import results as r
from jobs.config import Settings
from jobs.errors import JobctlError
from jobs.tasks import Task
from worker.llm import Policy, run_task


class TaskFailedError(JobctlError):
    """Raised so RQ records a failure; its message is the sealed failure record, nothing private."""


def perform_task(token: str) -> str:
    job = get_current_job()
    if job is None:
        raise JobctlError("perform_task runs inside an RQ worker")
    settings = Settings.from_env()
    cipher = settings.cipher()
    task = Task.from_json(cipher.decrypt(token, keys.payload_context(job.id)))
    outcome = asyncio.run(_run(settings, task))
    if outcome.ok:
        return r.seal_success(cipher, job.id, outcome.record)
    raise TaskFailedError(r.seal_failure(cipher, job.id, outcome.record))


async def _run(settings: Settings, task: Task):  # type: ignore[no-untyped-def]
    async with AsyncOpenAI(base_url=settings.base_url, api_key=settings.api_key or "none", max_retries=0,
                           timeout=settings.request_timeout) as client:
        model = settings.model or (await client.models.list()).data[0].id
        return await run_task(client, model, task, settings.structured_output,
                              Policy(max_attempts=settings.max_attempts))
