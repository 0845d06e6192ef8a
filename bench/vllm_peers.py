"""vLLM's own paths for bench/gpu_saturation.py, and what it reads off the GPU and vLLM's logs.

The offline engine and `vllm run-batch` each run as a child process of their own
(`python -m bench.vllm_peers offline SPEC` / `run-batch TIMING -- ARGS`), so each engine's GPU
memory goes with its process before the next engine starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def gpu_memory_mib() -> float | None:
    """GPU memory in use on the device (nvidia-smi; no CUDA context of our own)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        return float(out.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def wait_gpu_free(limit_mib: float = 2048, timeout: float = 30) -> None:
    """vLLM sizes its KV cache from free memory at start: wait until the previous engine let go."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        used = gpu_memory_mib()
        if used is None or used < limit_mib:
            return
        time.sleep(0.5)


LOG_FACTS = {
    "engine_init_s": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s",
    "compile_s": r"init engine .* took [\d.]+ s \(compilation: ([\d.]+) s",
    "graph_capture_s": r"Graph capturing finished in ([\d.]+) secs",
    "graph_capture_gib": r"Graph capturing finished in [\d.]+ secs, took ([\d.]+) GiB",
    "weights_gib": r"Model loading took ([\d.]+) GiB",
    "kv_cache_gib": r"Available KV cache memory: ([\d.]+) GiB",
    "kv_cache_tokens": r"GPU KV cache size: ([\d,]+) tokens",
    "max_concurrency_x": r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x",
}


def log_facts(path: Path) -> dict[str, Any]:
    """vLLM's own start-up figures from its log (the last start in it)."""
    try:
        text = path.read_text(errors="replace")[-3_000_000:]
    except OSError:
        return {}
    facts: dict[str, Any] = {}
    for key, pattern in LOG_FACTS.items():
        found = re.findall(pattern, text)
        if found:
            facts[key] = float(found[-1].replace(",", ""))
    facts["compile_cache_hit"] = "Directly load the compiled graph" in text
    return facts


def output_stats(items: list[tuple[str, str | None, int]]) -> dict[str, Any]:
    """(content, finish_reason, completion tokens) per answer -> counts of valid JSON and cut-offs."""
    valid = 0
    for content, finish, _ in items:
        with contextlib.suppress(ValueError, TypeError):
            if finish == "stop" and isinstance(json.loads(content), dict):
                valid += 1
    return {
        "answers": len(items),
        "valid_json": valid,
        "cut_off": sum(1 for _, f, _ in items if f == "length"),
        "output_tokens": sum(t for _, _, t in items),
    }


def rate(n: float, seconds: float) -> float:
    return round(n / seconds, 2) if seconds > 0 else 0.0


# -- vLLM's own paths (run in child processes, so each engine's GPU memory goes with its process) ----


def offline_child(spec_path: str) -> None:
    """`vllm.LLM(...).chat` over every body of each mix at once; writes its figures after each mix."""
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    spec = json.loads(Path(spec_path).read_text())
    out: dict[str, Any] = {}

    def write() -> None:
        Path(spec["out"]).write_text(json.dumps(out))

    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], **spec["engine"])
    out["engine_start_s"] = round(time.perf_counter() - t0, 2)
    write()
    for mix, path in spec["mixes"].items():
        bodies = [json.loads(line) for line in Path(path).read_text().splitlines()]
        params = []
        for b in bodies:
            rf = b.get("response_format") or {}
            schema = (rf.get("json_schema") or {}).get("schema") if rf.get("type") == "json_schema" else None
            params.append(
                SamplingParams(
                    temperature=float(b.get("temperature") or 0.0),
                    max_tokens=int(b["max_tokens"]),
                    structured_outputs=StructuredOutputsParams(json=schema) if schema is not None else None,
                )
            )
        t = time.perf_counter()
        results = llm.chat([b["messages"] for b in bodies], params, use_tqdm=False)
        wall = time.perf_counter() - t
        items = [(r.outputs[0].text, r.outputs[0].finish_reason, len(r.outputs[0].token_ids)) for r in results]
        st = output_stats(items)
        prompt = sum(len(r.prompt_token_ids or []) for r in results)
        out[mix] = {
            **st,
            "wall_s": round(wall, 3),
            "req_per_s": rate(len(items), wall),
            "out_tok_per_s": rate(st["output_tokens"], wall),
            "prompt_tokens_mean": round(prompt / max(1, len(results))),
        }
        write()


def run_batch_child(timing_path: str, argv: list[str]) -> None:
    """vLLM's run_batch main(), timed: the engine start apart from the batch itself (vllm 0.26.0)."""
    from vllm.entrypoints.openai import run_batch as rb
    from vllm.entrypoints.openai.api_server import build_async_engine_client
    from vllm.usage.usage_lib import UsageContext

    sys.argv = ["run_batch", *argv]
    args = rb.parse_args()
    rb.validate_run_batch_args(args)
    stamps: dict[str, float] = {"t0": time.perf_counter()}

    async def go() -> None:
        async with build_async_engine_client(args, usage_context=UsageContext.OPENAI_BATCH_RUNNER) as engine:
            stamps["ready"] = time.perf_counter()
            await rb.run_batch(engine, args)
            stamps["done"] = time.perf_counter()

    asyncio.run(go())
    Path(timing_path).write_text(
        json.dumps(
            {
                "engine_start_s": round(stamps["ready"] - stamps["t0"], 2),
                "batch_s": round(stamps["done"] - stamps["ready"], 3),
            }
        )
    )


def run_child(args: list[str], log: Path, timeout: float) -> int:
    """This module as a child in its own session (vLLM's engine processes go with it)."""
    env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS="1")  # as the served engine, for one compile cache
    with open(log, "ab") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.vllm_peers", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return -1
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            wait_gpu_free()


def gpu_name() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        )
        return out.stdout.strip() or None
    return None


def vllm_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vllm")
    except PackageNotFoundError:
        return None


def main(argv: list[str]) -> None:
    if argv[:1] == ["offline"]:
        offline_child(argv[1])
    elif argv[:1] == ["run-batch"] and argv[2:3] == ["--"]:
        run_batch_child(argv[1], argv[3:])
    else:
        sys.exit("usage: python -m bench.vllm_peers offline SPEC.json | run-batch TIMING.json -- RUN_BATCH_ARGS")


if __name__ == "__main__":
    main(sys.argv[1:])
