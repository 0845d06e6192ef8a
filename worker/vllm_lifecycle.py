"""One vLLM server's life: start, wait until ready, warm up, sleep, wake up, stop.

Modal's Drainer (modal_worker.py), the GPU benchmark and the tests all drive vLLM through
this module, so the fragile parts live in one place:

* the command line: sleep mode on (`/sleep` and `/wake_up` need it, plus
  VLLM_SERVER_DEV_MODE=1), bound to 127.0.0.1 (no extra argument can move it) behind a
  generated API key (passed in the environment, as VLLM_API_KEY, never in argv), and xgrammar
  structured output with `disable_any_whitespace` (without it, answers were whitespace
  until max_tokens on the H100);
* every step has its own timeout and a clear error naming the step; a server process that
  dies is noticed at once (ServerCrashedError with the tail of its log), never waited on;
* the order before a GPU snapshot: warm up with the real task prompts and schemas at
  several batch sizes (torch.compile, CUDA graphs and xgrammar paths all run), reset the
  prefix cache (vllm #17103: garbage after wake when prefix caching is on), sleep level 1.

The server itself is any command that takes vLLM's flags: `VLLMConfig.command` is the
prefix, so tests run `python -m tests.fake_openai vllm-compat serve` in its place.
Logs carry step names and timings only: never prompts, answers or the API key. The server's
own log is a 0600 file in a 0700 folder.

The API key and GPU snapshots: the key is made with the config, so every container restored from
one memory snapshot shares it until the next deploy. vLLM reads its key once and cannot change it,
and a restart would throw the snapshot away, so it is not rotated. That exposes nothing new: each
server listens on 127.0.0.1 in its own container, which no other container can reach, and whoever
reaches that loopback is already inside the container where the key can be read. vLLM checks the
key on /v1/* only (/sleep, /wake_up, /metrics... are open to any local caller): the loopback bind
is what keeps the server private. Exposing its port beyond loopback would need a per-start key.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, Any

from jobs.redact import redact_url
from worker.vllm_config import (  # noqa: F401  (re-exported: the lifecycle's public names)
    DEFAULT_CAPTURE_SIZE,
    DEFAULT_COMMAND,
    DEFAULT_MODEL,
    ENV_PREFIX,
    LOG_TAIL_LINES,
    LOOPBACK,
    RESERVED_FLAGS,
    WARMUP_MAX_BATCH,
    WARMUP_MAX_TOKENS,
    WARMUP_TASKS,
    LifecycleError,
    ServerCrashedError,
    StepTimeoutError,
    VLLMConfig,
    default_log_path,
    warmup_levels,
    warmup_requests,
)

log = logging.getLogger("jobctl.vllm")


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
        """The full command line. The API key is not on it (see process_env): argv is public to every
        user of the machine (`ps`, /proc/PID/cmdline), a process's environment only to its owner."""
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
        if c.max_num_seqs:
            args += ["--max-num-seqs", str(c.max_num_seqs)]
        if c.max_num_batched_tokens:
            args += ["--max-num-batched-tokens", str(c.max_num_batched_tokens)]
        args += ["--tensor-parallel-size", str(c.tensor_parallel_size)]
        if c.enforce_eager:
            args.append("--enforce-eager")
        if c.load_format:
            args += ["--load-format", c.load_format]
        if c.structured_outputs_config:
            args += ["--structured-outputs-config", json.dumps(c.structured_outputs_config)]
        args += ["--enable-sleep-mode", "--host", c.host, "--port", str(c.port)]
        return args + list(c.extra_args)

    def process_env(self) -> dict[str, str]:
        env = {**os.environ, **{k: str(v) for k, v in self.config.env.items()}}
        # Set last, so no override can drop them: /sleep and /wake_up exist only in dev mode, and
        # multi-threaded inductor compilation leaves state that does not survive a GPU snapshot.
        env["VLLM_SERVER_DEV_MODE"] = "1"
        env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
        # vLLM takes its key from VLLM_API_KEY when --api-key is absent (and --api-key is refused in
        # extra args), so the key set here is the one the server checks.
        if self._api_key:
            env["VLLM_API_KEY"] = self._api_key
        else:
            env.pop("VLLM_API_KEY", None)
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
        self._log_file = self._open_log()
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
                f"vLLM step {step!r}: cannot reach the server at {redact_url(self._root)} "
                f"({type(reason).__name__}); see {self.log_hint()}"
            ) from e

    def _open_log(self) -> IO[bytes]:
        """The log file, 0600, appended to; never through a symlink. The default one lives in a
        0700 folder of this user's; if someone else made that folder first, a fresh one is used."""
        c = self.config
        assert c.log_path is not None
        if c.log_path == default_log_path(c.port) and not _private_folder(c.log_path.parent):
            c.log_path = Path(tempfile.mkdtemp(prefix="jobctl-vllm-")) / c.log_path.name
        try:
            c.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(c.log_path, flags, 0o600)
        except OSError as e:
            if os.path.islink(c.log_path):
                raise LifecycleError(
                    f"the server log path {c.log_path} is a symlink, which jobctl does not follow; remove it "
                    f"or set {ENV_PREFIX}LOG_PATH to another file"
                ) from e
            raise LifecycleError(
                f"cannot open the server log {c.log_path} ({e.strerror}); set {ENV_PREFIX}LOG_PATH to a writable file"
            ) from e
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LifecycleError(
                    f"the server log path {c.log_path} is not a regular file; set {ENV_PREFIX}LOG_PATH"
                )
            os.fchmod(fd, 0o600)  # a log left by an earlier run may have been readable by others
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "ab")

    def _close_log(self) -> None:
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None


def _private_folder(folder: Path) -> bool:
    """Whether `folder` is (or has just been made) a real folder of this user's that no one else can use."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    owner = os.getuid() if hasattr(os, "getuid") else st.st_uid
    return stat.S_ISDIR(st.st_mode) and st.st_uid == owner and not st.st_mode & 0o077


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
