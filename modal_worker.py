"""jobctl on Modal: a GPU drainer that starts from a memory snapshot, and a cron that wakes it when work waits.

Deploy (the README's Modal section has the whole story):

    modal secret create jobctl REDIS_URL=rediss://... JOBCTL_KEY=... [HF_TOKEN=hf_...]
    modal deploy modal_worker.py
    modal run modal_worker.py::download_weights      # once per model: the weights into the HF volume

Then `jobctl drain --remote` drains now; the `check_queue` cron drains on its own schedule.

How a drain runs. `Drainer` starts vLLM in its container, warms it up with the real task prompts and schemas,
and puts it to sleep (level 1: weights in CPU memory) in its `snap=True` hook; Modal then snapshots the
container, GPU memory included. Later starts restore that snapshot and only wake vLLM up. If the wake fails
(vLLM died in the restore, or /wake_up errs), the container starts vLLM the slow way and the drain report
says so. That fallback runs only once Python runs: a restore that kills the runner before (the segfault of
modal-client #4132) is Modal's to retry, and Modal itself retries a task without the snapshot when the GPU
memory restore fails (modal 1.6.4, _runtime/task_lifecycle_manager.py). The drain is worker.drain against the
local vLLM until the queue is empty or the time budget ends; the budget counts from the container's start
for its first call, so a slow start cannot push the drain past Modal's timeout. Drainers share a queue
safely: each task is claimed atomically under a lease.

`check_queue` runs on a CPU-only image. With no work, or inside the back-off after a failed start, it starts
no GPU. Otherwise it counts the Modal drainers alive in Redis and the calls it started that have not
announced themselves yet, and starts only the shortfall; with none running, it wakes one only when the wake
policy says the work is worth a start (JOBCTL_MODAL_MIN_TASKS, JOBCTL_MODAL_MAX_WAIT).

The deploy is the same wherever this module is imported. Deploy-time knobs (jobs.config.ModalSettings, the
vLLM settings, the queue: the allow-list KNOBS) are read from the deploying shell only when `modal.is_local()`,
and travel to the containers as one secret that stands, in a container, for what was deployed. Every function
depends on the same objects everywhere (Modal checks their number when a container starts), and a shell's
leftovers (JOBCTL_VLLM_COMMAND, _PORT, _LOG_PATH) never ship. Secrets (REDIS_URL, JOBCTL_KEY, HF_TOKEN) come
from the Modal secret `jobctl` only. Importing this module needs no Modal credentials: it only builds
definitions.

Volumes: the Hugging Face cache only, committed before the snapshot (see hf_cache below for why there is no
vLLM compile-cache volume).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import modal
import redis

from jobs.config import ConfigError, ModalSettings, Settings, VLLMSettings
from jobs.connection import connect
from jobs.errors import JobctlError
from jobs.store import queues as store_queues
from worker.drain import run_drain
from worker.vllm_lifecycle import DEFAULT_CAPTURE_SIZE, LifecycleError, ServerCrashedError, VLLMConfig, VLLMServer

log = logging.getLogger("jobctl.modal")

APP_NAME = "jobctl"
SECRET_NAME = "jobctl"
# A secret without these fails the deploy, not the first drain. HF_TOKEN is optional (gated models only).
REQUIRED_SECRET_KEYS = ["REDIS_URL", "JOBCTL_KEY"]
HF_CACHE_PATH = "/root/.cache/huggingface"
# The pins live in pyproject.toml only; uv reads it when Modal builds the images (never in a container).
PYPROJECT = Path(__file__).resolve().parent / "pyproject.toml"
SOURCES = ("jobs", "worker", "producer")
# Modal drainers register as RQ workers under this prefix and their call id, so the cron tells them apart
# from other workers on the queue and matches them to the calls it started.
DRAINER_PREFIX = store_queues.DRAINER_PREFIX + "modal-"

# The largest batch CUDA graphs are captured for, unless JOBCTL_VLLM_MAX_CUDAGRAPH_CAPTURE_SIZE says: the
# lifecycle's default, so Modal and `jobctl worker` against a local vLLM run the same server. Measured on the
# H100 (docs/BENCHMARKS.md, section 4): from 32 to 512, capture costs 1 -> 8 s and 0.15 -> 0.98 GiB, and
# the drain at up to 1,024 in flight reached the offline engine's throughput with 512. Batches past it run
# eager (at most JOBCTL_VLLM_MAX_NUM_SEQS).
CUDAGRAPH_CAPTURE_SIZE: int | None = DEFAULT_CAPTURE_SIZE

# The knobs that travel from the deploying shell into the containers: an allow-list, not a prefix. Local-only
# vLLM settings (its command, port, log file) stay out.
_SETTINGS_KNOBS = ("queue", "result_ttl", "lease_seconds", "max_attempts", "request_timeout")
_VLLM_LOCAL_ONLY = ("command", "port", "log_path")
KNOBS: tuple[str, ...] = (
    *(Settings.env_var(f) for f in _SETTINGS_KNOBS),
    *ModalSettings.env_vars().values(),
    *(var for f, var in VLLMSettings.env_vars().items() if f not in _VLLM_LOCAL_ONLY),
)


class RemoteDrainError(JobctlError):
    """The deployed Drainer could not be reached or called."""


def capture_size(cfg: ModalSettings, vllm: VLLMSettings) -> int | None:
    """The CUDA-graph capture size the containers get (None: eager, no graphs)."""
    if vllm.max_cudagraph_capture_size:
        return vllm.max_cudagraph_capture_size
    if vllm.enforce_eager:
        return None
    top = min(CUDAGRAPH_CAPTURE_SIZE, cfg.concurrency) if CUDAGRAPH_CAPTURE_SIZE else cfg.concurrency
    return min(top, vllm.max_num_seqs) if vllm.max_num_seqs else top


def deploy_knobs(env: Mapping[str, str]) -> dict[str, str | None]:
    """Every knob in KNOBS with its value in `env` (None: unset), checked; the capture size filled in.

    Every name is always present, so the secret built from this looks the same (`Secret.from_dict([names])`)
    whatever the shell held. Raises ConfigError for a value the containers could not use.
    """
    cfg = ModalSettings.from_env(env)
    vllm = VLLMSettings.from_env(env)
    knobs: dict[str, str | None] = {name: env.get(name) or None for name in KNOBS}
    # The queue name and the drain's limits that travel, checked here rather than at the first drain.
    Settings.from_env({k: v for k, v in knobs.items() if v and not k.startswith(("JOBCTL_MODAL_", "JOBCTL_VLLM_"))})
    cap = capture_size(cfg, vllm)
    knobs[VLLMSettings.env_var("max_cudagraph_capture_size")] = str(cap) if cap else None
    return knobs


def in_container() -> bool:
    """True inside a Modal container (False here, including `.local()` calls)."""
    return not modal.is_local()


def _definitions() -> tuple[ModalSettings, VLLMSettings, dict[str, str | None]]:
    # In a container the definitions come from defaults only: the deployed values arrive as the knobs secret,
    # and nothing in the container's environment may change what this module defines.
    env: Mapping[str, str] = os.environ if not in_container() else {}
    try:
        knobs = deploy_knobs(env) if not in_container() else dict.fromkeys(KNOBS)
        return ModalSettings.from_env(env), VLLMSettings.from_env(env), knobs
    except ConfigError as e:
        raise SystemExit(f"modal_worker: {e}") from None


DEPLOY, DEPLOY_VLLM, KNOB_VALUES = _definitions()
GPU_COUNT = DEPLOY_VLLM.tensor_parallel_size or 1

app = modal.App(APP_NAME)

jobctl_secret = modal.Secret.from_name(SECRET_NAME, required_keys=REQUIRED_SECRET_KEYS)
# Modal's own Secret.from_local_environ pattern (the shell's values locally, an empty stand-in in a container),
# with an allow-list, and every name always present so the object is the same everywhere. Listed last: what was
# deployed overrides a key the `jobctl` secret may also hold (the later secret wins).
knobs_secret = modal.Secret.from_dict(KNOB_VALUES)
SECRETS = [jobctl_secret, knobs_secret]

# Modal's vLLM images install with uv (`uv_pip_install`); the project's pins come from pyproject.toml, the vllm
# extra for the GPU image. debian_slim, as where vLLM 0.26 ran on an H100 here (shared/gpu): the wheels carry
# CUDA and Modal provides the driver. Without nvcc, FlashInfer's sampler cannot compile, so it is off (the
# tasks run greedy or warm and sample little); a CUDA "devel" base would allow it.
_base = modal.Image.debian_slim(python_version="3.12")
vllm_image = (
    _base.uv_pip_install(requirements=[str(PYPROJECT)], extra_options="--extra vllm")
    .env(
        {
            # /sleep and /wake_up exist only in dev mode; one inductor thread keeps the GPU snapshot clean.
            "VLLM_SERVER_DEV_MODE": "1",
            "TORCHINDUCTOR_COMPILE_THREADS": "1",
            # Modal's snapshot examples: torch's C++ warnings (c10d's TCPStore after a restore) are noise.
            "TORCH_CPP_LOG_LEVEL": "FATAL",
            "VLLM_USE_FLASHINFER_SAMPLER": "0",
            # A private queue: no usage reports from vLLM or the Hub.
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_XET_HIGH_PERFORMANCE": "1",
            "SAFETENSORS_FAST_GPU": "1",
        }
    )
    .add_local_python_source(*SOURCES)
)
# check_queue only counts: no vLLM, no CUDA, a fast start.
light_image = _base.uv_pip_install(requirements=[str(PYPROJECT)]).add_local_python_source(*SOURCES)

# Weights, downloaded once (download_weights, or by the first boot) and read by every cold start.
#
# No volume for vLLM's compile cache (/root/.cache/vllm): with GPU snapshots it saves nothing that matters and
# risks the restore. A restored container never compiles; only the few boots that make a snapshot after a
# deploy, and a cold start after a failed wake, do (BENCHMARKS: 112 s with a cold cache, 69 s warm, so at most
# ~45 s per such boot). Meanwhile a restored process maps Triton kernels from that cache (in another
# checkpoint/restore system, ai-dynamo/dynamo#9943, restores failed with "__triton_launcher...so: No such file"
# until the cache went into the snapshot), a file missing on the volume is how modal-examples#1558's restore
# on Modal failed, and two boots compiling at once overwrite each other's files (a volume's last commit wins).
# In the container's own filesystem the cache is part of the snapshot, always whole.
# `modal volume delete jobctl-vllm-cache` drops the volume older deploys used.
hf_cache = modal.Volume.from_name("jobctl-huggingface-cache", create_if_missing=True)


def commit_volume(volume: Any) -> bool:
    """Make what this container wrote to `volume` visible to other containers and to later restores.

    Modal commits a volume by itself only when a container stops; a snapshot taken before that would point
    at files the volume never received (modal-examples#1558). Nothing to do outside a container."""
    if not in_container():
        return False
    volume.commit()
    return True


def worker_settings(queue: str | None = None) -> Settings:
    settings: Settings = Settings.from_env(queue=queue)
    if not settings.redis_url:
        raise JobctlError(
            "REDIS_URL is not set in the Modal container; put it in the `jobctl` secret: "
            "modal secret create --force jobctl REDIS_URL=... JOBCTL_KEY=... [HF_TOKEN=...]"
        )
    return settings


def _task_id() -> str:
    # Modal sets a restored container's own task id (modal 1.6.4 memory_restore): a change means a restore.
    return os.environ.get("MODAL_TASK_ID", "")


def _why(e: BaseException) -> str:
    """One line on a start failure: the error's first line, and for a crash the server log's last line.
    Nothing from a task: none has run yet, and the log tail has the API key masked."""
    first = (str(e).splitlines() or [""])[0][:240]
    last = ""
    if isinstance(e, ServerCrashedError):
        last = next((ln.strip() for ln in reversed(e.log_tail.splitlines()) if ln.strip()), "")[:200]
    return f"{type(e).__name__}: {first}" + (f" (log: {last})" if last else "")


def report_start_failure(step: str, e: BaseException) -> None:
    """Record in Redis why the drainer could not start, so `jobctl status` says it and the cron backs off."""
    try:
        settings = worker_settings()
        cfg = ModalSettings.from_env()
        conn = connect(settings)
    except (JobctlError, redis.RedisError) as e2:
        log.error("could not record the start failure (%s)", type(e2).__name__)
        return
    try:
        until = time.time() + cfg.start_backoff
        store_queues.report_start_failure(conn, settings.cipher(), settings.queue, f"{step}: {_why(e)}", until)
    except (JobctlError, redis.RedisError) as e2:
        log.error("could not record the start failure (%s)", type(e2).__name__)
    finally:
        conn.close()


@app.cls(
    gpu=DEPLOY.gpu if GPU_COUNT == 1 else f"{DEPLOY.gpu}:{GPU_COUNT}",
    image=vllm_image,
    volumes={HF_CACHE_PATH: hf_cache},
    secrets=SECRETS,
    enable_memory_snapshot=True,
    experimental_options={"enable_gpu_snapshot": True},
    scaledown_window=DEPLOY.scaledown_window,
    max_containers=DEPLOY.max_containers,
    timeout=DEPLOY.timeout,
    startup_timeout=DEPLOY.startup_timeout,
)
class Drainer:
    @modal.enter(snap=True)
    def prepare(self) -> None:
        """Before the snapshot: vLLM started, warmed up with the real task prompts, asleep; the weights committed."""
        self._boot = self._accounted_to = time.monotonic()
        self._task = _task_id()
        self._start = "fresh"
        self._served = False
        self.notes: list[str] = []
        self.server: VLLMServer | None = None
        try:
            self.server = VLLMServer(VLLMConfig.from_env())
            self.server.prepare_snapshot()
            commit_volume(hf_cache)
        except Exception as e:
            report_start_failure("prepare", e)
            raise  # no snapshot of a container without vLLM: every later start would go the slow way

    @modal.enter(snap=False)
    def wake(self) -> None:
        """After the snapshot (and on a first boot): wake vLLM, or start it cold if waking fails."""
        if _task_id() != self._task:
            # Restored: this container's life (and its bill) starts now, not when the snapshot's container did.
            self._boot = self._accounted_to = time.monotonic()
            self._start = "restored"
        try:
            if self.server is None:
                raise LifecycleError("prepare did not run")
            self.server.restore()
        except LifecycleError as e:
            # Whatever broke the wake, a cold start is the fix.
            self._start_cold(f"snapshot restore failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})")

    def _start_cold(self, why: str) -> None:
        """The slow path: what is left of the old server goes, a new one starts and is waited for."""
        if self.server is not None:
            self.server.stop()
        t0 = time.monotonic()
        try:
            self.server = VLLMServer(VLLMConfig.from_env())
            self.server.start_and_wait()
        except Exception as e:
            report_start_failure("cold start", e)
            raise
        self._start = "cold start"
        self.notes.append(f"{why}; started cold in {time.monotonic() - t0:.1f} s")

    @modal.method()
    def drain(self, max_seconds: float | None = None, queue: str | None = None) -> dict[str, Any]:
        """Drain the queue through the local vLLM until it is empty or the time budget ends; returns the report."""
        called = time.monotonic()
        cfg = ModalSettings.from_env()
        settings = worker_settings(queue)
        call_id = modal.current_function_call_id() or f"local-{uuid.uuid4().hex[:12]}"
        restarted = self.server is None or not self.server.running()
        if restarted:
            # A warm container whose vLLM died since the last call: a drain against it would fail every task.
            self._start_cold("vLLM had exited since the last drain")
        assert self.server is not None
        # The first call waited for the container to start: its budget counts from then.
        if self._served:
            started_at, start = called, ("cold start" if restarted else "warm")
        else:
            started_at, start = self._boot, self._start
        self._served = True
        budget = cfg.drain_budget if max_seconds is None else min(max_seconds, cfg.drain_budget)
        conn = connect(settings)
        try:
            store_queues.clear_start_failure(conn, settings.queue)
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
                    concurrency=cfg.concurrency,
                    style="json_schema",
                    started_at=started_at,
                    worker_name=DRAINER_PREFIX + call_id,
                )
            except Exception as e:
                # A drain that stopped on an error (a wrong key, Redis gone) still held the GPU: it is billed.
                box = self._account(cfg, start, call_id)
                store_drain(conn, settings, {"stop_reason": f"error: {type(e).__name__}", "container": box})
                raise
            # A note about how this container came up belongs to its first report only.
            report.notes.extend(self.notes)
            self.notes = []
            if time.monotonic() - started_at > budget and not report.processed:
                report.notes.append(f"the start took the whole time budget ({budget:.0f} s); nothing was drained")
            out = report.as_dict()
            out["lifecycle"] = {"timings": dict(self.server.timings), "steps": list(self.server.steps)}
            out["container"] = self._account(cfg, start, call_id)
            store_drain(conn, settings, out)
        finally:
            with contextlib.suppress(redis.RedisError):
                store_queues.forget_spawn(conn, settings.queue, call_id)
            conn.close()
        return out

    def _account(self, cfg: ModalSettings, start: str, call_id: str) -> dict[str, Any]:
        """The container seconds this drain answers for: from the container's start (or the last report) to the
        end of the idle window that follows. A container's reports add up to its whole life as seen from Python;
        what Modal does before (scheduling, loading the snapshot) is not seen here."""
        end = time.monotonic() + cfg.scaledown_window
        seconds = round(max(0.0, end - self._accounted_to), 1)
        self._accounted_to = max(self._accounted_to, end)
        gpus = self.server.config.tensor_parallel_size if self.server is not None else GPU_COUNT
        rate = cfg.price_per_gpu_second * gpus
        return {
            "call_id": call_id,
            "start": start,
            "gpu": cfg.gpu,
            "gpus": gpus,
            "seconds": seconds,
            "usd_per_second": rate,
            "estimated_usd": round(seconds * rate, 6),
        }

    def stop_server(self) -> None:
        server: VLLMServer | None = getattr(self, "server", None)
        if server is not None:
            server.stop()

    @modal.exit()
    def shutdown(self) -> None:
        self.stop_server()


def share_costs(batches: Mapping[str, list[int]], seconds: float, usd: float) -> dict[str, tuple[float, float]]:
    """A drain's GPU seconds and cost shared out to the batches it drained, by tokens (by tasks when none
    were counted). Tasks without a batch keep their share unattributed."""
    weights = {b: row[1] + row[2] for b, row in batches.items()}
    if not sum(weights.values()):
        weights = {b: row[0] for b, row in batches.items()}
    total = sum(weights.values())
    if not total:
        return {}
    return {b: (seconds * w / total, usd * w / total) for b, w in weights.items() if b and w}


def store_drain(conn: redis.Redis, settings: Settings, out: dict[str, Any]) -> None:
    """Store the drain's report for `jobctl cost` and add its cost to each batch drained; never fails the drain."""
    box = out["container"]
    record = {
        "at": time.time(),
        "queue": out.get("queue", settings.queue),
        "model": out.get("model", ""),
        **{k: box[k] for k in ("call_id", "start", "gpu", "gpus", "usd_per_second", "estimated_usd")},
        "container_seconds": box["seconds"],
        "drain_seconds": out.get("wall_seconds", 0.0),
        "done": out.get("done", 0),
        "failed": out.get("failed", 0),
        "prompt_tokens": out.get("prompt_tokens", 0),
        "completion_tokens": out.get("completion_tokens", 0),
        "stop_reason": out.get("stop_reason", ""),
        "batches": out.get("batches", {}),
    }
    try:
        store_queues.record_drain(conn, record)
        shares = share_costs(record["batches"], box["seconds"], box["estimated_usd"])
        store_queues.add_batch_costs(conn, shares, settings.result_ttl)
    except redis.RedisError as e:
        log.warning("could not record the drain's cost (%s); its results are written", type(e).__name__)


# -- the cron ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the cron does this tick, and why: `spawn` new drain calls."""

    spawn: int
    reason: str
    waiting: int = 0
    live: int = 0
    pending: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def plan_drainers(
    depth: store_queues.Depth,
    live: int,
    pending: int,
    cfg: ModalSettings,
    backoff_until: float = 0.0,
    start_error: str = "",
    now: float | None = None,
) -> Plan:
    """The cron's decision from the queue's depth, the Modal drainers alive, the calls on their way, the
    back-off after a failed start and the wake policy."""
    now = time.time() if now is None else now
    waiting, have = depth.waiting, live + pending
    seen = {"waiting": waiting, "live": live, "pending": pending}
    if waiting == 0:
        return Plan(0, "the queue is empty", **seen)
    if backoff_until > now:
        until = time.strftime("%H:%M UTC", time.gmtime(backoff_until))
        why = f" ({start_error})" if start_error else ""
        return Plan(0, f"a drainer failed to start{why}; no GPU starts before {until}", **seen)
    # Tasks whose drainer died mid-drain (lapsed leases) were already started: they never wait for the policy.
    if have == 0 and not depth.lapsed and waiting < cfg.min_tasks and depth.oldest_wait < cfg.max_wait:
        return Plan(
            0,
            f"{waiting} tasks wait, fewer than JOBCTL_MODAL_MIN_TASKS={cfg.min_tasks}, and the oldest has waited "
            f"{_minutes(depth.oldest_wait)}, less than JOBCTL_MODAL_MAX_WAIT={_minutes(cfg.max_wait)}; "
            "`jobctl drain --remote` drains now",
            **seen,
        )
    wanted = min(cfg.max_containers, max(1, math.ceil(waiting / cfg.tasks_per_drainer)))
    spawn = max(0, wanted - have)
    return Plan(spawn, f"{waiting} tasks wait; {have} drainers running or starting, {wanted} wanted", **seen)


def plan_from_redis(
    conn: redis.Redis, queue: str, cfg: ModalSettings, now: float | None = None, cipher: Any = None
) -> Plan:
    """plan_drainers on what Redis says now. A Modal drainer counts while its registration is alive (RQ's
    worker key expires when it dies); a spawned call counts until it announces itself, and is then forgotten
    here, so a drainer that dies later is not counted again as on its way. A call that never announces itself
    counts for startup_timeout (a drainer also forgets its call when it ends)."""
    d = store_queues.depth(conn, queue)
    names = [w.name for w in store_queues.drainers(conn, queue) if w.name.startswith(DRAINER_PREFIX)]
    live_ids = {n[len(DRAINER_PREFIX) :] for n in names}
    pending = []
    for call_id in store_queues.recent_spawns(conn, queue, cfg.startup_timeout):
        if call_id in live_ids:
            store_queues.forget_spawn(conn, queue, call_id)
        else:
            pending.append(call_id)
    h = store_queues.health(conn, queue, cipher)
    try:
        backoff = float(h.get("backoff_until") or 0)
    except ValueError:
        backoff = 0.0
    return plan_drainers(d, len(names), len(pending), cfg, backoff, h.get("start_error", ""), now)


def spawn_drainers(n: int, max_seconds: float) -> list[str]:
    """Start n drain calls without waiting; returns their call ids."""
    method = Drainer().drain
    return [method.spawn(max_seconds=max_seconds).object_id for _ in range(n)]


@app.function(schedule=modal.Cron(DEPLOY.schedule), image=light_image, secrets=SECRETS, timeout=120)
def check_queue() -> dict[str, Any]:
    """The cron: start the drainers the queue lacks, if any; with no work, no GPU starts."""
    cfg = ModalSettings.from_env()
    settings = worker_settings()
    conn = connect(settings)
    try:
        plan = plan_from_redis(conn, settings.queue, cfg, cipher=settings.cipher())
        if plan.spawn:
            store_queues.record_spawns(conn, settings.queue, spawn_drainers(plan.spawn, cfg.drain_budget))
        store_queues.note_cron(conn, settings.cipher(), settings.queue, f"started {plan.spawn} drainers: {plan.reason}")
    finally:
        conn.close()
    return plan.as_dict()


# -- weights ----------------------------------------------------------------------------------------


def weight_ignore_patterns(files: list[str]) -> list[str]:
    """What not to download: vLLM loads safetensors when a repository has them, so the other formats are waste."""
    if any(f.endswith(".safetensors") for f in files):
        return ["*.bin", "*.pt", "*.pth", "*.gguf"]
    return []


@app.function(image=vllm_image, volumes={HF_CACHE_PATH: hf_cache}, secrets=SECRETS, timeout=3600)
def download_weights(model: str | None = None, revision: str | None = None) -> dict[str, Any]:
    """Download the model's weights into the Hugging Face volume, once per model (no GPU):
    `modal run modal_worker.py::download_weights`. The first boots after a deploy then load from the volume."""
    from huggingface_hub import HfApi, snapshot_download

    cfg = VLLMConfig.from_env(model=model, revision=revision)
    if Path(cfg.model).exists():
        return {"model": cfg.model, "skipped": "a local path, not a Hugging Face repository"}
    t0 = time.monotonic()
    files = HfApi().list_repo_files(cfg.model, revision=cfg.revision)
    path = snapshot_download(cfg.model, revision=cfg.revision, ignore_patterns=weight_ignore_patterns(files))
    committed = commit_volume(hf_cache)
    return {
        "model": cfg.model,
        "revision": cfg.revision,
        "path": str(path),
        "seconds": round(time.monotonic() - t0, 1),
        "committed": committed,
    }


# -- from your machine ------------------------------------------------------------------------------


def trigger_remote_drain(wait: bool, max_seconds: float | None = None, queue: str | None = None) -> dict[str, Any]:
    """Call the deployed Drainer (no wake policy, no back-off: you asked): wait for its report, or return the
    call id at once."""
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
