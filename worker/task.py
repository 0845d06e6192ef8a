"""The function every jobctl RQ job names, so a plain `rq worker` can run a queue too.

It does one request per job, one job at a time: correct, but slow against a GPU server
that wants hundreds of requests in flight. It exists for RQ compatibility and as the naive
baseline in docs/BENCHMARKS.md; `jobctl worker` is the real drain. Configuration comes
from the environment (JOBCTL_KEY, OPENAI_BASE_URL, OPENAI_API_KEY, JOBCTL_MODEL).
"""

from __future__ import annotations

import asyncio
from typing import Any

from openai import AsyncOpenAI
from rq import get_current_job

from jobs import keys
from jobs import results as r
from jobs.config import Settings
from jobs.errors import JobctlError
from jobs.tasks import Task
from worker.drain import style_for
from worker.llm import Policy, TaskOutcome, run_task


class TaskFailedError(JobctlError):
    """Raised so RQ records a failure; its message is the sealed failure record, nothing private."""


class _Process:
    """What one worker process keeps between jobs: settings, key, an event loop and one client,
    so the baseline measures RQ's one-at-a-time model rather than client set-up."""

    def __init__(self) -> None:
        self.settings = Settings.from_env()
        if not self.settings.base_url:
            raise JobctlError("set OPENAI_BASE_URL for `rq worker` to reach the model server")
        self.cipher = self.settings.cipher()
        self.loop = asyncio.new_event_loop()
        self.client = AsyncOpenAI(
            base_url=self.settings.base_url,
            api_key=self.settings.api_key or "none",
            max_retries=0,
            timeout=self.settings.request_timeout,
        )
        self.model = self.settings.model or ""
        self.style = self.settings.structured_output
        if not self.model or self.style == "auto":
            first = self.loop.run_until_complete(self.client.models.list()).data[0]
            self.model = self.model or first.id
            if self.style == "auto":
                self.style = style_for(getattr(first, "owned_by", "") or "")

    def run(self, task: Task) -> TaskOutcome:
        s = self.settings
        coro = run_task(self.client, self.model, task, self.style, Policy(max_attempts=s.max_attempts))
        return self.loop.run_until_complete(coro)


_state: dict[str, Any] = {}


def perform_task(token: str) -> str:
    job = get_current_job()
    if job is None:
        raise JobctlError("perform_task runs inside an RQ worker")
    proc = _state.get("proc")
    if proc is None:
        proc = _state["proc"] = _Process()
    task = Task.from_json(proc.cipher.decrypt(token, keys.payload_context(job.id)))
    outcome = proc.run(task)
    if outcome.ok:
        return r.seal_success(proc.cipher, job.id, outcome.record)
    raise TaskFailedError(r.seal_failure(proc.cipher, job.id, outcome.record))
