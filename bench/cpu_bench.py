"""CPU-machine benchmark, every comparison in one run (these machines are noisy, so ratios matter).

Against an instant fake OpenAI server (a subprocess on the same cores):
  - submit: a 10,000-task file validated, encrypted, staged and published (tasks/s), and RQ's bare
    enqueue_many of the same count
  - drain: `jobctl worker --burst` at --concurrency (jobs/s, CPU ms per job), over the SDK's aiohttp client
    (docs/BENCHMARKS.md has the run that compared it with the hand-made sharded httpx pool it replaced)
  - blast: the same requests fired with AsyncOpenAI at the same concurrency, no Redis (req/s, CPU ms/request)
  - `rq worker -w worker.rq_worker.TaskWorker` (the README's plain RQ worker) on the same jobs, one at a time

    python -m bench.cpu_bench --redis-url redis://127.0.0.1:6379/14 --tasks 5000 --concurrency 64 --out x.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.common import dump, env_with, job_span_rate, rq_worker_cmd, run_timed, start_fake, triage_tasks
from jobs.config import Settings
from jobs.crypto import generate_key
from jobs.store import codec
from producer.client import Client


def submit_bench(settings: Settings, conn: redis.Redis, n: int) -> dict:
    path = Path(tempfile.mkdtemp()) / "tasks.json"
    path.write_text(json.dumps(triage_tasks(n, "s")))
    client = Client(settings, connection=conn)
    t0 = time.perf_counter()
    res = client.submit_file(path)
    wall = time.perf_counter() - t0
    conn.flushdb()
    from rq import Queue
    from rq.serializers import JSONSerializer

    q = Queue("plain", connection=conn, serializer=JSONSerializer)
    datas = [Queue.prepare_data(codec.TASK_FUNC, args=["x" * 400]) for _ in range(n)]
    t1 = time.perf_counter()
    q.enqueue_many(datas)
    rq_wall = time.perf_counter() - t1
    conn.flushdb()
    return {
        "tasks": res.total,
        "submit_tasks_per_s": round(n / wall, 1),
        "rq_enqueue_many_jobs_per_s": round(n / rq_wall, 1),
    }


def fill(settings: Settings, conn: redis.Redis, n: int, prefix: str) -> None:
    conn.flushdb()
    Client(settings, connection=conn).submit(triage_tasks(n, prefix))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--submit-tasks", type=int, default=10000)
    ap.add_argument("--rq-tasks", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--port", type=int, default=18123)
    ap.add_argument("--out")
    a = ap.parse_args()

    key = generate_key()
    home = tempfile.mkdtemp()
    settings = Settings.from_env(env={}, redis_url=a.redis_url, key=key, queue="bench", home=home)
    conn = redis.Redis.from_url(a.redis_url)
    conn.flushdb()
    url = f"http://127.0.0.1:{a.port}/v1"
    env = env_with(
        REDIS_URL=a.redis_url,
        JOBCTL_KEY=key,
        JOBCTL_QUEUE="bench",
        JOBCTL_HOME=home,
        OPENAI_BASE_URL=url,
        JOBCTL_MODEL="fake-model",
    )
    fake = start_fake(a.port)
    out: dict = {"machine": "2-core CPU machine, fake server on the same cores", "concurrency": a.concurrency}
    try:
        out["submit"] = submit_bench(settings, conn, a.submit_tasks)

        worker = [sys.executable, "-m", "producer.cli", "worker", "--burst", "--json", "-c", str(a.concurrency)]
        idle = run_timed(worker, env)  # start-up cost alone (imports, connections), subtracted below
        fill(settings, conn, a.tasks, "d")
        t = run_timed(worker, env)
        rep = json.loads(t.stdout)
        assert rep["done"] == a.tasks, rep
        out["drain"] = {
            "jobs": rep["done"],
            "jobs_per_s": rep["jobs_per_second"],
            "cpu_ms_per_job": round(1000 * (t.cpu - idle.cpu) / a.tasks, 3),
            "startup_cpu_s": round(idle.cpu, 2),
        }

        b = run_timed(
            [
                sys.executable,
                "-m",
                "bench.raw_blast",
                "--base-url",
                url,
                "--n",
                str(a.tasks),
                "--concurrency",
                str(a.concurrency),
                "--model",
                "fake-model",
            ],
            env,
        )
        out["blast"] = json.loads(b.stdout)

        for name, cls, n in (("rq_task_worker", "worker.rq_worker.TaskWorker", a.rq_tasks),):
            fill(settings, conn, n, name)
            t = run_timed(rq_worker_cmd(a.redis_url, cls, "bench"), env)
            # Rated from the jobs' own start and end stamps: the worker's start-up is not counted.
            out[name] = job_span_rate(conn, "bench")
            assert out[name]["jobs"] == n, (name, out[name], t.stderr[-2000:])
        conn.flushdb()
    finally:
        fake.terminate()
        fake.wait()
    d, bl, sub = out["drain"], out["blast"], out["submit"]
    out["ratios"] = {
        "drain_vs_blast": round(d["jobs_per_s"] / bl["req_per_s"], 3),
        "drain_cpu_vs_blast_cpu": round(d["cpu_ms_per_job"] / bl["cpu_ms_per_request"], 3),
        "submit_vs_enqueue_many": round(sub["submit_tasks_per_s"] / sub["rq_enqueue_many_jobs_per_s"], 3),
        "drain_vs_rq_task_worker": round(d["jobs_per_s"] / out["rq_task_worker"]["jobs_per_s"], 2),
    }
    r = out["ratios"]
    out["targets"] = {
        "drain >= 1.0x blast": r["drain_vs_blast"] >= 1.0,
        "drain CPU/job <= 0.8x blast CPU/request": r["drain_cpu_vs_blast_cpu"] <= 0.8,
        "submit >= 0.8x enqueue_many": r["submit_vs_enqueue_many"] >= 0.8,
    }
    dump(a.out, out)


if __name__ == "__main__":
    main()
