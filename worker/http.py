"""The connection pool the drain talks through: several AsyncOpenAI clients, each with a few
connections, and each request sent through the least busy one.

httpcore's pool looks at every one of its connections for every request (a poll syscall
and a peer lookup each), so one pool of 256 connections spends more CPU choosing a
connection than sending the request. Shards of 16 keep that scan short, while the drain
still has `concurrency` requests in flight.
"""

from __future__ import annotations

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

    async def __aenter__(self) -> ShardedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
