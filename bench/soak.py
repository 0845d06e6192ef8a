"""Soak run: many tasks through `jobctl worker` against the fault-injecting fake server.

Everything runs as its own process, as in production: a private redis-server (no persistence),
the fake OpenAI server (`python -m tests.fake_openai`, with injected faults), and the worker
(`jobctl worker --burst --json`). While the worker drains, its RSS is sampled every 0.5 s with
psutil, next to the drain's progress (tasks finished or failed), to show whether memory grows
with the number of tasks drained. At the end every task's outcome is read back and checked:
each custom_id exactly once, completed or failed with a reason code, one results-stream entry
per task, nothing left queued or started. Prints one JSON summary; exits 1 if any check fails.

    .venv/bin/python bench/soak.py                      # 20,000 tasks, 5% faults
    .venv/bin/python bench/soak.py --tasks 2000         # a quick one
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import free_port, redis_server_binary  # noqa: E402
from jobs.config import Settings  # noqa: E402
from jobs.crypto import generate_key  # noqa: E402
from jobs.store import Batch, keys  # noqa: E402
from producer.client import Client  # noqa: E402

FAULTS = "500,close,hang,invalid_json,length"
MiB = 1024 * 1024


def wait_until(check: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not come up in {timeout}s")


def task(i: int) -> dict[str, Any]:
    return {
        "custom_id": f"soak-{i:06d}",
        "kind": "email.triage",
        "input": {
            "from": f"sender{i % 97}@example.org",
            "subject": f"Invoice {i} and the meeting on Friday",
            "body": f"Hi, message {i}. Could we move the review to Friday at 10? The invoice for "
            f"{100 + i % 900} EUR is attached; please confirm you received it. " * 2,
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--fault-rate", type=float, default=0.05)
    ap.add_argument("--faults", default=FAULTS)
    ap.add_argument("--request-timeout", type=float, default=2.0)
    ap.add_argument("--hang-seconds", type=float, default=3.0)
    ap.add_argument("--latency", type=float, default=0.02, help="fake server latency per request (s)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--sample-every", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=3600, help="give up on the worker after this long (s)")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="jobctl-soak-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        rport, fport = free_port(), free_port()
        procs.append(
            subprocess.Popen(
                [
                    redis_server_binary(),
                    "--port",
                    str(rport),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(work),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        conn = redis.Redis(port=rport)
        wait_until(conn.ping, 10, "redis-server")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.fake_openai",
                    "--port",
                    str(fport),
                    "--fault-rate",
                    str(a.fault_rate),
                    "--faults",
                    a.faults,
                    "--hang-seconds",
                    str(a.hang_seconds),
                    "--latency",
                    str(a.latency),
                    "--seed",
                    "1",
                ],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        base_url = f"http://127.0.0.1:{fport}/v1"
        wait_until(lambda: urllib.request.urlopen(base_url + "/models", timeout=1).status == 200, 20, "fake server")

        key = generate_key()
        settings = Settings.from_env(
            env={}, redis_url=f"redis://127.0.0.1:{rport}/0", home=work / "home", key=key, queue="soak"
        )
        client = Client(settings, connection=conn)
        t0 = time.monotonic()
        sub = client.submit([task(i) for i in range(a.tasks)])
        submit_s = time.monotonic() - t0
        assert sub.total == a.tasks, sub

        env = {
            **os.environ,
            "REDIS_URL": settings.redis_url or "",
            "JOBCTL_KEY": key,
            "JOBCTL_QUEUE": "soak",
            "JOBCTL_HOME": str(work / "home"),
            "OPENAI_BASE_URL": base_url,
            "JOBCTL_REQUEST_TIMEOUT": str(a.request_timeout),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("OPENAI_API_KEY", None)
        log = (work / "worker.log").open("wb")
        t1 = time.monotonic()
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "producer.cli",
                "-v",
                "worker",
                "--burst",
                "--json",
                "--concurrency",
                str(a.concurrency),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        procs.append(worker)
        ps = psutil.Process(worker.pid)
        finished, failed = keys.finished("soak"), keys.failed("soak")
        samples: list[tuple[float, int, int]] = []  # (seconds, tasks ended, rss bytes)
        while worker.poll() is None:
            if time.monotonic() - t1 > a.timeout:
                worker.kill()
                raise SystemExit(f"the worker ran past {a.timeout}s")
            try:
                rss = ps.memory_info().rss
            except psutil.NoSuchProcess:
                break
            ended = int(conn.zcard(finished)) + int(conn.zcard(failed))
            samples.append((time.monotonic() - t1, ended, rss))
            time.sleep(a.sample_every)
        out, _ = worker.communicate(timeout=60)
        wall = time.monotonic() - t1
        log.close()
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
        if worker.returncode != 0 or not lines:
            tail = (work / "worker.log").read_text()[-3000:]
            raise SystemExit(f"the worker exited {worker.returncode}:\n{tail}")
        report = json.loads(lines[-1])

        # -- checks: every custom_id once, every failure with a reason, one result entry each ------
        outcomes = list(client.results(sub.batch_id))
        per_id = Counter(o.custom_id for o in outcomes)
        expected = {task(i)["custom_id"] for i in range(a.tasks)}
        missing = expected - set(per_id)
        twice = sorted(k for k, v in per_id.items() if v > 1)
        unknown = set(per_id) - expected
        no_reason = [o.custom_id for o in outcomes if not o.ok and not (o.error and o.error.get("code"))]
        ids = [m.job_id for m in Batch(sub.batch_id, conn, settings.cipher()).members()]
        with conn.pipeline(transaction=False) as p:
            for j in ids:
                p.xlen(keys.results(j))
            entries = Counter(int(n) for n in p.execute())
        started_left = int(conn.zcard(keys.started("soak")))
        queued_left = int(conn.llen(keys.queue("soak")))
        status = client.status(sub.batch_id)
        failed_by = Counter(o.error["code"] for o in outcomes if not o.ok and o.error)
        zero_loss = (
            not missing
            and not twice
            and not unknown
            and not no_reason
            and entries == {1: a.tasks}
            and started_left == 0
            and queued_left == 0
        )

        # -- memory against progress ------------------------------------------------------------------
        quarters: dict[str, dict[str, float]] = {}
        for q in range(4):
            lo, hi = a.tasks * q / 4, a.tasks * (q + 1) / 4
            rs = [rss for _, ended, rss in samples if lo <= ended < hi or (q == 3 and ended >= hi)]
            if rs:
                quarters[f"{25 * (q + 1)}%"] = {"peak_rss_mib": round(max(rs) / MiB, 1), "samples": len(rs)}
        peak_all = max((rss for *_, rss in samples), default=0)

        summary = {
            "tasks": a.tasks,
            "zero_loss": zero_loss,
            "completed": sum(1 for o in outcomes if o.ok),
            "failed": sum(1 for o in outcomes if not o.ok),
            "failed_by_code": dict(failed_by.most_common()),
            "missing": len(missing),
            "duplicated": len(twice),
            "result_entries_per_task": {str(k): v for k, v in sorted(entries.items())},
            "left_started": started_left,
            "left_queued": queued_left,
            "batch_status": status.status,
            "retries": report["retries"],
            "superseded": report["superseded"],
            "requeued_abandoned": report["requeued_abandoned"],
            "max_in_flight": report["max_in_flight"],
            "drain_wall_s": report["wall_seconds"],
            "jobs_per_s": report["jobs_per_second"],
            "worker_process_wall_s": round(wall, 1),
            "submit_s": round(submit_s, 1),
            "peak_rss_mib_by_progress": quarters,
            "peak_rss_mib": round(peak_all / MiB, 1),
            "rss_samples": len(samples),
            "settings": {
                "fault_rate": a.fault_rate,
                "faults": a.faults,
                "request_timeout_s": a.request_timeout,
                "hang_seconds": a.hang_seconds,
                "latency_s": a.latency,
                "concurrency": a.concurrency,
            },
        }
        print(json.dumps(summary, indent=2))
        return 0 if zero_loss else 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
