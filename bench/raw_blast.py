"""The raw limit: the drain's exact requests fired straight at the server with asyncio, no Redis.

    python bench/raw_blast.py --base-url URL --n 2000 --concurrency 64 [--api-key K] [--style json_schema]
Prints JSON: requests, wall seconds, req/s, output tokens/s, CPU seconds per request of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

import httpx2
import openai
from openai import AsyncOpenAI

from bench.common import triage_tasks
from jobs.parse import parse_objects


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def blast(base_url: str, api_key: str | None, n: int, concurrency: int, style: str, model: str | None) -> dict:
    bodies = [t.build(style)[2] for t in parse_objects(triage_tasks(n, "raw"))]
    # A plain AsyncOpenAI client with a pool as large as the concurrency: what a script would use.
    http = openai.DefaultAsyncHttpxClient(
        limits=httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    )
    async with AsyncOpenAI(
        base_url=base_url, api_key=api_key or "none", max_retries=0, timeout=120.0, http_client=http
    ) as client:
        model = model or (await client.models.list()).data[0].id
        queue = list(reversed(bodies))
        out_tokens = 0
        ok = 0

        async def one_worker() -> None:
            nonlocal out_tokens, ok
            while queue:
                body = dict(queue.pop())
                messages = body.pop("messages")
                r = await client.chat.completions.create(model=model, messages=messages, extra_body=body)
                ok += 1
                out_tokens += r.usage.completion_tokens if r.usage else 0

        c0, t0 = cpu(), time.perf_counter()
        await asyncio.gather(*(one_worker() for _ in range(concurrency)))
        wall, used = time.perf_counter() - t0, cpu() - c0
    return {
        "requests": ok,
        "wall_seconds": round(wall, 3),
        "req_per_s": round(ok / wall, 2),
        "output_tokens_per_s": round(out_tokens / wall, 1),
        "cpu_ms_per_request": round(1000 * used / ok, 3),
        "concurrency": concurrency,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key")
    ap.add_argument("--model")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--style", default="json_schema")
    a = ap.parse_args()
    print(json.dumps(asyncio.run(blast(a.base_url, a.api_key, a.n, a.concurrency, a.style, a.model))))


if __name__ == "__main__":
    main()
