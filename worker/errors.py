"""What to tell the user when the model server cannot be used at all, by what went wrong: down, a
wrong API key, a base URL without /v1, a timeout. Messages name the server without credentials."""

from __future__ import annotations

from typing import Any

import openai

from jobs.errors import JobctlError
from jobs.redact import redact_url


class ModelServerError(JobctlError):
    """The model server cannot be used: the message says why and what to do."""


def connection_fault(e: BaseException) -> str:
    """ "refused" (nothing listens there), "dropped" (the connection broke mid-answer) or "timeout", read from
    the exception's chain: the SDK's aiohttp transport reports every connection failure as a connect timeout."""
    chain: list[BaseException] = []
    x: BaseException | None = e
    while x is not None and len(chain) < 8:
        chain.append(x)
        x = x.__cause__ or x.__context__
    names = {type(c).__name__ for c in chain}
    if any(isinstance(c, ConnectionRefusedError) for c in chain) or "ConnectError" in names:
        return "refused"
    if "ClientConnectorError" in names and not names & {"ServerTimeoutError", "SocketTimeoutError"}:
        return "refused"
    if names & {"ServerDisconnectedError", "ClientOSError", "RemoteProtocolError", "ReadError", "ClientPayloadError"}:
        return "dropped"
    if isinstance(e, openai.APITimeoutError) or names & {"ServerTimeoutError", "SocketTimeoutError", "TimeoutError"}:
        return "timeout"
    return "dropped"


def describe_server_error(e: BaseException, client: Any) -> ModelServerError:
    url = redact_url(str(getattr(client, "base_url", ""))) or "the server"
    if isinstance(e, openai.AuthenticationError | openai.PermissionDeniedError):
        return ModelServerError(
            f"the model server at {url} refused the API key (HTTP {e.status_code}); set OPENAI_API_KEY "
            "(or --api-key) to the server's key"
        )
    if isinstance(e, openai.NotFoundError):
        hint = "" if str(url).rstrip("/").endswith("/v1") else "; the base URL usually ends in /v1"
        return ModelServerError(f"the model server at {url} has no /models endpoint (HTTP 404): check --base-url{hint}")
    if isinstance(e, openai.APIConnectionError) and connection_fault(e) == "timeout":
        return ModelServerError(f"the model server at {url} did not answer in time; is it overloaded or starting?")
    if isinstance(e, openai.APIConnectionError):
        return ModelServerError(
            f"cannot connect to the model server at {url}; is it running? Start it, or set --base-url "
            "(OPENAI_BASE_URL) to where it listens"
        )
    if isinstance(e, openai.APIStatusError):
        return ModelServerError(
            f"the model server at {url} answered HTTP {e.status_code} to a list of its models; check its log, "
            "or pass --model and --structured-output to skip this check"
        )
    return ModelServerError(
        f"the model server at {url} gave an answer jobctl cannot read ({type(e).__name__}); is it an "
        "OpenAI-compatible server? Pass --model and --structured-output to skip this check"
    )
