"""GPU benchmark: the vLLM lifecycle and the drain on real vLLM, every comparison in one run.

On the device machine (see docs/BENCHMARKS.md for the three `run` calls that install vLLM):
    python3 -m bench.gpu_bench --model /tmp/m8b --load-format dummy --out $OUT/gpu.json

1. The lifecycle module (worker.vllm_lifecycle) itself: cold start to ready, warm-up, sleep,
   wake_up, and wake to the first drained result.
2. 2,000 email.triage tasks at each concurrency: the drain through Redis/RQ, the same requests
   fired straight at vLLM with asyncio (raw), and a plain `rq worker` (one request per job).
Results are written after every step, so a run cut short still reports what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import job_span_rate, rq_worker_cmd, start_redis, triage_tasks
from bench.raw_blast import blast
from jobs.config import Settings
from jobs.crypto import generate_key
from producer.client import Client
from worker.drain import DrainOptions, drain_queue
from worker.vllm_lifecycle import VLLMConfig, VLLMServer

RESULTS: dict[str, Any] = {}


def save(out: str | None) -> None:
    text = json.dumps(RESULTS, indent=2)
    if out:
        Path(out).write_text(text)
    print(text, flush=True)


def first_result_watch(conn: redis.Redis, queue: str, t0: float, box: dict[str, float]) -> threading.Thread:
    def watch() -> None:
        while time.perf_counter() - t0 < 120:
            if conn.zcard(f"rq:finished:{queue}") or conn.zcard(f"rq:failed:{queue}"):
                box["first_result_s"] = time.perf_counter() - t0
                return
            time.sleep(0.005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def reset_prefix_cache(srv: VLLMServer) -> None:
    """Each measured run starts with a cold prefix cache: the runs send identical prompts, and the
    second of two would otherwise be served partly from the first one's cache."""
    import urllib.request

    req = urllib.request.Request(
        srv.base_url.removesuffix("/v1") + "/reset_prefix_cache",
        method="POST",
        headers={"Authorization": f"Bearer {srv.api_key}"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def drain(conn: redis.Redis, settings: Settings, srv: VLLMServer, concurrency: int) -> dict[str, Any]:
    opts = DrainOptions(
        queues=[settings.queue],
        model=srv.model_name,
        concurrency=concurrency,
        burst=True,
        style="json_schema",
        poll_interval=0.2,
    )
    rep = asyncio.run(drain_queue(conn, settings.cipher(), srv.base_url, srv.api_key, opts, timeout=300))
    return rep.as_dict()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--load-format")
    ap.add_argument("--served-model-name", default="m")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--max-cudagraph-capture-size", type=int, default=32)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--concurrency", default="256,128,64")
    ap.add_argument("--naive-jobs", type=int, default=120)
    ap.add_argument("--redis-port", type=int, default=6390)
    ap.add_argument(
        "--command", help="server command prefix (a dry run: 'python -m tests.fake_openai vllm-compat serve')"
    )
    ap.add_argument("--out")
    a = ap.parse_args()

    redis_proc = start_redis(a.redis_port)
    url = f"redis://127.0.0.1:{a.redis_port}/0"
    conn = redis.Redis.from_url(url)
    key = generate_key()
    settings = Settings.from_env(env={}, redis_url=url, key=key, queue="bench", home=tempfile.mkdtemp())
    client = Client(settings, connection=conn)
    log = Path(tempfile.gettempdir()) / "vllm-bench.log"
    cfg = VLLMConfig(
        model=a.model,
        served_model_name=a.served_model_name,
        load_format=a.load_format,
        max_model_len=a.max_model_len,
        max_cudagraph_capture_size=a.max_cudagraph_capture_size,
        log_path=log,
    )
    if a.command:
        cfg.command = shlex.split(a.command)
    srv = VLLMServer(cfg)
    RESULTS["config"] = {
        "model": a.model,
        "load_format": a.load_format,
        "max_model_len": a.max_model_len,
        "max_cudagraph_capture_size": a.max_cudagraph_capture_size,
        "tasks": a.tasks,
    }
    try:
        # 1. lifecycle
        t = time.perf_counter()
        srv.start()
        srv.wait_ready()
        RESULTS["lifecycle"] = {"cold_start_to_ready_s": round(time.perf_counter() - t, 2)}
        t = time.perf_counter()
        n = srv.warm_up()
        RESULTS["lifecycle"].update(warmup_s=round(time.perf_counter() - t, 2), warmup_requests=n)
        t = time.perf_counter()
        srv.sleep(level=1)
        RESULTS["lifecycle"]["sleep_s"] = round(time.perf_counter() - t, 2)
        save(a.out)
        client.submit(triage_tasks(200, "wake"))
        box: dict[str, float] = {}
        t0 = time.perf_counter()
        watcher = first_result_watch(conn, settings.queue, t0, box)
        srv.wake_up()
        RESULTS["lifecycle"]["wake_up_s"] = round(time.perf_counter() - t0, 3)
        wake_drain = drain(conn, settings, srv, 64)
        watcher.join(1)
        RESULTS["lifecycle"]["wake_to_first_result_s"] = round(box.get("first_result_s", -1), 3)
        RESULTS["lifecycle"]["timings_from_module"] = srv.timings
        RESULTS["lifecycle"]["wake_drain_done"] = wake_drain["done"]
        save(a.out)

        # 2. throughput: the drain and raw vLLM, same requests, same concurrency
        RESULTS["throughput"] = {}
        for c in [int(x) for x in a.concurrency.split(",")]:
            conn.flushdb()
            t = time.perf_counter()
            client.submit(triage_tasks(a.tasks, f"c{c}"))
            submit_s = time.perf_counter() - t
            reset_prefix_cache(srv)
            rep = drain(conn, settings, srv, c)
            reset_prefix_cache(srv)
            raw = asyncio.run(blast(srv.base_url, srv.api_key, a.tasks, c, "json_schema", srv.model_name))
            RESULTS["throughput"][str(c)] = {
                "submit_s": round(submit_s, 2),
                "drain_jobs_per_s": rep["jobs_per_second"],
                "drain_out_tok_per_s": rep["output_tokens_per_second"],
                "drain_done": rep["done"],
                "drain_failed": rep["failed"],
                "drain_errors": rep["errors"],
                "drain_max_in_flight": rep["max_in_flight"],
                "raw_req_per_s": raw["req_per_s"],
                "raw_out_tok_per_s": raw["output_tokens_per_s"],
                "drain_vs_raw": round(rep["jobs_per_second"] / raw["req_per_s"], 3),
            }
            save(a.out)

        # 3. naive: a plain RQ SimpleWorker, one request per job (time-boxed by --max-jobs)
        conn.flushdb()
        client.submit(triage_tasks(a.naive_jobs + 20, "naive"))
        env = dict(
            os.environ,
            JOBCTL_KEY=key,
            OPENAI_BASE_URL=srv.base_url,
            OPENAI_API_KEY=srv.api_key,
            JOBCTL_MODEL=srv.model_name,
            JOBCTL_STRUCTURED_OUTPUT="json_schema",
        )
        cmd = rq_worker_cmd(url, "rq.worker.SimpleWorker", "bench", "--max-jobs", str(a.naive_jobs))
        subprocess.run(cmd, env=env, capture_output=True, timeout=400)
        RESULTS["naive_rq_simple_worker"] = job_span_rate(conn, "bench")
        best = max(RESULTS["throughput"].values(), key=lambda v: v["drain_jobs_per_s"])
        RESULTS["drain_vs_naive"] = round(best["drain_jobs_per_s"] / RESULTS["naive_rq_simple_worker"]["jobs_per_s"], 1)
        save(a.out)
    finally:
        srv.stop()
        redis_proc.terminate()
        if a.out and log.exists():
            Path(a.out).with_name("vllm.log").write_bytes(log.read_bytes()[-2_000_000:])


if __name__ == "__main__":
    main()
