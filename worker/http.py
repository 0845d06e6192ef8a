"""The HTTP client the drain talks through: AsyncOpenAI over the SDK's own aiohttp transport
(`openai[aiohttp]`, `DefaultAioHttpClient`), with a connection pool as large as the most requests
the drain keeps in flight.

It replaced a hand-made pool of httpx clients in shards of 16 connections (httpcore's pool scans every
connection on every request). In one run of bench/cpu_bench.py (docs/BENCHMARKS.md, section 2) the
aiohttp client spent 2.21 ms of worker CPU per job against the sharded pool's 2.52, and drained 20%
faster, so the sharded pool went.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx2
import openai
from openai import AsyncOpenAI


@contextlib.asynccontextmanager
async def make_client(
    base_url: str, api_key: str | None, concurrency: int, timeout: float
) -> AsyncIterator[AsyncOpenAI]:
    """The drain's client, closed on exit. `concurrency`: the most requests it will have in flight."""
    limits = httpx2.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    client = AsyncOpenAI(
        base_url=base_url,
        api_key=api_key or "none",
        max_retries=0,
        timeout=timeout,
        http_client=openai.DefaultAioHttpClient(limits=limits, timeout=timeout),
    )
    try:
        yield client
    finally:
        await client.close()
