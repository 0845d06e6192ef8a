"""The HTTP client the drain talks through.

Two transports, chosen by JOBCTL_HTTP_CLIENT and compared in bench/cpu_bench.py:

* `aiohttp` (the default): the OpenAI SDK's own aiohttp transport (`openai[aiohttp]`,
  `DefaultAioHttpClient`) with a connection pool as large as the concurrency;
* `httpx`: AsyncOpenAI over httpx2, its pool split into shards of 16 connections. httpcore's pool
  looks at every one of its connections for every request (a poll syscall and a peer lookup
  each), so one pool of 256 connections spends more CPU choosing a connection than sending.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI

SHARD_CONNECTIONS = 16


class ShardedClient:
    def __init__(
        self, base_url: str, api_key: str | None, concurrency: int, timeout: float, per_shard: int = SHARD_CONNECTIONS
    ):
        n = max(1, -(-concurrency // per_shard))
        size = -(-concurrency // n) + 2
        self.shards = [
            AsyncOpenAI(
                base_url=base_url,
                api_key=api_key or "none",
                max_retries=0,
                timeout=timeout,
                http_client=openai.DefaultAsyncHttpxClient(
                    limits=httpx2.Limits(max_connections=size, max_keepalive_connections=size), timeout=timeout
                ),
            )
            for _ in range(n)
        ]
        self._load = [0] * n

    @property
    def base_url(self) -> Any:
        return self.shards[0].base_url

    @property
    def api_key(self) -> str:
        return self.shards[0].api_key

    @property
    def models(self) -> Any:
        return self.shards[0].models

    async def post(self, path: str, **kwargs: Any) -> Any:
        i = min(range(len(self._load)), key=self._load.__getitem__)
        self._load[i] += 1
        try:
            return await self.shards[i].post(path, **kwargs)
        finally:
            self._load[i] -= 1

    async def close(self) -> None:
        for s in self.shards:
            await s.close()


@contextlib.asynccontextmanager
async def make_client(
    base_url: str, api_key: str | None, concurrency: int, timeout: float, transport: str = "aiohttp"
) -> AsyncIterator[Any]:
    """The drain's client: AsyncOpenAI over aiohttp, or the sharded httpx pool (see the module doc)."""
    if transport == "httpx":
        sharded = ShardedClient(base_url, api_key, concurrency, timeout)
        try:
            yield sharded
        finally:
            await sharded.close()
        return
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
