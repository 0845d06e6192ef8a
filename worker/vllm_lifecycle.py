"""One vLLM server's life: start, wait until ready, warm up, sleep, wake up, stop.

Modal's Drainer (modal_worker.py), the GPU benchmark and the tests all drive vLLM through
this module, so the fragile parts live in one place:

* the command line: sleep mode on (`/sleep` and `/wake_up` need it, plus
  VLLM_SERVER_DEV_MODE=1), bound to 127.0.0.1 behind a generated API key, and xgrammar
  structured output with `disable_any_whitespace` (without it, answers were whitespace
  until max_tokens on the H100);
* every step has its own timeout and a clear error naming the step; a server process that
  dies is noticed at once (ServerCrashedError with the tail of its log), never waited on;
* the order before a GPU snapshot: warm up with the real task prompts and schemas at
  several batch sizes (torch.compile, CUDA graphs and xgrammar paths all run), reset the
  prefix cache (vllm #17103: garbage after wake when prefix caching is on), sleep level 1.

The server itself is any command that takes vLLM's flags: `VLLMConfig.command` is the
prefix, so tests run `python -m tests.fake_openai vllm-compat serve` in its place.
Logs carry step names and timings only: never prompts, answers or the API key.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from jobs.errors import JobctlError
from jobs.tasks import Task

log = logging.getLogger("jobctl.vllm")

DEFAULT_MODEL = "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8"
DEFAULT_COMMAND = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
LOOPBACK = "127.0.0.1"
ENV_PREFIX = "JOBCTL_VLLM_"
# Enough tokens to run prefill, decode and the grammar's bitmask path; finishing answers adds nothing.
WARMUP_MAX_TOKENS = 64
LOG_TAIL_LINES = 40


class LifecycleError(JobctlError):
    """A vLLM lifecycle step failed; the message names the step and how to fix it."""


class ServerCrashedError(LifecycleError):
    """The server process exited. The message carries its exit code and the tail of its log."""

    def __init__(self, message: str, exit_code: int | None = None, log_tail: str = ""):
        super().__init__(message)
        self.exit_code = exit_code
        self.log_tail = log_tail


class StepTimeoutError(LifecycleError):
    """A lifecycle step ran past its timeout."""

    def __init__(self, message: str, step: str = "", timeout: float = 0.0):
        super().__init__(message)
        self.step = step
        self.timeout = timeout


def _default_structured_outputs() -> dict[str, Any]:
    return {"backend": "xgrammar", "disable_any_whitespace": True}


def _new_api_key() -> str:
    return secrets.token_urlsafe(32)


@dataclass
class VLLMConfig:
    """Every vLLM setting, as data. `from_env()` reads JOBCTL_VLLM_<FIELD> overrides."""

    model: str = DEFAULT_MODEL
    revision: str | None = None
    served_model_name: str | None = None
    max_model_len: int | None = 8192
    # 0.85, not vLLM's 0.9: the snapshot/restore machinery needs headroom on the GPU.
    gpu_memory_utilization: float = 0.85
    # Fewer CUDA graph sizes: a smaller snapshot and a faster one-time capture.
    max_cudagraph_capture_size: int | None = 32
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    load_format: str | None = None
    structured_outputs_config: dict[str, Any] | None = field(default_factory=_default_structured_outputs)
    # The drain runs in the same container; nothing else should reach the server.
    host: str = LOOPBACK
    port: int = 8000
    api_key: str = field(default_factory=_new_api_key, repr=False)
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=lambda: list(DEFAULT_COMMAND))
    log_path: Path | None = None
    startup_timeout: float = 1200.0
    warmup_timeout: float = 600.0
    sleep_timeout: float = 120.0
    wake_timeout: float = 120.0
    health_timeout: float = 30.0
    stop_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.host != LOOPBACK:
            raise LifecycleError(
                f"vLLM must bind to {LOOPBACK} (got {self.host!r}): the drain runs beside it, and "
                "nothing else may reach the server"
            )
        if not self.command:
            raise LifecycleError(f"the server command is empty; set {ENV_PREFIX}COMMAND or leave it unset for vLLM")
        if self.log_path is None:
            self.log_path = Path(tempfile.gettempdir()) / f"jobctl-vllm-{self.port}.log"

    @property
    def model_name(self) -> str:
        """The name requests must use."""
        return self.served_model_name or self.model

    @classmethod
    def from_env(cls, prefix: str = ENV_PREFIX, env: Mapping[str, str] | None = None, **overrides: Any) -> VLLMConfig:
        """Defaults, overridden by PREFIX<FIELD> environment variables, overridden by keyword arguments.

        Lists (COMMAND, EXTRA_ARGS) are shell-split strings; dicts (ENV, STRUCTURED_OUTPUTS_CONFIG)
        are JSON; "none" clears an optional setting (e.g. MAX_MODEL_LEN=none: the model's own).
        """
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = prefix + f.name.upper()
            raw = source.get(var)
            if f.name != "host" and raw:
                values[f.name] = _parse(f, var, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError("not a boolean")
    return low in ("1", "true", "yes", "on")


def _json_object(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


# Parsers by the start of a field's annotation (a string, under `from __future__ import annotations`).
_PARSERS: list[tuple[str, Callable[[str], Any], str]] = [
    ("list", shlex.split, "a shell-quoted list"),
    ("dict", _json_object, 'a JSON object such as {"NAME": "value"}'),
    ("bool", _bool, "true or false"),
    ("int", int, "an integer"),
    ("float", float, "a number"),
    ("Path", Path, "a file path"),
    ("str", str, "text"),
]


def _parse(f: Field[Any], var: str, raw: str) -> Any:
    typ = str(f.type)
    if typ.endswith("| None") and raw.strip().lower() in ("none", "null"):
        return None
    parse, what = next((p, w) for prefix, p, w in _PARSERS if typ.startswith(prefix))
    try:
        return parse(raw)
    except ValueError as e:
        raise LifecycleError(f"{var}={raw!r} is not {what}; fix or unset it") from e


# -- warm-up requests -----------------------------------------------------------------------

# One realistic input per task kind, so warm-up compiles the grammars real traffic uses.
_EMAIL = {"from": "ana@example.org", "subject": "Friday?", "body": "Can we move the dentist to Friday? Bill: 120 EUR."}
_TXN = {"date": "2026-03-01", "description": "AMZN MKTP US*2K4 SEATTLE", "amount": -23.99, "merchant": "Amazon"}
_ORDER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WARMUP_TASKS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("email.triage", _EMAIL, {}),
    ("email.summarize", _EMAIL, {}),
    ("email.extract", _EMAIL, {}),
    ("email.draft_reply", _EMAIL, {"sign_as": "Sam"}),
    ("transaction.categorize", _TXN, {"categories": ["groceries", "shopping", "transport", "other"]}),
    ("transaction.flag", {**_TXN, "history": [_TXN]}, {}),
    ("extract", {"text": "Order 1042 ships to Lisbon on Monday.", "schema": _ORDER}, {}),
]


def warmup_requests(model: str, style: str = "json_schema") -> list[dict[str, Any]]:
    """Chat bodies built by the real task kinds (prompt and structured output), one per kind."""
    bodies = []
    for i, (kind, data, options) in enumerate(WARMUP_TASKS):
        body = Task(custom_id=f"warmup-{i}", kind=kind, input=data, options=options).build(style)[2]
        body["model"] = model
        body["max_tokens"] = min(int(body.get("max_tokens") or WARMUP_MAX_TOKENS), WARMUP_MAX_TOKENS)
        bodies.append(body)
    return bodies


def warmup_levels(config: VLLMConfig) -> list[int]:
    """How many requests to send at once in each warm-up round: 1, then batches up to the CUDA graph sizes."""
    top = config.max_cudagraph_capture_size or 64
    if config.enforce_eager:
        top = min(top, 4)  # no graphs to capture; only the grammar paths need a first run
    return sorted({n for n in (1, 4, 16, top) if n <= top})


# -- the server -----------------------------------------------------------------------------


class _Deadline:
    def __init__(self, server: VLLMServer, step: str, seconds: float, setting: str):
        self.server, self.step, self.seconds, self.setting = server, step, seconds, setting
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise self.expired()
        return remaining

    def expired(self) -> StepTimeoutError:
        return StepTimeoutError(
            f"vLLM step {self.step!r} ran past its {self.seconds:g}s timeout; if the server is only slow, raise "
            f"{ENV_PREFIX}{self.setting.upper()}, else read {self.server.log_hint()}",
            self.step,
            self.seconds,
        )


class VLLMServer:
    """A vLLM server child process (or, with `attach`, one that runs elsewhere) and its lifecycle steps.

    `timings` maps step -> seconds (start_to_ready, warmup, sleep, wake_up, health); `steps`
    lists the steps done, in order.
    """

    def __init__(self, config: VLLMConfig):
        self.config = config
        self.timings: dict[str, float] = {}
        self.steps: list[str] = []
        self._root = f"http://{config.host}:{config.port}"
        self._api_key = config.api_key
        self._model = config.model_name
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._attached = False
        self._started_at = 0.0
        # No proxy: the server is on loopback, and a proxy from the environment would swallow the calls.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def attach(cls, base_url: str, api_key: str | None, model: str) -> VLLMServer:
        """Drive a server that is already running (no process is managed; start() and stop() do nothing)."""
        srv = cls(VLLMConfig(api_key=api_key or "", command=["(attached)"], log_path=Path(os.devnull)))
        srv._root = base_url.rstrip("/").removesuffix("/v1")
        srv._model = model
        srv._attached = True
        return srv

    # -- facts ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._root + "/v1"

    @property
    def api_key(self) -> str:
        return self._api_key

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        """Whether the managed process is alive (always True for an attached server)."""
        return self._attached or (self._proc is not None and self._proc.poll() is None)

    def argv(self) -> list[str]:
        """The full command line. It holds the API key: never log it."""
        c = self.config
        args = [*c.command, "--model", c.model]
        if c.revision:
            args += ["--revision", c.revision]
        if c.served_model_name:
            args += ["--served-model-name", c.served_model_name]
        if c.max_model_len:
            args += ["--max-model-len", str(c.max_model_len)]
        args += ["--gpu-memory-utilization", str(c.gpu_memory_utilization)]
        if c.max_cudagraph_capture_size and not c.enforce_eager:
            args += ["--max-cudagraph-capture-size", str(c.max_cudagraph_capture_size)]
        args += ["--tensor-parallel-size", str(c.tensor_parallel_size)]
        if c.enforce_eager:
            args.append("--enforce-eager")
        if c.load_format:
            args += ["--load-format", c.load_format]
        if c.structured_outputs_config:
            args += ["--structured-outputs-config", json.dumps(c.structured_outputs_config)]
        args += ["--enable-sleep-mode", "--host", c.host, "--port", str(c.port), "--api-key", self._api_key]
        return args + list(c.extra_args)

    def process_env(self) -> dict[str, str]:
        env = {**os.environ, **{k: str(v) for k, v in self.config.env.items()}}
        # Set last, so no override can drop them: /sleep and /wake_up exist only in dev mode, and
        # multi-threaded inductor compilation leaves state that does not survive a GPU snapshot.
        env["VLLM_SERVER_DEV_MODE"] = "1"
        env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
        return env

    def log_hint(self) -> str:
        return "the server's log" if self._attached else f"the server's log at {self.config.log_path}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        path = self.config.log_path
        if self._attached or path is None:
            return ""
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return tail.replace(self._api_key, "***") if self._api_key else tail

    # -- steps ------------------------------------------------------------------------------

    def start(self) -> None:
        """Launch the server process, its output to the log file. Returns at once: see wait_ready()."""
        if self._attached or self.running():
            return
        self._close_log()  # from an earlier run that crashed
        c = self.config
        if _port_open(c.host, c.port):
            raise LifecycleError(
                f"port {c.port} on {c.host} is already in use, so vLLM could not bind to it (and the other "
                f"server's /health would pass for ours); set {ENV_PREFIX}PORT to a free port"
            )
        assert c.log_path is not None
        c.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(c.log_path, "ab")
        try:
            # A session of its own, so stop() can end vLLM's engine processes with it.
            self._proc = subprocess.Popen(
                self.argv(),
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.process_env(),
                start_new_session=True,
            )
        except OSError as e:
            self._close_log()
            raise LifecycleError(
                f"cannot launch the server command {c.command[0]!r} ({e.strerror}); check "
                f"{ENV_PREFIX}COMMAND (default: python -m vllm.entrypoints.openai.api_server)"
            ) from e
        self._started_at = time.monotonic()
        self._done("start")

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll /health until it answers 200, watching the process: a crash raises at once."""
        deadline = _Deadline(self, "wait_ready", timeout or self.config.startup_timeout, "startup_timeout")
        t0 = self._started_at or time.monotonic()
        while True:
            self._check_alive("wait_ready")
            poll = _Deadline(self, "wait_ready", min(2.0, deadline.left()), "startup_timeout")
            try:
                status, _ = self._call("GET", "/health", "wait_ready", poll, auth=False)
            except ServerCrashedError:
                raise
            except LifecycleError:  # not listening yet, or one slow answer: keep polling
                status = 0
            if status == 200:
                break
            time.sleep(min(0.25, max(0.0, deadline.end - time.monotonic())))
            deadline.left()
        self._done("ready", "start_to_ready", time.monotonic() - t0)

    def warm_up(self, requests: list[dict[str, Any]] | None = None) -> int:
        """Send the real task requests in rounds of growing concurrency; returns how many were sent.

        Everything that compiles lazily (torch.compile, CUDA graphs for several batch sizes, the
        xgrammar grammars and kernels) runs now, so it is in the snapshot rather than in a drain.
        """
        t0 = time.monotonic()
        deadline = _Deadline(self, "warmup", self.config.warmup_timeout, "warmup_timeout")
        bodies = requests or warmup_requests(self.model_name)
        sent = 0
        # First every body alone (each grammar compiles once), then growing batches.
        rounds = [[b] for b in bodies] + [
            [bodies[i % len(bodies)] for i in range(n)] for n in warmup_levels(self.config) if n > 1
        ]
        pool = ThreadPoolExecutor(max_workers=max(len(r) for r in rounds), thread_name_prefix="vllm-warmup")
        try:
            for batch in rounds:
                futures: list[Future[None]] = [pool.submit(self._warm_one, b, deadline) for b in batch]
                finished, _ = wait(futures, timeout=deadline.left(), return_when=FIRST_EXCEPTION)
                for fut in finished:
                    fut.result()  # the first failure, with its own message
                if len(finished) < len(futures):
                    raise deadline.expired()
                sent += len(batch)
        finally:
            # Fail fast: requests still out end by their own timeouts, unwaited.
            pool.shutdown(wait=False, cancel_futures=True)
        self._done("warmup", "warmup", time.monotonic() - t0)
        return sent

    def sleep(self, level: int = 1) -> None:
        """Reset the prefix cache, sleep (level 1: weights to CPU memory), and check that it sleeps."""
        t0 = time.monotonic()
        deadline = _Deadline(self, "sleep", self.config.sleep_timeout, "sleep_timeout")
        self._expect_ok("POST", "/reset_prefix_cache", "reset_prefix_cache", deadline)
        self._done("reset_prefix_cache")
        self._expect_ok("POST", f"/sleep?level={level}", "sleep", deadline)
        if not self.is_sleeping(deadline):
            raise LifecycleError(
                f"vLLM answered /sleep but /is_sleeping says false; the server may lack sleep mode "
                f"(--enable-sleep-mode, VLLM_SERVER_DEV_MODE=1); see {self.log_hint()}"
            )
        self._done("sleep", "sleep", time.monotonic() - t0)

    def wake_up(self) -> None:
        """Wake the server, check that it is awake, then send one tiny chat request."""
        t0 = time.monotonic()
        deadline = _Deadline(self, "wake_up", self.config.wake_timeout, "wake_timeout")
        self._expect_ok("POST", "/wake_up", "wake_up", deadline)
        if self.is_sleeping(deadline):
            raise LifecycleError(f"vLLM answered /wake_up but /is_sleeping still says true; see {self.log_hint()}")
        self._done("wake_up", "wake_up", time.monotonic() - t0)
        self.health()

    def health(self) -> None:
        """One tiny chat completion: proves the engine answers, not only the HTTP server."""
        t0 = time.monotonic()
        deadline = _Deadline(self, "health", self.config.health_timeout, "health_timeout")
        body = {
            "model": self.model_name,
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
            "temperature": 0,
        }
        self._expect_ok("POST", "/v1/chat/completions", "health", deadline, body)
        self._done("health", "health", time.monotonic() - t0)

    def is_sleeping(self, deadline: _Deadline | None = None) -> bool:
        deadline = deadline or _Deadline(self, "is_sleeping", self.config.health_timeout, "health_timeout")
        body = self._expect_ok("GET", "/is_sleeping", deadline.step, deadline)
        try:
            return bool(json.loads(body)["is_sleeping"])
        except (ValueError, KeyError, TypeError) as e:
            raise LifecycleError(
                f'vLLM\'s /is_sleeping answer is not {{"is_sleeping": ...}}; is this vLLM with '
                f"sleep mode? See {self.log_hint()}"
            ) from e

    def stop(self) -> None:
        """End the server and its engine processes: SIGTERM to the group, SIGKILL if it lingers."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        try:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(self.config.stop_timeout)
                except subprocess.TimeoutExpired:
                    log.warning("vllm stop: still running after %.0fs, killing", self.config.stop_timeout)
            # Engine processes may outlive the API server; the group goes either way.
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            self._close_log()
        self._done("stop")

    # -- compositions ------------------------------------------------------------------------

    def start_and_wait(self) -> None:
        """The slow path: start and wait for /health. The server is awake afterwards."""
        try:
            self.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def prepare_snapshot(self) -> None:
        """Everything before a GPU snapshot: start, wait_ready, warm_up, sleep. Stops the server on failure."""
        try:
            self.start_and_wait()
            self.warm_up()
            self.sleep(level=1)
        except BaseException:
            self.stop()
            raise

    def restore(self) -> None:
        """After a snapshot restore: wake the server (and prove it answers)."""
        self.wake_up()

    def __enter__(self) -> VLLMServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- plumbing ------------------------------------------------------------------------------

    def _done(self, step: str, timing: str | None = None, seconds: float | None = None) -> None:
        self.steps.append(step)
        if timing is not None and seconds is not None:
            self.timings[timing] = round(seconds, 3)
            log.info("vllm %s: %.2fs", step, seconds)
        else:
            log.info("vllm %s", step)

    def _check_alive(self, step: str) -> None:
        if self._attached:
            return
        if self._proc is None:
            raise LifecycleError(
                f"vLLM step {step!r}: the server is not running (never started, or stopped); call start() first"
            )
        code = self._proc.poll()
        if code is None:
            return
        tail = self.log_tail()
        raise ServerCrashedError(
            f"vLLM exited with code {code} during {step!r}. Last lines of {self.config.log_path}:\n{tail}\n"
            "Fix the cause above (model name or revision, HF_TOKEN for a gated model, GPU memory, a flag "
            "this vLLM rejects) and start again.",
            code,
            tail,
        )

    def _warm_one(self, body: dict[str, Any], deadline: _Deadline) -> None:
        kind = str((body.get("response_format") or {}).get("json_schema", {}).get("name", "chat"))
        self._expect_ok("POST", "/v1/chat/completions", f"warmup ({kind})", deadline, body)

    def _expect_ok(
        self, method: str, path: str, step: str, deadline: _Deadline, body: dict[str, Any] | None = None
    ) -> bytes:
        status, data = self._call(method, path, step, deadline, body)
        if status != 200:
            self._check_alive(step)
            hint = {
                401: "the API key was refused",
                404: "the endpoint is missing (vLLM needs "
                "VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode for /sleep and /wake_up)",
            }.get(status, "")
            raise LifecycleError(
                f"vLLM step {step!r}: {method} {path.split('?')[0]} answered HTTP {status}"
                f"{'; ' + hint if hint else ''}: {_short(data)}; see {self.log_hint()}"
            )
        return data

    def _call(
        self, method: str, path: str, step: str, deadline: _Deadline, body: Any = None, auth: bool = True
    ) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self._root + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if auth and self._api_key:
            req.add_header("Authorization", f"Bearer {self._api_key}")
        try:
            with self._http.open(req, timeout=deadline.left()) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read()
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts and resets are OSErrors
            timed_out = isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError)
            self._check_alive(step)
            if timed_out:
                raise deadline.expired() from e
            reason = getattr(e, "reason", None) or e
            raise LifecycleError(
                f"vLLM step {step!r}: cannot reach the server at {self._root} "
                f"({type(reason).__name__}); see {self.log_hint()}"
            ) from e

    def _close_log(self) -> None:
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _short(data: bytes) -> str:
    # Error bodies can echo a prompt; keep only the start.
    text = data.decode("utf-8", "replace").strip()
    return (text[:160] + "...") if len(text) > 160 else (text or "(empty body)")
