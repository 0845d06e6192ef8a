"""The vLLM server's settings (VLLMConfig, read from JOBCTL_VLLM_* through jobs.config), the checks that
keep it private (loopback only, no flag may move it), and the warm-up requests: what
worker/vllm_lifecycle.py starts and how.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.errors import JobctlError
from jobs.tasks import Task

DEFAULT_MODEL = "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8"
# The largest decode batch captured as a CUDA graph; the drain's window is sized to the server below
# JOBCTL_MAX_IN_FLIGHT, and decode batches past this run eagerly.
DEFAULT_CAPTURE_SIZE = 512
DEFAULT_COMMAND = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
LOOPBACK = "127.0.0.1"
ENV_PREFIX = "JOBCTL_VLLM_"
# Enough tokens to run prefill, decode and the grammar's bitmask path; finishing answers adds nothing.
WARMUP_MAX_TOKENS = 64
WARMUP_MAX_BATCH = 64
LOG_TAIL_LINES = 40
# Flags jobctl sets itself: where the server listens and who may use it. --config is here because
# vLLM's YAML config file can set any flag, these included.
RESERVED_FLAGS = ("--host", "--port", "--api-key", "--config")


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
    # 0.85, not vLLM's 0.9: the snapshot/restore machinery needs headroom on the GPU. An 8B model on an
    # H100 still has ~50 GiB of KV cache at 0.85, room for over a thousand short tasks at once.
    gpu_memory_utilization: float = 0.85
    # CUDA graphs for decode batches up to 512 (vLLM's default capture list), so the batches the drain's
    # window fills run as graphs; 32 left every batch past 32 in eager mode (docs/BENCHMARKS.md, GPU
    # saturation). Bigger captures cost start-up time and snapshot size: measured there too.
    max_cudagraph_capture_size: int | None = DEFAULT_CAPTURE_SIZE
    # Sequences per step, and tokens per step (prefill chunks of long emails share it with decodes).
    max_num_seqs: int | None = 1024
    max_num_batched_tokens: int | None = 16384
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
        _refuse_reserved(self.extra_args, f"{ENV_PREFIX}EXTRA_ARGS", self.port)
        _refuse_reserved(self.command[1:], f"{ENV_PREFIX}COMMAND", self.port)
        if self.log_path is None:
            self.log_path = default_log_path(self.port)

    @property
    def model_name(self) -> str:
        """The name requests must use."""
        return self.served_model_name or self.model

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> VLLMConfig:
        """Defaults, overridden by JOBCTL_VLLM_<FIELD> environment variables (read by jobs.config.VLLMSettings,
        like every other variable), overridden by keyword arguments."""
        from jobs.config import ConfigError, VLLMSettings

        try:
            values = VLLMSettings.from_env(env).given()
        except ConfigError as e:
            raise LifecycleError(str(e)) from e
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _reserved_flag(token: str) -> str | None:
    """The reserved flag `token` sets, if any: `--host x`, `--host=x`, `--api_key` (vLLM reads
    underscores as dashes) and prefixes argparse would expand (`--ho`)."""
    if not token.startswith("--"):
        return None
    name = token.split("=", 1)[0].replace("_", "-")
    if len(name) < 4:  # "--h", "--p": ambiguous for argparse, which refuses them itself
        return None
    return next((flag for flag in RESERVED_FLAGS if flag.startswith(name)), None)


def _refuse_reserved(args: list[str], var: str, port: int) -> None:
    for token in args:
        flag = _reserved_flag(token)
        if flag is not None:
            raise LifecycleError(
                f"{var} sets {token.split('=', 1)[0]}, which jobctl sets itself: the server listens on "
                f"{LOOPBACK}:{port} only, behind a key made per start; remove it from {var} "
                f"(set the port with {ENV_PREFIX}PORT)"
            )


def default_log_path(port: int) -> Path:
    """Where the server logs unless told: a folder of this user's in the temp folder, made 0700 at start."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"jobctl-{uid}" / f"vllm-{port}.log"


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
    # vLLM captures its CUDA graphs when it starts; warm-up only has to run each path once (prefill, decode,
    # the grammars) at a few batch sizes, so it stops at 64 whatever the capture size.
    top = min(config.max_cudagraph_capture_size or 64, WARMUP_MAX_BATCH)
    if config.enforce_eager:
        top = min(top, 4)  # no graphs to capture; only the grammar paths need a first run
    return sorted({n for n in (1, 4, 16, top) if n <= top})
