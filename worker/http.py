"""The HTTP client the drain talks through: AsyncOpenAI over the SDK's own aiohttp transport
(`openai[aiohttp]`, `DefaultAioHttpClient`), with a connection pool as large as the most requests
the drain keeps in flight.

It replaced a hand-made pool of httpx clients in shards of 16 connections (httpcore's pool scans every
connection on every request). In one run of bench/cpu_bench.py (docs/BENCHMARKS.md, section 2) the
aiohttp client spent 2.21 ms of worker CPU per job against the sharded pool's 2.52, and drained 20%
faster, so the sharded pool went.

A server behind a proxy with HTTP Basic auth is given as https://user:password@host/v1. The user
info is taken out of the URL (the SDK would put the URL, password and all, into its errors and
logs) and sent as an Authorization header instead; an API key as well is refused, since both
would be the one Authorization header.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx2
import openai
from openai import AsyncOpenAI

from jobs.config import ConfigError


@contextlib.asynccontextmanager
async def make_client(
    base_url: str, api_key: str | None, concurrency: int, timeout: float
) -> AsyncIterator[AsyncOpenAI]:
    """The drain's client, closed on exit. `concurrency`: the most requests it will have in flight."""
    limits = httpx2.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    client = AsyncOpenAI(
        **client_args(base_url, api_key),
        max_retries=0,
        timeout=timeout,
        http_client=openai.DefaultAioHttpClient(limits=limits, timeout=timeout),
    )
    try:
        yield client
    finally:
        await client.close()


def split_credentials(base_url: str, api_key: str | None) -> tuple[str, dict[str, str]]:
    """`base_url` without user info, and the Authorization header to send (Basic from the URL's user
    info, else Bearer from `api_key`; none without either)."""
    key = api_key if api_key and api_key != "none" else None
    parts = urlsplit(base_url)
    if parts.username is None and parts.password is None:
        return base_url, ({"Authorization": f"Bearer {key}"} if key else {})
    if key:
        raise ConfigError(
            "the model server URL holds a user name and password and an API key is set as well; "
            "give one: unset OPENAI_API_KEY (--api-key), or take user:password@ out of OPENAI_BASE_URL"
        )
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    host = parts.netloc.rpartition("@")[2]
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def client_args(base_url: str, api_key: str | None) -> dict[str, Any]:
    """AsyncOpenAI's base_url, api_key and default_headers for a server, its URL's user info as Basic auth."""
    url, headers = split_credentials(base_url, api_key)
    basic = headers if headers.get("Authorization", "").startswith("Basic ") else {}
    return {"base_url": url, "api_key": api_key or "none", "default_headers": basic or None}


def auth_headers(client: Any) -> dict[str, str]:
    """The Authorization header an AsyncOpenAI client sends (for calls made beside it, e.g. /metrics)."""
    value = dict(getattr(client, "default_headers", {}) or {}).get("Authorization")
    return {"Authorization": value} if value and value not in ("Bearer none", "Bearer") else {}
