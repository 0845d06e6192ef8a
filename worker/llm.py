"""One task against an OpenAI-compatible server: build the request, call, check the answer, retry.

Transient faults (connection, timeout, 429, 5xx, an unreadable body) are retried with exponential
backoff, or after the server's own Retry-After on 429 and 503. An answer cut off at max_tokens, or
one that fails the task's schema, is asked again (a little warmer) and then failed with its reason;
so is any odd answer (a content list, a number too long to read, brackets nested 100,000 deep, a
bad usage block): all of it is `invalid_output`, never a crash. Errors no retry can fix (a 400, a
prompt over the context) fail at once. Errors no task can get past (a wrong API key, an unknown
model) stop the whole drain: see FatalServerError. So does a server that stopped answering: see
ServerHealth.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import openai
from openai import AsyncOpenAI

from jobs import outcomes as o
from jobs.errors import JobctlError
from jobs.kinds.base import MAX_ANSWER_CHARS, OutputInvalid
from jobs.outcomes import Failure, Success, TaskResult, Usage
from jobs.tasks import Task
from worker.errors import connection_fault

# A Retry-After longer than this is not waited out inside one task: the task fails as rate limited,
# and its retry (`jobctl retry`) comes later.
MAX_RETRY_AFTER = 120.0


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
    """A task's result and what it took: the codes of the attempts that were retried."""

    result: TaskResult
    retried: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result.ok


class _Retry(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        output: bool = False,
        status: int | None = None,
        body: Any = None,
        refused: bool = False,
        after: float | None = None,
    ):
        super().__init__(message)
        self.code, self.message, self.output, self.status, self.body = code, message, output, status, body
        self.refused = refused  # no connection could be made: nothing listens there now
        self.after = after  # the server's Retry-After, in seconds


class _Final(_Retry):
    pass


# Validates an answer: (content, data, options) -> the parsed value. The drain passes one that runs
# off its event loop with a time limit; the default runs inline.
Validate = Callable[[Any, Any, Any, Any], Awaitable[Any]]


async def _inline_validate(kind: Any, content: Any, data: Any, options: Any) -> Any:
    return kind.parse_output(content, data, options)


async def run_task(
    client: AsyncOpenAI,
    model: str,
    task: Task,
    style: str,
    policy: Policy,
    health: ServerHealth | None = None,
    validate: Validate = _inline_validate,
) -> TaskOutcome:
    try:
        data, options, body = task.build(style)
    except Exception as e:  # validated at submit; a worker with other kinds may still disagree
        return TaskOutcome(Failure(task.custom_id, o.INVALID_TASK, f"the task no longer validates: {type(e).__name__}"))
    kind = task.kind_impl
    attempts = output_attempts = 0
    retried: list[str] = []
    usage = Usage()
    while True:
        attempts += 1
        try:
            completion = await _call(client, model, body)
            if health is not None:
                health.in_a_row = 0
            usage += _usage(completion)
            parsed = await _check(completion, kind, data, options, validate)
            if parsed is not None:
                completion["choices"][0]["message"]["parsed"] = parsed
            request_id = completion.get("id")
            return TaskOutcome(
                Success(task.custom_id, completion, request_id if isinstance(request_id, str) else "", attempts, usage),
                retried,
            )
        except FatalServerError:
            raise
        except _Retry as e:
            if e.output:
                output_attempts += 1
            give_up = (
                isinstance(e, _Final)
                or attempts >= policy.max_attempts
                or (e.output and output_attempts >= policy.max_output_attempts)
                or (e.after is not None and e.after > MAX_RETRY_AFTER)
            )
            if health is not None and e.refused:
                health.in_a_row += 1
                if health.in_a_row >= policy.unreachable_after or (give_up and health.in_a_row >= 2):
                    raise ServerUnreachableError(
                        f"the model server at {_where(client)} stopped answering ({health.in_a_row} connections "
                        "in a row were refused); stopping, and handing unfinished tasks back to the queue. "
                        "Start the server and run the worker again"
                    ) from e
            elif health is not None and e.code not in (o.TIMEOUT, o.CONNECTION_ERROR):
                health.in_a_row = 0
            if give_up:
                return TaskOutcome(
                    Failure(task.custom_id, e.code, e.message, attempts, e.status, e.body, usage), retried
                )
            retried.append(e.code)
            if e.output:
                # The same prompt at temperature 0 gives the same bad answer; sample a little instead.
                body = {**body, "temperature": max(float(body.get("temperature") or 0), policy.retry_temperature)}
            else:
                await asyncio.sleep(e.after if e.after is not None else policy.delay(attempts))


def _where(client: Any) -> str:
    from jobs.redact import redact_url

    return str(redact_url(str(client.base_url)))


def _retry_after(e: openai.APIStatusError) -> float | None:
    """The server's Retry-After in seconds (a number or an HTTP date), if it sent one."""
    raw = e.response.headers.get("retry-after") if e.response is not None else None
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def _call(client: AsyncOpenAI, model: str, body: dict[str, Any]) -> dict[str, Any]:
    # The low-level post skips the SDK's per-request walk over the typed params and its response
    # models: at hundreds of requests per second on two cores that was most of the client's CPU.
    # Errors still arrive as the SDK's exception classes.
    try:
        resp = await client.post("/chat/completions", body={**body, "model": model}, cast_to=object)
    except openai.APIConnectionError as e:  # APITimeoutError included: see _connection_fault
        raise _connection_fault(e) from e
    except openai.RateLimitError as e:
        raise _Retry(o.RATE_LIMITED, "the server is rate limiting (429)", status=429, after=_retry_after(e)) from e
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise FatalServerError(
            f"the server refused the API key ({e.status_code}); set OPENAI_API_KEY to the server's key"
        ) from e
    except openai.NotFoundError as e:
        raise FatalServerError(
            f"the server has no model {model!r} or no chat endpoint (404); check --model, and that the base URL "
            "ends in /v1"
        ) from e
    except openai.APIStatusError as e:
        if e.status_code >= 500:
            after = _retry_after(e) if e.status_code == 503 else None
            raise _Retry(
                o.SERVER_ERROR, f"the server failed ({e.status_code})", status=e.status_code, after=after
            ) from e
        text = str(e.message).lower()
        if "context" in text or "too long" in text or ("maximum" in text and "token" in text):
            raise _Final(o.CONTEXT_TOO_LONG, "the prompt does not fit the model's context", status=e.status_code) from e
        raise _Final(
            o.BAD_REQUEST, f"the server rejected the request ({e.status_code}): {_safe(e)}", status=e.status_code
        ) from e
    except openai.APIResponseValidationError as e:
        raise _Retry(o.SERVER_ERROR, "the server's answer was not a chat completion") from e
    except (ValueError, RecursionError) as e:  # a body the JSON decoder gave up on (too deep, too long a number)
        raise _Retry(o.SERVER_ERROR, "the server's answer could not be decoded") from e
    if not _is_completion(resp):
        raise _Retry(o.SERVER_ERROR, "the server's answer was not a chat completion")
    return cast(dict[str, Any], resp)


def _connection_fault(e: openai.APIConnectionError) -> _Retry:
    """A transport failure, told apart by its root cause (worker.errors.connection_fault): refused (nothing
    listens: counts towards ServerHealth), dropped mid-answer, or a real timeout."""
    kind = connection_fault(e)
    if kind == "refused":
        return _Retry(o.CONNECTION_ERROR, "cannot reach the server: connection refused", refused=True)
    if kind == "timeout":
        return _Retry(o.TIMEOUT, "the server did not answer in time")
    return _Retry(o.CONNECTION_ERROR, "the server dropped the connection")


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


def _usage(completion: dict[str, Any]) -> Usage:
    """Token counts, or zeros: a server's odd usage block is not worth failing (or logging) an answer for."""
    usage = completion.get("usage")
    if not isinstance(usage, dict):
        return Usage()
    return Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))


def _count(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 10**12 else 0


async def _check(completion: dict[str, Any], kind: Any, data: Any, options: Any, validate: Validate) -> Any:
    choice = completion["choices"][0]
    if choice.get("finish_reason") == "length":
        raise _Retry(
            o.LENGTH,
            'the answer was cut off at max_tokens (finish_reason "length"); raise options.max_tokens',
            output=True,
            status=200,
            body=completion,
        )
    content = choice["message"].get("content")
    if isinstance(content, str) and len(content) > MAX_ANSWER_CHARS:
        # Free-text kinds (summaries, replies) keep the answer as it is: without this bound a server
        # could fill the result store with one answer of any size.
        raise _Retry(
            o.INVALID_OUTPUT,
            f"the answer is {len(content)} characters long; at most {MAX_ANSWER_CHARS} are kept",
            output=True,
            status=200,
        )
    try:
        return await validate(kind, content, data, options)
    except OutputInvalid as e:
        raise _Retry(o.INVALID_OUTPUT, str(e), output=True, status=200, body=completion) from e
    except (ValueError, TypeError, RecursionError, KeyError, AttributeError) as e:
        raise _Retry(
            o.INVALID_OUTPUT, f"the answer could not be checked ({type(e).__name__})", output=True, status=200
        ) from e


def _safe(e: openai.APIStatusError) -> str:
    # Servers echo parts of the prompt in error messages; keep only the first words, and no control characters.
    msg = "".join(ch if ch.isprintable() else " " for ch in str(e.message))
    return msg[:160]
