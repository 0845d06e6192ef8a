"""What one task costs Redis: commands, bytes and redis-server CPU per task, for submit, the drain
(claim, heartbeat, finish, with several drainers at once) and reading results. From these, the
task rate at which one Redis core saturates (docs/SCALE.md).

A redis-server of its own (so its INFO counters see nothing else), fake OpenAI servers (instant
answers), and `jobctl worker --burst` processes, as a user would run them:

    python -m bench.redis_cost --tasks 20000 --drainers 4 --out docs/runs/redis-cost.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import dump, env_with, free_port, start_fake, start_redis, triage_tasks
from jobs.config import Settings
from jobs.crypto import generate_key
from producer.client import Client


class Meter:
    """INFO counters before and after a phase: commands by name, bytes in and out, server CPU."""

    def __init__(self, conn: redis.Redis):
        self.conn = conn

    def snapshot(self) -> dict[str, Any]:
        stats = self.conn.info("stats")
        cpu = self.conn.info("cpu")
        cmds = {k.removeprefix("cmdstat_"): v["calls"] for k, v in self.conn.info("commandstats").items()}
        return {
            "in": stats["total_net_input_bytes"],
            "out": stats["total_net_output_bytes"],
            "cpu": cpu["used_cpu_sys"] + cpu["used_cpu_user"],
            "cmds": cmds,
        }

    def measure(self, before: dict[str, Any], after: dict[str, Any], tasks: int) -> dict[str, Any]:
        cmds = {k: after["cmds"].get(k, 0) - before["cmds"].get(k, 0) for k in after["cmds"]}
        cmds = {k: v for k, v in sorted(cmds.items(), key=lambda kv: -kv[1]) if v > 0}
        # INFO and CONFIG calls of the meter itself are left out.
        for own in ("info", "config|resetstat", "config"):
            cmds.pop(own, None)
        total = sum(cmds.values())
        return {
            "tasks": tasks,
            "commands_per_task": round(total / tasks, 2),
            "evalsha_per_task": round(cmds.get("evalsha", 0) / tasks, 3),
            "bytes_in_per_task": round((after["in"] - before["in"]) / tasks, 1),
            "bytes_out_per_task": round((after["out"] - before["out"]) / tasks, 1),
            "server_cpu_us_per_task": round(1e6 * (after["cpu"] - before["cpu"]) / tasks, 1),
            "top_commands_per_task": {k: round(v / tasks, 3) for k, v in list(cmds.items())[:12]},
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--drainers", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--out")
    a = ap.parse_args()

    workdir = tempfile.mkdtemp()
    port = free_port()
    rproc = start_redis(port, workdir, system=True)
    url = f"redis://127.0.0.1:{port}/0"
    conn = redis.Redis.from_url(url)
    meter = Meter(conn)
    key = generate_key()
    settings = Settings.from_env(env={}, redis_url=url, key=key, queue="scale", home=workdir)
    client = Client(settings, connection=conn)
    ports = [free_port() for _ in range(a.drainers)]
    fakes = [start_fake(p) for p in ports]
    out: dict[str, Any] = {"redis": conn.info("server")["redis_version"], "drainers": a.drainers}
    try:
        tasks = triage_tasks(a.tasks, "s")
        b = meter.snapshot()
        t0 = time.perf_counter()
        sub = client.submit(tasks)
        out["submit_wall_s"] = round(time.perf_counter() - t0, 2)
        out["submit"] = meter.measure(b, meter.snapshot(), a.tasks)

        procs = []
        b = meter.snapshot()
        t0 = time.perf_counter()
        for fport in ports:
            env = env_with(
                REDIS_URL=url,
                JOBCTL_KEY=key,
                JOBCTL_QUEUE="scale",
                JOBCTL_HOME=workdir,
                OPENAI_BASE_URL=f"http://127.0.0.1:{fport}/v1",
                JOBCTL_MODEL="fake-model",
                JOBCTL_STRUCTURED_OUTPUT="json_schema",
                JOBCTL_CONCURRENCY=str(a.concurrency),
            )
            cmd = [sys.executable, "-m", "producer.cli", "worker", "--burst", "--json"]
            root = Path(__file__).resolve().parents[1]
            procs.append(subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE))
        done = 0
        for p in procs:
            stdout, _ = p.communicate(timeout=1800)
            import json

            done += int(json.loads(stdout.decode().strip().splitlines()[-1])["done"])
        wall = time.perf_counter() - t0
        out["drain"] = {**meter.measure(b, meter.snapshot(), a.tasks), "wall_s": round(wall, 2), "done": done}
        out["drain"]["jobs_per_s"] = round(done / wall, 1)

        b = meter.snapshot()
        n = sum(1 for _ in client.results(sub.batch_id))
        out["results"] = meter.measure(b, meter.snapshot(), n)

        b = meter.snapshot()
        client.status(sub.batch_id)
        out["status"] = meter.measure(b, meter.snapshot(), a.tasks)

        cpu = sum(out[k]["server_cpu_us_per_task"] for k in ("submit", "drain", "results"))
        out["server_cpu_us_per_task_end_to_end"] = round(cpu, 1)
        out["saturation_tasks_per_s_one_core"] = round(1e6 / cpu) if cpu else None
        out["saturation_drain_only_tasks_per_s"] = (
            round(1e6 / out["drain"]["server_cpu_us_per_task"]) if out["drain"]["server_cpu_us_per_task"] else None
        )
        out["memory_bytes_per_finished_task"] = round(conn.info("memory")["used_memory"] / a.tasks)
    finally:
        for f in fakes:
            f.terminate()
        rproc.terminate()
        rproc.wait(10)
    dump(a.out, out)


if __name__ == "__main__":
    main()
