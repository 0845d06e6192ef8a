"""modal_worker on the CPU: the Drainer's hooks and drain through Modal's `.local()` (which, in
modal 1.6.4, runs the snap=True then the snap=False enter hook once per instance, and never
the exit hook), with the fake vLLM as the server; the cron's planning; the remote trigger's errors."""

from __future__ import annotations

import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import modal_worker
from jobs import keys
from producer.cli import cli
from tests.conftest import free_port, triage_task
from worker.vllm_lifecycle import ServerCrashedError, VLLMServer

ROOT = Path(__file__).resolve().parent.parent
FAKE_VLLM = [sys.executable, "-m", "tests.fake_openai", "vllm-compat", "serve"]

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
        "JOBCTL_KEY": settings.key,
        "JOBCTL_QUEUE": settings.queue,
        "JOBCTL_HOME": str(settings.home),
        "JOBCTL_LEASE_SECONDS": str(settings.lease_seconds),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def drainer(modal_env: None) -> Iterator[Any]:
    obj = modal_worker.Drainer()
    yield obj
    obj.stop_server()  # `.local()` never runs the @modal.exit hook


def test_import_builds_definitions_only():
    assert modal_worker.app.name == "jobctl"
    assert modal_worker.plan_drainers(0, 4, 100) == 0
    assert modal_worker.plan_drainers(1, 4, 100) == 1
    assert modal_worker.plan_drainers(250, 4, 100) == 3
    assert modal_worker.plan_drainers(10_000, 4, 100) == 4


def test_drain_local_runs_the_lifecycle_then_drains(drainer, client):
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
    assert drainer.server.is_sleeping() is False
    outcomes = list(client.results(sub.batch_id))
    assert len(outcomes) == 12 and all(o.ok for o in outcomes)
    # The container stays up between calls: a second drain reuses the awake server.
    client.submit([triage_task(99)])
    again = drainer.drain.local(max_seconds=30)
    assert again["done"] == 1 and again["lifecycle"]["steps"][-1] == "health" and again["notes"] == []
    # ...unless vLLM died in between: then it starts cold rather than fail every task.
    os.killpg(drainer.server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while drainer.server.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    client.submit([triage_task(100)])
    third = drainer.drain.local()
    assert third["done"] == 1 and third["notes"][0].startswith("vLLM had exited since the last drain; started cold")


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
    assert report["done"] == 5
    [note] = report["notes"]
    assert note.startswith("snapshot restore failed (ServerCrashedError: vLLM exited with code -9 during 'wake_up'")
    assert "started cold in" in note
    assert report["lifecycle"]["steps"] == ["start", "ready"]
    assert all(o.ok for o in client.results(sub.batch_id))


def test_crash_at_start_is_a_clear_error(drainer, monkeypatch):
    monkeypatch.setenv(
        "JOBCTL_VLLM_ENV", f'{{"PYTHONPATH": "{ROOT}", "FAKE_EXIT_AFTER_START": "0.3", "FAKE_STARTUP_DELAY": "60"}}'
    )
    t0 = time.monotonic()
    with pytest.raises(ServerCrashedError, match="exited with code 1") as info:
        drainer.drain.local()
    assert "fatal: simulated engine crash" in str(info.value) and time.monotonic() - t0 < 10


def test_cron_with_an_empty_queue_starts_nothing(modal_env, monkeypatch):
    calls: list[tuple[int, float]] = []
    monkeypatch.setattr(modal_worker, "spawn_drainers", lambda n, s: calls.append((n, s)))
    assert modal_worker.check_queue.local() == {"depth": 0, "drainers": 0}
    assert calls == []


def test_cron_spawns_drainers_bounded_by_max_containers(modal_env, client, conn, settings, monkeypatch):
    calls: list[tuple[int, float]] = []
    monkeypatch.setattr(modal_worker, "spawn_drainers", lambda n, s: calls.append((n, s)))
    monkeypatch.setattr(modal_worker, "TASKS_PER_DRAINER", 2)
    monkeypatch.setattr(modal_worker, "MAX_CONTAINERS", 3)
    client.submit([triage_task(i) for i in range(9)])
    # A task whose worker died (lease expired) is work too; one still leased is not.
    conn.zadd(keys.started_key(settings.queue), {"dead:1": time.time() - 5, "alive:1": time.time() + 60})
    assert modal_worker.check_queue.local() == {"depth": 10, "drainers": 3}
    assert calls == [(3, modal_worker.MAX_DRAIN_SECONDS)]
    monkeypatch.setattr(modal_worker, "MAX_CONTAINERS", 10)
    assert modal_worker.check_queue.local()["drainers"] == 5


def test_remote_trigger_explains_how_to_deploy(monkeypatch):
    import modal

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
