"""modal_worker on the CPU, Modal unreachable: the function definitions built offline (under several
environments, and as a container would build them), the Drainer's hooks and drain through Modal's `.local()`
(which, in modal 1.6.4, runs the snap=True then the snap=False enter hook once per instance, and never the
exit hook) with the fake vLLM as the server, the cron's planning against a real Redis, the weights download
with a fake Hub, and the remote trigger's errors."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import signal
import sys
import time
import tomllib
import types
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import modal
import pytest
from click.testing import CliRunner
from modal._image import _Image
from modal._utils.async_utils import synchronizer
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from rq.utils import utcformat

import modal_worker
from jobs.config import ConfigError, ModalSettings, VLLMSettings
from jobs.crypto import generate_key
from jobs.store import keys
from jobs.store import queues as store_queues
from jobs.store.work import WorkQueue
from producer.cli import cli
from tests.conftest import free_port, triage_task
from worker.drain import WrongKeyError
from worker.vllm_lifecycle import ServerCrashedError, VLLMServer

ROOT = Path(__file__).resolve().parent.parent
FAKE_VLLM = [sys.executable, "-m", "tests.fake_openai", "vllm-compat", "serve"]
H100 = 0.001097

# `.local()` warns that Volumes are not mounted locally; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:.*Volume:UserWarning")


@pytest.fixture
def modal_env(monkeypatch: pytest.MonkeyPatch, settings: Any, tmp_path: Path) -> None:
    """The container's environment: the fake as vLLM, the test Redis, key and queue."""
    env = {
        "JOBCTL_VLLM_COMMAND": shlex.join(FAKE_VLLM),
        "JOBCTL_VLLM_MODEL": "fake-model",
        "JOBCTL_VLLM_PORT": str(free_port()),
        "JOBCTL_VLLM_LOG_PATH": str(tmp_path / "vllm.log"),
        "JOBCTL_VLLM_ENV": f'{{"PYTHONPATH": "{ROOT}"}}',
        "JOBCTL_VLLM_STARTUP_TIMEOUT": "10",
        "JOBCTL_VLLM_STOP_TIMEOUT": "5",
        "JOBCTL_MODAL_CONCURRENCY": "16",
        "REDIS_URL": settings.redis_url,
        "JOBCTL_KEY": settings.key_text,
        "JOBCTL_QUEUE": settings.queue,
        "JOBCTL_HOME": str(settings.home),
        "JOBCTL_LEASE_SECONDS": str(settings.lease_seconds),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MODAL_TASK_ID", raising=False)


@pytest.fixture
def drainer(modal_env: None) -> Iterator[Any]:
    obj = modal_worker.Drainer()
    yield obj
    obj.stop_server()  # `.local()` never runs the @modal.exit hook


# -- the definitions, offline -----------------------------------------------------------------------

SHELL_LEFTOVERS = {
    "JOBCTL_QUEUE": "mail",
    "JOBCTL_VLLM_MODEL": "Qwen/Qwen3-8B",
    "JOBCTL_VLLM_MAX_MODEL_LEN": "4096",
    "JOBCTL_VLLM_COMMAND": "python -m tests.fake_openai vllm-compat serve",
    "JOBCTL_VLLM_PORT": "8123",
    "JOBCTL_VLLM_LOG_PATH": "/tmp/x.log",
    "JOBCTL_MODAL_MIN_TASKS": "1",
    "JOBCTL_VLLM_SOMETHING_NEW": "1",
}


def _clear_jobctl_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("JOBCTL_") or k == "MODAL_TASK_ID":
            monkeypatch.delenv(k)


def fresh_import(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], container: bool = False) -> types.ModuleType:
    """modal_worker.py imported anew with `env` as the environment; `container`: as inside Modal."""
    _clear_jobctl_env(monkeypatch)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with monkeypatch.context() as m:
        if container:
            m.setattr(modal, "is_local", lambda: False)
        spec = importlib.util.spec_from_file_location(f"modal_worker_{uuid.uuid4().hex[:8]}", ROOT / "modal_worker.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        m.setitem(sys.modules, spec.name, mod)  # dataclasses look their module up while it runs
        spec.loader.exec_module(mod)
    return mod


def image_layers(image: Any) -> list[tuple[list[str], dict[str, str]]]:
    """An image's Dockerfile commands and build context files, layer by layer, as modal 1.6.4 would send them
    when building (its layers' dockerfile functions, called offline)."""
    out: list[tuple[list[str], dict[str, str]]] = []

    def walk(img: Any) -> None:
        for dep in img._deps() if img._deps else []:
            if isinstance(dep, _Image):
                walk(dep)
        cells = dict(zip(img._load.__code__.co_freevars, img._load.__closure__ or (), strict=True))
        fn = cells.get("dockerfile_function")
        if fn is not None and fn.cell_contents is not None:
            spec = fn.cell_contents("2025.06")
            out.append((list(spec.commands), dict(spec.context_files)))

    walk(synchronizer._translate_in(image))
    return out


def definitions(mod: types.ModuleType) -> dict[str, Any]:
    """What Modal builds from the module, as it exposes it offline: per function, the objects it depends on
    (their number is what a container checks against the deploy), its spec, and its image's layers."""
    functions = {
        "Drainer": mod.Drainer._get_class_service_function(),
        "check_queue": mod.check_queue,
        "download_weights": mod.download_weights,
    }
    return {
        name: {
            "deps": [repr(d) for d in fn._deps_(only_explicit_mounts=True)],
            "spec": repr(fn._spec_),
            "image": image_layers(fn._spec_.image),
        }
        for name, fn in functions.items()
    }


def test_definitions_are_the_same_in_every_environment(monkeypatch):
    plain = fresh_import(monkeypatch, {})
    leftovers = fresh_import(monkeypatch, SHELL_LEFTOVERS)
    # In a container, the `jobctl` secret may hold any knob: it must change nothing that is defined.
    container = fresh_import(monkeypatch, {**SHELL_LEFTOVERS, "JOBCTL_MODAL_GPU": "bogus"}, container=True)
    assert definitions(plain) == definitions(leftovers) == definitions(container)
    deps = definitions(plain)["Drainer"]["deps"]
    assert deps[0] == "modal.Secret.from_name('jobctl')" and deps[1].startswith("Secret.from_dict([JOBCTL_QUEUE,")
    assert deps[2:] == ["Image(local files)", "modal.Volume.from_name('jobctl-huggingface-cache')"]
    # The values differ (that is the point of the knobs), and only allow-listed knobs travel.
    shipped = {k: v for k, v in leftovers.KNOB_VALUES.items() if v is not None}
    assert shipped["JOBCTL_QUEUE"] == "mail" and shipped["JOBCTL_VLLM_MODEL"] == "Qwen/Qwen3-8B"
    assert shipped["JOBCTL_MODAL_MIN_TASKS"] == "1" and shipped["JOBCTL_VLLM_MAX_MODEL_LEN"] == "4096"
    for local_only in ("JOBCTL_VLLM_COMMAND", "JOBCTL_VLLM_PORT", "JOBCTL_VLLM_LOG_PATH", "JOBCTL_VLLM_SOMETHING_NEW"):
        assert local_only not in shipped
    assert not any(container.KNOB_VALUES.values()) and container.DEPLOY == ModalSettings.from_env({})


def test_the_secret_names_its_required_keys():
    assert modal_worker.jobctl_secret is modal_worker.SECRETS[0]
    assert modal_worker.REQUIRED_SECRET_KEYS == ["REDIS_URL", "JOBCTL_KEY"]
    # modal 1.6.4 sends required_keys with the lookup: a secret without them fails the deploy.
    loader = synchronizer._translate_in(modal_worker.jobctl_secret)._load
    cells = dict(zip(loader.__code__.co_freevars, loader.__closure__ or (), strict=True))
    assert cells["required_keys"].cell_contents == ["REDIS_URL", "JOBCTL_KEY"]


def test_deploy_knobs_and_the_capture_size():
    knobs = modal_worker.deploy_knobs({})
    assert set(knobs) == set(modal_worker.KNOBS)
    # CUDA graphs up to the lifecycle's default (the same server as a local vLLM), at most the drain's in flight...
    default = min(modal_worker.CUDAGRAPH_CAPTURE_SIZE or 10**9, ModalSettings.from_env({}).concurrency)
    assert knobs["JOBCTL_VLLM_MAX_CUDAGRAPH_CAPTURE_SIZE"] == str(default) == "512"
    assert (
        modal_worker.deploy_knobs({"JOBCTL_MODAL_CONCURRENCY": "256"})["JOBCTL_VLLM_MAX_CUDAGRAPH_CAPTURE_SIZE"]
        == "256"
    )
    # ...and no more than vLLM runs at once; an explicit size wins; eager mode has none.
    capped = modal_worker.deploy_knobs({"JOBCTL_VLLM_MAX_NUM_SEQS": "128"})
    assert capped["JOBCTL_VLLM_MAX_CUDAGRAPH_CAPTURE_SIZE"] == "128"
    given = modal_worker.deploy_knobs({"JOBCTL_VLLM_MAX_CUDAGRAPH_CAPTURE_SIZE": "64"})
    assert given["JOBCTL_VLLM_MAX_CUDAGRAPH_CAPTURE_SIZE"] == "64"
    assert (
        modal_worker.deploy_knobs({"JOBCTL_VLLM_ENFORCE_EAGER": "true"})["JOBCTL_VLLM_MAX_CUDAGRAPH_CAPTURE_SIZE"]
        is None
    )
    with pytest.raises(ConfigError, match="JOBCTL_VLLM_MAX_MODEL_LEN"):
        modal_worker.deploy_knobs({"JOBCTL_VLLM_MAX_MODEL_LEN": "lots"})
    with pytest.raises(ConfigError, match="JOBCTL_RESULT_TTL"):
        modal_worker.deploy_knobs({"JOBCTL_RESULT_TTL": "5"})
    # A setting that does not travel is not the deploy's business.
    assert modal_worker.deploy_knobs({"JOBCTL_STRUCTURED_OUTPUT": "bogus"})["JOBCTL_QUEUE"] is None


def test_gpu_is_validated(monkeypatch):
    assert ModalSettings.from_env({"JOBCTL_MODAL_GPU": "h100"}).gpu == "H100"
    with pytest.raises(ConfigError, match=r"JOBCTL_MODAL_GPU=.*unknown GPU type 'H9000'"):
        ModalSettings.from_env({"JOBCTL_MODAL_GPU": "H9000"})
    with pytest.raises(ConfigError, match="TENSOR_PARALLEL_SIZE"):
        ModalSettings.from_env({"JOBCTL_MODAL_GPU": "H100:2"})
    # A GPU without a published price here needs one, so the reports' estimates mean something.
    with pytest.raises(ConfigError, match=r"JOBCTL_MODAL_GPU_PRICE_PER_SECOND.*H200"):
        ModalSettings.from_env({"JOBCTL_MODAL_GPU": "H200"})
    h200 = ModalSettings.from_env({"JOBCTL_MODAL_GPU": "H200", "JOBCTL_MODAL_GPU_PRICE_PER_SECOND": "0.00126"})
    assert h200.price_per_gpu_second == 0.00126
    assert ModalSettings.from_env({}).price_per_gpu_second == H100
    with pytest.raises(ConfigError, match="JOBCTL_MODAL_SCHEDULE"):
        ModalSettings.from_env({"JOBCTL_MODAL_SCHEDULE": "every 15 minutes"})
    # At deploy: one line naming the variable, not a traceback; the GPU count comes from vLLM's split.
    with pytest.raises(SystemExit, match=r"^modal_worker: JOBCTL_MODAL_GPU='H9000' is not valid"):
        fresh_import(monkeypatch, {"JOBCTL_MODAL_GPU": "H9000"})
    two = fresh_import(monkeypatch, {"JOBCTL_VLLM_TENSOR_PARALLEL_SIZE": "2"})
    assert two.Drainer._get_class_service_function()._spec_.gpus == "H100:2"


def test_images_install_the_pins_of_pyproject():
    gpu_layers = image_layers(modal_worker.vllm_image)
    light_layers = image_layers(modal_worker.light_image)
    gpu_cmds = [c for cmds, _ in gpu_layers for c in cmds]
    light_cmds = [c for cmds, _ in light_layers for c in cmds]
    [install] = [c for c in gpu_cmds if "uv pip install" in c]
    assert "--requirements /.uv/0/pyproject.toml" in install and "--extra vllm" in install
    [light_install] = [c for c in light_cmds if "uv pip install" in c]
    assert "--requirements /.uv/0/pyproject.toml" in light_install and "--extra" not in light_install
    context = {dst: src for _, files in gpu_layers for dst, src in files.items()}
    assert context == {"/.0_pyproject.toml": str(ROOT / "pyproject.toml")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(p.startswith("vllm==") for p in project["optional-dependencies"]["vllm"])
    for env in ("TORCH_CPP_LOG_LEVEL=FATAL", "VLLM_SERVER_DEV_MODE=1", "TORCHINDUCTOR_COMPILE_THREADS=1"):
        assert f"ENV {env}" in gpu_cmds
    # No pin is repeated in the module: pyproject.toml is the one place.
    assert not re.search(r"""["'][A-Za-z0-9_.\[\]-]+==\d""", (ROOT / "modal_worker.py").read_text())


def _installed_closure(names: set[str]) -> set[str]:
    """The distributions `names` bring, their own requirements included (as installed here)."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for r in map(Requirement, requires):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(r.name))
    return seen


def test_the_images_get_every_package_the_code_imports():
    """The containers get pyproject.toml's dependencies and nothing else (Modal mounts its own client), so every
    module-level import of the code they run must come from there."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    provided = _installed_closure({Requirement(p).name for p in project["dependencies"]}) | {"modal"}
    owners = importlib.metadata.packages_distributions()
    files = [f for d in ("jobs", "worker", "producer") for f in (ROOT / d).rglob("*.py")] + [ROOT / "modal_worker.py"]
    missing: dict[str, set[str]] = {}
    for f in files:
        for node in ast.parse(f.read_text()).body:  # module level: what importing the file needs
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"jobs", "worker", "producer"}:
                dists = {canonicalize_name(d) for d in owners.get(top, [top])}
                if not dists & provided:
                    missing.setdefault(", ".join(sorted(dists)), set()).add(str(f.relative_to(ROOT)))
    assert not missing, "pyproject.toml's [project] dependencies lack what these files import: " + "; ".join(
        f"{dist} ({', '.join(sorted(where))})" for dist, where in sorted(missing.items())
    )


def test_small_scaledown_window_and_budget_inside_the_timeout():
    cfg = ModalSettings.from_env({})
    spec = modal_worker.Drainer._get_class_service_function()  # type: ignore[attr-defined]
    assert cfg.scaledown_window == 2  # Modal's minimum: an idle H100 is billed and a second call is rare
    assert cfg.drain_budget == 3300 and cfg.timeout - cfg.drain_budget >= 120
    short = ModalSettings.from_env({"JOBCTL_MODAL_TIMEOUT": "600", "JOBCTL_MODAL_MAX_DRAIN_SECONDS": "3300"})
    assert short.drain_budget == 480
    # The weights volume only: vLLM's compile cache lives in the snapshot (modal_worker's hf_cache comment).
    assert {k: repr(v) for k, v in spec._spec_.volumes.items()} == {
        "/root/.cache/huggingface": "modal.Volume.from_name('jobctl-huggingface-cache')"
    }


# -- the drainer, through .local() ----------------------------------------------------------------


class FakeVolume:
    def __init__(self) -> None:
        self.commits = 0

    def commit(self) -> None:
        self.commits += 1


def test_drain_local_runs_the_lifecycle_then_drains(drainer, client, conn, settings, monkeypatch):
    volume = FakeVolume()
    monkeypatch.setattr(modal_worker, "hf_cache", volume)
    monkeypatch.setattr(modal_worker, "in_container", lambda: True)
    store_queues.record_spawns(conn, settings.queue, ["fc-other"])
    sub = client.submit([triage_task(i) for i in range(12)])
    report = drainer.drain.local()
    assert (report["done"], report["failed"], report["stop_reason"]) == (12, 0, "queue empty")
    assert report["lifecycle"]["steps"] == [
        "start",
        "ready",
        "warmup",
        "reset_prefix_cache",
        "sleep",
        "wake_up",
        "health",
    ]
    assert set(report["lifecycle"]["timings"]) == {"start_to_ready", "warmup", "sleep", "wake_up", "health"}
    assert report["notes"] == [] and report["model"] == "fake-model"
    # What the snapshot phase wrote to the weights volume is committed before the snapshot.
    assert volume.commits == 1
    box = report["container"]
    assert (box["start"], box["gpu"], box["gpus"], box["usd_per_second"]) == ("fresh", "H100", 1, H100)
    assert box["call_id"].startswith("local-") and box["seconds"] > 2  # the start, the drain, the 2 s idle window
    assert box["estimated_usd"] == pytest.approx(box["seconds"] * H100, rel=0.01)
    # It drained as a Modal drainer (the cron's count), and its results say so.
    jid = keys.text(conn.zrange(keys.finished(settings.queue), 0, 0)[0])
    [(_, fields)] = conn.xrange(keys.results(jid))
    assert keys.text(fields[b"worker_name"]) == modal_worker.DRAINER_PREFIX + box["call_id"]
    # The report is stored, and the batch got the whole GPU time (it was the only one drained).
    [stored] = store_queues.drain_reports(conn)
    assert stored["container_seconds"] == box["seconds"] and stored["batches"][sub.batch_id][0] == 12
    assert "notes" not in stored and stored["done"] == 12
    st = client.status(sub.batch_id)
    assert st.gpu_seconds == pytest.approx(box["seconds"]) and st.cost_usd == pytest.approx(box["estimated_usd"])
    assert store_queues.recent_spawns(conn, settings.queue, 3600) == ["fc-other"]
    outcomes = list(client.results(sub.batch_id))
    assert len(outcomes) == 12 and all(o.ok for o in outcomes)

    # The container stays up between calls: a second drain reuses the awake server, and its report counts
    # from the end of the first one's idle window, so the reports add up to the container's life.
    client.submit([triage_task(99)])
    again = drainer.drain.local(max_seconds=30)
    assert again["done"] == 1 and again["lifecycle"]["steps"][-1] == "health" and again["notes"] == []
    assert again["container"]["start"] == "warm" and again["container"]["seconds"] < box["seconds"]
    life = time.monotonic() + 2 - drainer._boot
    assert box["seconds"] + again["container"]["seconds"] == pytest.approx(life, abs=1.0)
    assert volume.commits == 1

    # ...unless vLLM died in between: then it starts cold rather than fail every task.
    os.killpg(drainer.server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while drainer.server.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    client.submit([triage_task(100)])
    third = drainer.drain.local()
    assert third["done"] == 1 and third["notes"][0].startswith("vLLM had exited since the last drain; started cold")
    assert third["container"]["start"] == "cold start"
    assert len(store_queues.drain_reports(conn)) == 3


def test_a_restored_container_counts_from_its_restore(drainer, client, monkeypatch):
    real_sleep = VLLMServer.sleep

    def sleep_then_snapshot(self: VLLMServer, level: int = 1) -> None:
        real_sleep(self, level)
        time.sleep(1.0)  # the snapshot's container lived on before this one was restored
        monkeypatch.setenv("MODAL_TASK_ID", "ta-restored")  # what Modal sets in a restored container

    monkeypatch.setattr(VLLMServer, "sleep", sleep_then_snapshot)
    client.submit([triage_task(1)])
    t0 = time.monotonic()
    report = drainer.drain.local()
    box = report["container"]
    assert box["start"] == "restored" and report["done"] == 1
    assert box["seconds"] < time.monotonic() + 2 - t0 - 1.0  # the second before the restore is not this container's


def test_the_budget_counts_from_the_container_start(drainer, client, conn, settings, monkeypatch):
    monkeypatch.setenv("JOBCTL_VLLM_ENV", json.dumps({"PYTHONPATH": str(ROOT), "FAKE_STARTUP_DELAY": "1.5"}))
    client.submit([triage_task(i) for i in range(3)])
    report = drainer.drain.local(max_seconds=1.0)
    assert (report["stop_reason"], report["done"]) == ("time budget", 0)
    assert report["notes"] == ["the start took the whole time budget (1 s); nothing was drained"]
    assert conn.llen(keys.queue(settings.queue)) == 3  # left for the next drain, not half-done


def test_restore_failure_comes_up_cold_and_says_so(drainer, client, monkeypatch):
    real_sleep = VLLMServer.sleep

    def sleep_then_die(self: VLLMServer, level: int = 1) -> None:
        # The last step of the snap=True hook; the process dies before the snap=False hook runs.
        real_sleep(self, level)
        assert self.pid is not None
        os.killpg(self.pid, signal.SIGKILL)
        time.sleep(0.2)

    monkeypatch.setattr(VLLMServer, "sleep", sleep_then_die)
    sub = client.submit([triage_task(i) for i in range(5)])
    report = drainer.drain.local()
    assert report["done"] == 5 and report["container"]["start"] == "cold start"
    [note] = report["notes"]
    assert note.startswith("snapshot restore failed (ServerCrashedError: vLLM exited with code -9 during 'wake_up'")
    assert "started cold in" in note
    assert report["lifecycle"]["steps"] == ["start", "ready"]
    assert all(o.ok for o in client.results(sub.batch_id))


def test_a_failed_start_is_reported_and_the_cron_backs_off(drainer, client, conn, settings, monkeypatch):
    volume = FakeVolume()
    monkeypatch.setattr(modal_worker, "hf_cache", volume)
    monkeypatch.setattr(modal_worker, "in_container", lambda: True)
    monkeypatch.setenv(
        "JOBCTL_VLLM_ENV", f'{{"PYTHONPATH": "{ROOT}", "FAKE_EXIT_AFTER_START": "0.3", "FAKE_STARTUP_DELAY": "60"}}'
    )
    client.submit([triage_task(i) for i in range(200)])
    t0 = time.monotonic()
    with pytest.raises(ServerCrashedError, match="exited with code 1") as info:
        drainer.drain.local()
    assert "fatal: simulated engine crash" in str(info.value) and time.monotonic() - t0 < 10
    assert volume.commits == 0  # nothing to keep from a start that failed
    h = store_queues.health(conn, settings.queue, settings.cipher())
    assert h["start_error"].startswith("prepare: ServerCrashedError: vLLM exited with code 1 during 'wait_ready'")
    assert h["start_error"].endswith("(log: fatal: simulated engine crash)")
    assert float(h["backoff_until"]) == pytest.approx(time.time() + 3600, abs=30)
    # The cron starts no GPU every tick for it; `jobctl status` can say why.
    spawned: list[int] = []

    def spawn(n: int, seconds: float) -> list[str]:
        spawned.append(n)
        return []

    monkeypatch.setattr(modal_worker, "spawn_drainers", spawn)
    plan = modal_worker.check_queue.local()
    assert plan["spawn"] == 0 and plan["reason"].startswith("a drainer failed to start (prepare: ServerCrashedError")
    assert spawned == []
    assert "no GPU starts before" in store_queues.health(conn, settings.queue, settings.cipher())["cron_decision"]


def test_a_drain_that_fails_is_still_billed(drainer, client, conn, monkeypatch):
    client.submit([triage_task(1)])
    monkeypatch.setenv("JOBCTL_KEY", generate_key())  # the drainer holds another key than the queue's
    with pytest.raises(WrongKeyError):
        drainer.drain.local()
    [stored] = store_queues.drain_reports(conn)
    assert stored["stop_reason"] == "error: WrongKeyError" and stored["container_seconds"] > 0
    assert stored["estimated_usd"] == pytest.approx(stored["container_seconds"] * H100, rel=0.01)


def test_a_drain_that_starts_clears_the_failure(drainer, client, conn, settings):
    store_queues.report_start_failure(
        conn, settings.cipher(), settings.queue, "prepare: OSError: gone", time.time() + 3600
    )
    client.submit([triage_task(1)])
    assert drainer.drain.local()["done"] == 1
    assert "start_error" not in store_queues.health(conn, settings.queue)


# -- the cron ----------------------------------------------------------------------------------------


def depth(queued: int = 0, lapsed: int = 0, running: int = 0, oldest: float = 0.0) -> store_queues.Depth:
    return store_queues.Depth(queued, lapsed, running, oldest)


def test_plan_wake_policy_and_shortfall():
    cfg = ModalSettings.from_env({}, min_tasks=100, max_wait=3600, tasks_per_drainer=1000, max_containers=3)
    plan = modal_worker.plan_drainers
    assert plan(depth(0), 0, 0, cfg).spawn == 0
    # One task waiting a few minutes wakes no H100...
    lone = plan(depth(1, oldest=300), 0, 0, cfg)
    assert lone.spawn == 0 and "fewer than JOBCTL_MODAL_MIN_TASKS=100" in lone.reason and "5 min" in lone.reason
    # ...enough tasks do, and so does a task that has waited long enough, or one a dead drainer left behind.
    assert plan(depth(100), 0, 0, cfg).spawn == 1
    assert plan(depth(1, oldest=3600), 0, 0, cfg).spawn == 1
    assert plan(depth(0, lapsed=1), 0, 0, cfg).spawn == 1
    # With a drainer running or on its way, the policy is moot: only the shortfall starts.
    assert plan(depth(1), 1, 0, cfg).spawn == 0
    assert plan(depth(2500), 1, 1, cfg).spawn == 1
    assert plan(depth(100_000), 0, 0, cfg).spawn == 3
    assert plan(depth(100_000), 5, 0, cfg).spawn == 0
    # Every task wakes a GPU when asked to.
    eager = ModalSettings.from_env({}, min_tasks=1)
    assert plan(depth(1), 0, 0, eager).spawn == 1
    assert plan(depth(1), 0, 0, ModalSettings.from_env({}, max_wait=0)).spawn == 1
    # A back-off after a failed start holds everything.
    held = plan(depth(100_000), 0, 0, cfg, backoff_until=time.time() + 60, start_error="prepare: OSError")
    assert held.spawn == 0 and "(prepare: OSError)" in held.reason


def test_cron_counts_live_and_dead_drainers_and_pending_spawns(modal_env, client, conn, settings, monkeypatch):
    monkeypatch.setenv("JOBCTL_MODAL_TASKS_PER_DRAINER", "2")
    monkeypatch.setenv("JOBCTL_MODAL_MAX_CONTAINERS", "4")
    monkeypatch.setenv("JOBCTL_MODAL_MIN_TASKS", "1")
    cfg = ModalSettings.from_env()
    q = settings.queue

    def announce(name: str) -> WorkQueue:
        wq = WorkQueue(conn, settings.cipher(), q, 30, 3600, name)
        wq.register()
        return wq

    client.submit([triage_task(i) for i in range(9)])
    live = announce(modal_worker.DRAINER_PREFIX + "fc-live")
    announce(modal_worker.DRAINER_PREFIX + "fc-dead")
    conn.delete(keys.worker(modal_worker.DRAINER_PREFIX + "fc-dead"))  # died: its registration expired
    announce("jobctl-laptop-123-abc")  # a local drainer: not a GPU, not counted
    store_queues.record_spawns(conn, q, ["fc-live", "fc-pending"])  # fc-live has announced itself
    conn.zadd(keys.spawns(q), {"fc-lost": time.time() - cfg.startup_timeout - 1})  # never came

    plan = modal_worker.plan_from_redis(conn, q, cfg)
    assert (plan.waiting, plan.live, plan.pending, plan.spawn) == (9, 1, 1, 2)  # ceil(9/2) = 5, at most 4

    calls: list[tuple[int, float]] = []

    def spawn(n: int, seconds: float) -> list[str]:
        calls.append((n, seconds))
        return [f"fc-new{i}" for i in range(n)]

    monkeypatch.setattr(modal_worker, "spawn_drainers", spawn)
    assert modal_worker.check_queue.local()["spawn"] == 2
    assert calls == [(2, cfg.drain_budget)]
    assert store_queues.health(conn, q, settings.cipher())["cron_decision"].startswith("started 2 drainers: 9 tasks")
    # The next tick sees the calls on their way and starts nothing more.
    again = modal_worker.check_queue.local()
    assert (again["live"], again["pending"], again["spawn"]) == (1, 3, 0) and len(calls) == 1
    # A drainer that stops (its registration gone) leaves room for one more.
    live.unregister()
    assert modal_worker.plan_from_redis(conn, q, cfg).spawn == 1
    assert set(store_queues.recent_spawns(conn, q, cfg.startup_timeout)) == {
        "fc-pending",
        "fc-new0",
        "fc-new1",
    }


def test_cron_wake_policy_in_redis(modal_env, client, conn, settings, monkeypatch):
    calls: list[int] = []

    def spawn(n: int, seconds: float) -> list[str]:
        calls.append(n)
        return [f"fc-{i}" for i in range(n)]

    monkeypatch.setattr(modal_worker, "spawn_drainers", spawn)
    assert modal_worker.check_queue.local()["reason"] == "the queue is empty"
    client.submit([triage_task(i) for i in range(3)])
    plan = modal_worker.check_queue.local()
    assert plan["spawn"] == 0 and "3 tasks wait, fewer than JOBCTL_MODAL_MIN_TASKS=100" in plan["reason"]
    # The head of the queue has waited past JOBCTL_MODAL_MAX_WAIT: one drainer wakes.
    head = keys.text(conn.lindex(keys.queue(settings.queue), 0))
    conn.hset(keys.job(head), "enqueued_at", utcformat(datetime.now(UTC) - timedelta(seconds=3700)))
    assert modal_worker.check_queue.local()["spawn"] == 1 and calls == [1]


# -- weights ---------------------------------------------------------------------------------------


def test_download_weights_into_the_volume(modal_env, monkeypatch, tmp_path):
    seen: dict[str, Any] = {}

    class Api:
        def list_repo_files(self, repo: str, revision: str | None = None) -> list[str]:
            seen["listed"] = (repo, revision)
            return ["config.json", "model-00001-of-00002.safetensors", "pytorch_model.bin", "original/consolidated.pth"]

    def snapshot_download(repo: str, revision: str | None = None, ignore_patterns: Any = None) -> str:
        seen["download"] = (repo, revision, ignore_patterns)
        return f"/root/.cache/huggingface/hub/models--{repo.replace('/', '--')}"

    monkeypatch.setitem(
        sys.modules, "huggingface_hub", types.SimpleNamespace(HfApi=Api, snapshot_download=snapshot_download)
    )
    volume = FakeVolume()
    monkeypatch.setattr(modal_worker, "hf_cache", volume)
    out = modal_worker.download_weights.local(model="org/model", revision="abc123")
    assert seen["download"] == ("org/model", "abc123", ["*.bin", "*.pt", "*.pth", "*.gguf"])
    assert out["model"] == "org/model" and out["committed"] is False and volume.commits == 0  # not in a container
    monkeypatch.setattr(modal_worker, "in_container", lambda: True)
    assert modal_worker.download_weights.local()["committed"] is True and volume.commits == 1
    assert seen["listed"] == ("fake-model", None)  # the deployed model by default
    assert modal_worker.weight_ignore_patterns(["model.bin", "config.json"]) == []
    assert "skipped" in modal_worker.download_weights.local(model=str(tmp_path))


def test_share_costs_by_tokens():
    share = modal_worker.share_costs
    batches = {"b1": [3, 300, 100], "b2": [1, 50, 50], "": [1, 500, 0]}
    out = share(batches, 100.0, 0.11)
    assert out["b1"] == pytest.approx((40.0, 0.044)) and out["b2"] == pytest.approx((10.0, 0.011))
    assert "" not in out  # tasks without a batch keep their share unattributed
    assert share({"b1": [2, 0, 0], "b2": [2, 0, 0]}, 10.0, 1.0) == {"b1": (5.0, 0.5), "b2": (5.0, 0.5)}
    assert share({}, 10.0, 1.0) == {}


# -- from your machine -----------------------------------------------------------------------------


def test_remote_trigger_explains_how_to_deploy(monkeypatch):
    class Missing:
        def __init__(self, *a: Any) -> None:
            raise modal.exception.NotFoundError("App 'jobctl' not found")

    monkeypatch.setattr(modal.Cls, "from_name", lambda *a, **k: Missing)
    with pytest.raises(modal_worker.RemoteDrainError, match=re.escape("modal deploy modal_worker.py")):
        modal_worker.trigger_remote_drain(wait=True)
    result = CliRunner().invoke(cli, ["drain", "--remote"])
    assert result.exit_code == 1 and "modal deploy modal_worker.py" in result.output


def test_remote_trigger_passes_the_arguments(monkeypatch):
    seen: dict[str, Any] = {}

    class Method:
        def remote(self, **kw: Any) -> dict[str, Any]:
            seen["remote"] = kw
            return {
                "queue": "q",
                "model": "m",
                "stop_reason": "queue empty",
                "done": 3,
                "failed": 0,
                "wall_seconds": 1.0,
                "jobs_per_second": 3.0,
                "notes": ["started cold"],
                "lifecycle": {"timings": {"wake_up": 0.5}},
            }

        def spawn(self, **kw: Any) -> Any:
            seen["spawn"] = kw
            return type("Call", (), {"object_id": "fc-123"})()

    class FakeDrainer:
        drain = Method()

    monkeypatch.setattr(modal_worker.modal.Cls, "from_name", lambda app, name: lambda: FakeDrainer())
    out = CliRunner().invoke(cli, ["drain", "--remote", "--max-seconds", "60", "-q", "mail"])
    assert out.exit_code == 0, out.output
    assert seen["remote"] == {"max_seconds": 60.0, "queue": "mail"}
    assert "done 3" in out.output and "wake_up 0.5s" in out.output and "started cold" in out.output
    out = CliRunner().invoke(cli, ["drain", "--remote", "--no-wait"])
    assert out.exit_code == 0 and "fc-123" in out.output


def test_drain_without_remote_drains_here(client, worker_env, monkeypatch):
    for k, v in worker_env.items():
        monkeypatch.setenv(k, v)
    client.submit([triage_task(i) for i in range(4)])
    out = CliRunner().invoke(cli, ["drain", "--json"])
    assert out.exit_code == 0, out.output
    assert '"done": 4' in out.output


def test_the_allow_list_comes_from_the_settings_models():
    # The allow-list is built from the settings models: a vLLM field missing there would never ship.
    shipped = {k.removeprefix("JOBCTL_VLLM_") for k in modal_worker.KNOBS if k.startswith("JOBCTL_VLLM_")}
    assert {"MODEL", "REVISION", "MAX_CUDAGRAPH_CAPTURE_SIZE", "TENSOR_PARALLEL_SIZE"} <= shipped
    assert not shipped & {"COMMAND", "PORT", "LOG_PATH"}
    assert set(VLLMSettings.env_vars()) - {"command", "port", "log_path"} == {f.lower() for f in shipped}
