"""Does one big submit stall Redis for everyone else? A 500,000-task file submitted as a user would
(`jobctl submit big.json`), while another process pings the same Redis every 50 ms and records how
long each ping took. The old submit (one WATCH over every job key) left Redis unresponsive for over
21 minutes on this file; the staged submit works in bounded steps.

    python -m bench.submit_stall --tasks 500000 --out docs/runs/submit-stall.json

The Redis is a redis-server of its own (so nothing else waits on it, and nothing else slows it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import dump, env_with, free_port, start_redis

ROOT = Path(__file__).resolve().parents[1]


def write_file(path: Path, n: int) -> int:
    """A task file of n short triage tasks (under JOBCTL_MAX_FILE_BYTES); returns its size."""
    with path.open("w") as f:
        f.write("[")
        for i in range(n):
            if i:
                f.write(",")
            f.write(
                json.dumps(
                    {
                        "custom_id": f"t{i}",
                        "kind": "email.triage",
                        "input": {"from": f"p{i % 97}@example.org", "body": f"note {i}: see you Friday?"},
                    },
                    separators=(",", ":"),
                )
            )
        f.write("]")
    return path.stat().st_size


def pinger(url: str, stop: Any, out: Any, every: float) -> None:
    conn = redis.Redis.from_url(url, socket_timeout=3600)
    samples = []
    while not stop.is_set():
        t0 = time.perf_counter()
        conn.ping()
        samples.append(time.perf_counter() - t0)
        time.sleep(every)
    out.put(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=500_000)
    ap.add_argument("--every", type=float, default=0.05)
    ap.add_argument("--out")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp())
    port = free_port()
    rproc = start_redis(port, str(work), system=True)
    url = f"redis://127.0.0.1:{port}/0"
    path = work / "big.json"
    size = write_file(path, a.tasks)
    key_proc = subprocess.run(
        [sys.executable, "-m", "producer.cli", "keygen", "--print"], capture_output=True, text=True, cwd=ROOT
    )
    env = env_with(REDIS_URL=url, JOBCTL_KEY=key_proc.stdout.strip(), JOBCTL_HOME=str(work), JOBCTL_QUEUE="big")
    stop = mp.Event()
    q: mp.Queue[list[float]] = mp.Queue()
    ping = mp.Process(target=pinger, args=(url, stop, q, a.every))
    ping.start()
    time.sleep(1)
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sub = subprocess.run(
        [sys.executable, "-m", "producer.cli", "submit", str(path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(1)
    stop.set()
    samples = sorted(q.get(timeout=60))
    ping.join(10)
    conn = redis.Redis.from_url(url)
    depth = conn.llen("rq:queue:big")
    rproc.terminate()
    rproc.wait(10)
    if sub.returncode != 0:
        raise SystemExit(f"submit failed: {sub.stderr[-2000:]}")

    def pct(p: float) -> float:
        return round(1000 * samples[min(len(samples) - 1, int(p * len(samples)))], 2)

    dump(
        a.out,
        {
            "tasks": a.tasks,
            "file_mb": round(size / 1e6, 1),
            "submit_wall_s": round(wall, 1),
            "submit_tasks_per_s": round(a.tasks / wall),
            "submit_peak_rss_mb": round(after.ru_maxrss / 1024),
            "submit": json.loads(sub.stdout),
            "queue_depth_after": depth,
            "pings": len(samples),
            "ping_ms": {"p50": pct(0.5), "p99": pct(0.99), "p999": pct(0.999), "worst": round(1000 * samples[-1], 2)},
            "ping_every_s": a.every,
            "cpu_count": os.cpu_count(),
            "before_children_rss_mb": round(before.ru_maxrss / 1024),
        },
    )


if __name__ == "__main__":
    main()
