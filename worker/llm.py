"""One task against an OpenAI-compatible server: build the request, call, check the answer, retry.

Transient faults (connection, timeout, 429, 5xx, an unreadable body) are retried with
exponential backoff. An answer cut off at max_tokens, or one that fails the task's schema,
is asked again (a little warmer) and then failed with its reason. Errors that no retry can
fix (a 400, a prompt over the context) fail at once. Errors that no task can get past
(a wrong API key, an unknown model) stop the whole drain: see FatalServerError. So does a
server that stopped answering altogether: see ServerHealth.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any, cast

import openai
from openai import AsyncOpenAI

from jobs import results as r
from jobs.errors import JobctlError
from jobs.kinds.base import OutputInvalid
from jobs.tasks import Task


class FatalServerError(JobctlError):
    """The server refuses every request (authentication, unknown model): draining must stop."""


class ServerUnreachableError(FatalServerError):
    """Requests kept failing to connect, across tasks: the server is down, not the tasks."""


class ServerHealth:
    """Refused connections in a row across all of a drain's tasks; any answer from the server resets it.

    A dead server refuses every request the same way. Failing each task after its own retries would
    burn a whole batch to `connection_error` in seconds, so run_task raises ServerUnreachableError
    instead once `Policy.unreachable_after` connections in a row were refused, or when a task would
    fail on a refused connection that came right after another refusal. Timeouts and connections
    dropped mid-answer neither count nor reset: the server behind them is still there.
    """

    def __init__(self) -> None:
        self.in_a_row = 0


@dataclass
class Policy:
    max_attempts: int = 4
    # Answers that were cut off or off-schema are asked again at most this many times in all.
    max_output_attempts: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 10.0
    retry_temperature: float = 0.5
    # Refused connections in a row, across tasks, after which the server is taken as down (see ServerHealth).
    unreachable_after: int = 8

    def delay(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)


@dataclass
class TaskOutcome:
    ok: bool
    record: dict[str, Any]
    attempts: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retried: list[str] = field(default_factory=list)

    @property
    def code(self) -> str:
        return str(self.record.get("code", "ok"))


class _Retry(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        output: bool = False,
        status: int | None = None,
        body: Any = None,
        refused: bool = False,
    ):
        super().__init__(message)
        self.code, self.message, self.output, self.status, self.body = code, message, output, status, body
        self.refused = refused  # no connection could be made: nothing listens there now


class _Final(_Retry):
    pass


async def run_task(
    client: AsyncOpenAI, model: str, task: Task, style: str, policy: Policy, health: ServerHealth | None = None
) -> TaskOutcome:
    try:
        data, options, body = task.build(style)
    except Exception as e:  # validated at submit; a worker with other kinds may still disagree
        return TaskOutcome(
            False,
            {
                "custom_id": task.custom_id,
                "code": r.INVALID_TASK,
                "message": f"the task no longer validates: {type(e).__name__}",
            },
            0,
        )
    kind = task.kind_impl
    attempts = output_attempts = 0
    retried: list[str] = []
    prompt_tokens = completion_tokens = 0
    while True:
        attempts += 1
        try:
            completion = await _call(client, model, body)
            if health is not None:
                health.in_a_row = 0
            usage = completion.get("usage") or {}
            prompt_tokens += int(usage.get("prompt_tokens") or 0)
            completion_tokens += int(usage.get("completion_tokens") or 0)
            parsed = _check(completion, kind, data, options)
            if parsed is not None:
                completion["choices"][0]["message"]["parsed"] = parsed
            record = {
                "custom_id": task.custom_id,
                "status_code": 200,
                "request_id": completion.get("id", ""),
                "body": completion,
                "attempts": attempts,
            }
            return TaskOutcome(True, record, attempts, prompt_tokens, completion_tokens, retried)
        except FatalServerError:
            raise
        except _Retry as e:
            if e.output:
                output_attempts += 1
            give_up = (
                isinstance(e, _Final)
                or attempts >= policy.max_attempts
                or (e.output and output_attempts >= policy.max_output_attempts)
            )
            if health is not None and e.refused:
                health.in_a_row += 1
                if health.in_a_row >= policy.unreachable_after or (give_up and health.in_a_row >= 2):
                    raise ServerUnreachableError(
                        f"the model server at {client.base_url} stopped answering ({health.in_a_row} connections "
                        "in a row were refused); stopping, and handing unfinished tasks back to the queue. "
                        "Start the server and run the worker again"
                    ) from e
            elif health is not None and e.code not in (r.TIMEOUT, r.CONNECTION_ERROR):
                health.in_a_row = 0
            if give_up:
                record = {"custom_id": task.custom_id, "code": e.code, "message": e.message, "attempts": attempts}
                if e.status is not None:
                    record["status_code"] = e.status
                if e.body is not None:
                    record["body"] = e.body
                return TaskOutcome(False, record, attempts, prompt_tokens, completion_tokens, retried)
            retried.append(e.code)
            if e.output:
                # The same prompt at temperature 0 gives the same bad answer; sample a little instead.
                body = {**body, "temperature": max(float(body.get("temperature") or 0), policy.retry_temperature)}
            else:
                await asyncio.sleep(policy.delay(attempts))


async def _call(client: AsyncOpenAI, model: str, body: dict[str, Any]) -> dict[str, Any]:
    # The low-level post skips the SDK's per-request walk over the typed params and its response
    # models: at hundreds of requests per second on two cores that was most of the client's CPU.
    # Errors still arrive as the SDK's exception classes.
    try:
        resp = await client.post("/chat/completions", body={**body, "model": model}, cast_to=object)
    except openai.APITimeoutError as e:
        raise _Retry(r.TIMEOUT, "the server did not answer in time") from e
    except openai.APIConnectionError as e:
        cause = type(e.__cause__ or e).__name__
        raise _Retry(r.CONNECTION_ERROR, f"cannot reach the server: {cause}", refused=cause == "ConnectError") from e
    except openai.RateLimitError as e:
        raise _Retry(r.RATE_LIMITED, "the server is rate limiting (429)", status=429) from e
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise FatalServerError(
            f"the server refused the API key ({e.status_code}); set OPENAI_API_KEY to the server's key"
        ) from e
    except openai.NotFoundError as e:
        raise FatalServerError(
            f"the server has no model {model!r} or no chat endpoint (404); check --model and --base-url"
        ) from e
    except openai.APIStatusError as e:
        if e.status_code >= 500:
            raise _Retry(r.SERVER_ERROR, f"the server failed ({e.status_code})", status=e.status_code) from e
        text = str(e.message).lower()
        if "context" in text or "too long" in text or ("maximum" in text and "token" in text):
            raise _Final(r.CONTEXT_TOO_LONG, "the prompt does not fit the model's context", status=e.status_code) from e
        raise _Final(
            r.BAD_REQUEST, f"the server rejected the request ({e.status_code}): {_safe(e)}", status=e.status_code
        ) from e
    except openai.APIResponseValidationError as e:
        raise _Retry(r.SERVER_ERROR, "the server's answer was not a chat completion") from e
    if not _is_completion(resp):
        raise _Retry(r.SERVER_ERROR, "the server's answer was not a chat completion")
    return cast(dict[str, Any], resp)


def _is_completion(resp: Any) -> bool:
    if not isinstance(resp, dict):
        return False
    choices = resp.get("choices")
    return (
        bool(choices)
        and isinstance(choices, list)
        and isinstance(choices[0], dict)
        and isinstance(choices[0].get("message"), dict)
    )


def _check(completion: dict[str, Any], kind: Any, data: Any, options: Any) -> Any:
    choice = completion["choices"][0]
    if choice.get("finish_reason") == "length":
        raise _Retry(
            r.LENGTH,
            'the answer was cut off at max_tokens (finish_reason "length"); raise options.max_tokens',
            output=True,
            status=200,
            body=completion,
        )
    content = (choice.get("message") or {}).get("content")
    try:
        return kind.parse_output(content, data, options)
    except OutputInvalid as e:
        raise _Retry(r.INVALID_OUTPUT, str(e), output=True, status=200, body=completion) from e


def _safe(e: openai.APIStatusError) -> str:
    # Servers echo parts of the prompt in error messages; keep only the first words.
    msg = str(e.message)
    return msg[:160]
