"""worker.vllm_lifecycle against the fake vLLM: as a child process (the real launch path), and
in-process through `VLLMServer.attach` where the order of lifecycle calls is checked."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.fake_openai import FakeOpenAI
from worker.vllm_lifecycle import (
    LifecycleError,
    ServerCrashedError,
    StepTimeoutError,
    VLLMConfig,
    VLLMServer,
    warmup_levels,
    warmup_requests,
)

FAKE_VLLM = [sys.executable, "-m", "tests.fake_openai", "vllm-compat", "serve"]
ROOT = Path(__file__).resolve().parent.parent
ALL_KINDS = {
    "email.triage",
    "email.summarize",
    "email.extract",
    "email.draft_reply",
    "transaction.categorize",
    "transaction.flag",
    "extract",
}


def fake_config(tmp_path: Path, **kw: Any) -> VLLMConfig:
    env = {"PYTHONPATH": str(ROOT), **kw.pop("env", {})}
    base: dict[str, Any] = {
        "model": "fake-model",
        "port": free_port(),
        "command": FAKE_VLLM,
        "env": env,
        "log_path": tmp_path / "vllm.log",
        "startup_timeout": 10.0,
        "stop_timeout": 5.0,
    }
    return VLLMConfig(**{**base, **kw})


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    made: list[VLLMServer] = []

    def make(**kw: Any) -> VLLMServer:
        srv = VLLMServer(fake_config(tmp_path, **kw))
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()


def get(url: str, api_key: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url)
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def test_command_line_has_the_required_flags(tmp_path):
    srv = VLLMServer(fake_config(tmp_path, served_model_name="m", load_format="dummy", extra_args=["--seed", "1"]))
    argv = srv.argv()
    assert argv[: len(FAKE_VLLM)] == FAKE_VLLM

    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert value("--host") == "127.0.0.1"
    # The key goes in the environment: argv is readable by every user of the machine.
    assert "--api-key" not in argv and srv.process_env()["VLLM_API_KEY"] == srv.api_key and len(srv.api_key) >= 32
    assert "--enable-sleep-mode" in argv
    assert value("--gpu-memory-utilization") == "0.85"
    assert json.loads(value("--structured-outputs-config")) == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert (value("--model"), value("--served-model-name"), value("--load-format")) == ("fake-model", "m", "dummy")
    assert (value("--max-cudagraph-capture-size"), value("--max-model-len")) == ("512", "8192")
    assert (value("--max-num-seqs"), value("--max-num-batched-tokens")) == ("1024", "16384")
    assert argv[-2:] == ["--seed", "1"]
    env = srv.process_env()
    assert env["VLLM_SERVER_DEV_MODE"] == "1" and env["TORCHINDUCTOR_COMPILE_THREADS"] == "1"
    with pytest.raises(LifecycleError, match=re.escape("127.0.0.1")):
        VLLMConfig(host="0.0.0.0")
    assert VLLMConfig().api_key != VLLMConfig().api_key


def test_config_from_env_overrides():
    env = {
        "JOBCTL_VLLM_MODEL": "org/model",
        "JOBCTL_VLLM_MAX_MODEL_LEN": "none",
        "JOBCTL_VLLM_PORT": "8123",
        "JOBCTL_VLLM_ENFORCE_EAGER": "true",
        "JOBCTL_VLLM_COMMAND": "python -m 'my server'",
        "JOBCTL_VLLM_EXTRA_ARGS": "--seed 3",
        "JOBCTL_VLLM_SLEEP_TIMEOUT": "5",
        "JOBCTL_VLLM_STRUCTURED_OUTPUTS_CONFIG": '{"backend": "guidance"}',
        "JOBCTL_VLLM_HOST": "0.0.0.0",
    }
    cfg = VLLMConfig.from_env(env=env, gpu_memory_utilization=0.7)
    assert (cfg.model, cfg.max_model_len, cfg.port, cfg.enforce_eager) == ("org/model", None, 8123, True)
    assert cfg.command == ["python", "-m", "my server"] and cfg.extra_args == ["--seed", "3"]
    assert (cfg.sleep_timeout, cfg.gpu_memory_utilization, cfg.host) == (5.0, 0.7, "127.0.0.1")
    assert cfg.structured_outputs_config == {"backend": "guidance"}
    assert VLLMConfig.from_env(env={}).max_model_len == 8192
    with pytest.raises(LifecycleError, match=r"JOBCTL_VLLM_PORT='eighty' is not valid .*integer"):
        VLLMConfig.from_env(env={"JOBCTL_VLLM_PORT": "eighty"})


def test_warmup_uses_every_task_kind_with_json_schema():
    bodies = warmup_requests("m")
    names = {b["response_format"]["json_schema"]["name"] for b in bodies}
    assert names == {k.replace(".", "_") for k in ALL_KINDS}
    assert all(b["model"] == "m" and b["response_format"]["type"] == "json_schema" for b in bodies)
    assert warmup_levels(VLLMConfig(max_cudagraph_capture_size=32)) == [1, 4, 16, 32]
    assert warmup_levels(VLLMConfig(max_cudagraph_capture_size=8)) == [1, 4, 8]


def test_full_cycle_in_a_child_process(make_server):
    srv = make_server()
    srv.start()
    srv.wait_ready()
    cmdline = Path(f"/proc/{srv.pid}/cmdline").read_bytes().split(b"\0")
    assert b"--enable-sleep-mode" in cmdline and b"127.0.0.1" in cmdline
    assert srv.is_sleeping() is False
    assert srv.warm_up() == 7 + 4 + 16 + 64
    srv.sleep()
    assert srv.is_sleeping() is True
    status, _ = get(srv.base_url + "/models")
    assert status == 401, "the API key must be enforced"
    assert get(srv.base_url + "/models", srv.api_key)[0] == 200
    srv.wake_up()
    assert srv.is_sleeping() is False
    assert srv.steps == ["start", "ready", "warmup", "reset_prefix_cache", "sleep", "wake_up", "health"]
    assert set(srv.timings) == {"start_to_ready", "warmup", "sleep", "wake_up", "health"}
    pid = srv.pid
    srv.stop()
    assert not srv.running() and not Path(f"/proc/{pid}").exists()
    assert srv.api_key not in (srv.config.log_path.read_text() if srv.config.log_path else "")


def test_lifecycle_calls_reach_the_server_in_order():
    with FakeOpenAI(api_key="k", model="m", latency=0.05) as fake:
        srv = VLLMServer.attach(fake.url, "k", "m")
        srv.warm_up()
        warm_chats = fake.stats.requests
        kinds = {p["response_format"]["json_schema"]["name"] for p in fake.stats.prompts_seen}
        assert (warm_chats, kinds) == (7 + 4 + 16 + 64, {k.replace(".", "_") for k in ALL_KINDS})
        assert fake.stats.max_in_flight >= 16, "warm-up must send requests at once"
        srv.sleep()
        assert fake.calls == [("POST", "/reset_prefix_cache"), ("POST", "/sleep?level=1"), ("GET", "/is_sleeping")]
        assert fake.stats.requests == warm_chats
        srv.restore()
        assert fake.calls[3:] == [("POST", "/wake_up"), ("GET", "/is_sleeping")]
        assert fake.stats.requests == warm_chats + 1, "one health request after the wake"
        assert fake.sleeping is False
        srv.stop()  # attached: manages no process


def test_crash_at_start_raises_with_the_log_tail(make_server):
    srv = make_server(env={"FAKE_EXIT_AFTER_START": "0.5", "FAKE_STARTUP_DELAY": "60"})
    t0 = time.monotonic()
    with pytest.raises(ServerCrashedError) as info:
        srv.prepare_snapshot()
    assert time.monotonic() - t0 < 10
    err = info.value
    assert err.exit_code == 1 and "exited with code 1" in str(err)
    assert "fatal: simulated engine crash" in str(err) and "fatal: simulated engine crash" in err.log_tail
    assert srv.api_key not in str(err)
    assert not srv.running()


def test_never_healthy_times_out(make_server):
    srv = make_server(env={"FAKE_STARTUP_DELAY": "60"}, startup_timeout=1.5)
    srv.start()
    t0 = time.monotonic()
    with pytest.raises(StepTimeoutError, match=re.escape("'wait_ready' ran past its 1.5s timeout")) as info:
        srv.wait_ready()
    assert info.value.step == "wait_ready" and time.monotonic() - t0 < 5
    assert "JOBCTL_VLLM_STARTUP_TIMEOUT" in str(info.value)


def test_slow_sleep_times_out(make_server):
    srv = make_server(env={"FAKE_SLEEP_DELAY": "5"}, sleep_timeout=0.5)
    srv.start()
    srv.wait_ready()
    t0 = time.monotonic()
    with pytest.raises(StepTimeoutError, match=re.escape("'sleep' ran past its 0.5s timeout")):
        srv.sleep()
    assert time.monotonic() - t0 < 3


def test_wake_after_the_process_died_is_a_crash_not_a_hang(make_server):
    srv = make_server()
    srv.prepare_snapshot()
    assert srv.pid is not None
    os.killpg(srv.pid, signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(ServerCrashedError, match="during 'wake_up'"):
        srv.wake_up()


def test_port_in_use_is_refused(make_server):
    with FakeOpenAI() as other:
        srv = make_server(port=other.port)
        with pytest.raises(LifecycleError, match="already in use"):
            srv.start()
