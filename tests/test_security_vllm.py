"""Finding 14: the vLLM server the lifecycle starts stays private to its container.

`JOBCTL_VLLM_EXTRA_ARGS="--host 0.0.0.0"` overrode the loopback bind (argparse keeps the last
value); the API key was on the command line, which every user of the machine can read in `ps`
or /proc/PID/cmdline; the server's log was a 0644 file with a predictable name in /tmp.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from worker.vllm_lifecycle import LifecycleError, VLLMConfig, VLLMServer

FAKE_VLLM = [sys.executable, "-m", "tests.fake_openai", "vllm-compat", "serve"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def servers() -> Iterator[list[VLLMServer]]:
    made: list[VLLMServer] = []
    yield made
    for srv in made:
        srv.stop()


def fake(servers: list[VLLMServer], **kw: Any) -> VLLMServer:
    base: dict[str, Any] = {
        "model": "fake-model",
        "port": free_port(),
        "command": FAKE_VLLM,
        "env": {"PYTHONPATH": str(ROOT)},
        "startup_timeout": 10.0,
        "stop_timeout": 5.0,
    }
    srv = VLLMServer(VLLMConfig(**{**base, **kw}))
    servers.append(srv)
    return srv


@pytest.mark.parametrize(
    "extra",
    [
        "--host 0.0.0.0",
        "--host=0.0.0.0",
        "--seed 1 --host 0.0.0.0",
        "--port 9999",
        "--port=9999",
        "--api-key known",
        "--api-key=known",
        "--api_key known",  # vLLM reads underscores as dashes
        "--ho 0.0.0.0",  # argparse takes an unambiguous prefix
        "--config /tmp/evil.yaml",  # a YAML file can set any flag, host included
    ],
)
def test_extra_args_cannot_move_the_server_off_loopback(extra: str):
    flag = extra.split()[-2] if extra.startswith("--seed") else extra.split()[0]
    with pytest.raises(LifecycleError) as info:
        VLLMConfig.from_env(env={"JOBCTL_VLLM_EXTRA_ARGS": extra})
    msg = str(info.value)
    assert flag.split("=")[0] in msg and "JOBCTL_VLLM_EXTRA_ARGS" in msg
    with pytest.raises(LifecycleError):
        VLLMConfig(extra_args=extra.split())


def test_the_command_cannot_carry_them_either():
    with pytest.raises(LifecycleError, match="--host"):
        VLLMConfig(command=["vllm", "serve", "--host", "0.0.0.0"])


def test_harmless_extra_args_pass():
    cfg = VLLMConfig.from_env(env={"JOBCTL_VLLM_EXTRA_ARGS": "--seed 3 --hf-overrides {} --enable-prefix-caching"})
    assert cfg.extra_args == ["--seed", "3", "--hf-overrides", "{}", "--enable-prefix-caching"]


def test_the_api_key_is_not_on_the_command_line(servers, tmp_path: Path):
    srv = fake(servers, log_path=tmp_path / "vllm.log")
    assert srv.api_key not in " ".join(srv.argv()) and "--api-key" not in srv.argv()
    assert srv.process_env()["VLLM_API_KEY"] == srv.api_key
    srv.start_and_wait()
    cmdline = Path(f"/proc/{srv.pid}/cmdline").read_bytes()
    assert srv.api_key.encode() not in cmdline
    # The server still holds it: requests without it are refused.
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(srv.base_url + "/models", timeout=5)
    assert info.value.code == 401
    srv.health()


def test_an_env_override_cannot_replace_the_api_key(tmp_path: Path):
    srv = VLLMServer(VLLMConfig(env={"VLLM_API_KEY": "chosen-by-someone-else"}, log_path=tmp_path / "l"))
    assert srv.process_env()["VLLM_API_KEY"] == srv.api_key


def test_the_default_log_is_private(servers, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    old = os.umask(0o022)
    try:
        srv = fake(servers)
        srv.start_and_wait()
    finally:
        os.umask(old)
    log = srv.config.log_path
    assert log is not None and log.exists()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    assert log.parent != tmp_path, "the log sits in a private folder, not in the shared temp folder"


def test_a_readable_log_left_at_the_path_becomes_private(servers, tmp_path: Path):
    log = tmp_path / "vllm.log"
    log.write_text("old run\n")
    log.chmod(0o644)
    srv = fake(servers, log_path=log)
    srv.start_and_wait()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_a_symlink_at_the_log_path_is_not_followed(servers, tmp_path: Path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    log = tmp_path / "vllm.log"
    log.symlink_to(victim)
    srv = fake(servers, log_path=log)
    with pytest.raises(LifecycleError, match="symlink"):
        srv.start()
    assert victim.read_text() == "precious"


def test_a_shared_temp_folder_planted_by_someone_else_is_not_used(servers, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    srv = fake(servers)
    planned = srv.config.log_path
    assert planned is not None
    planned.parent.mkdir(mode=0o777)
    planned.parent.chmod(0o777)  # as another user would leave it
    srv.start_and_wait()
    log = srv.config.log_path
    assert log is not None and log.parent != planned.parent
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700 and stat.S_IMODE(log.stat().st_mode) == 0o600


def test_an_attached_server_url_with_a_password_is_redacted_in_errors():
    port = free_port()  # nothing listens there
    srv = VLLMServer.attach(f"http://user:s3cretPW@127.0.0.1:{port}/v1", "k", "m")
    with pytest.raises(LifecycleError) as info:
        srv.health()
    assert "s3cretPW" not in str(info.value) and "***@127.0.0.1" in str(info.value)
