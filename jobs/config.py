"""Configuration: every environment variable jobctl reads, read here and nowhere else.

Three groups, each a pydantic-settings model: `Settings` (the CLI, the Python API and the workers),
`ModalSettings` (deploy-time knobs of modal_worker.py, JOBCTL_MODAL_*) and `VLLMSettings` (the vLLM
server the lifecycle starts, JOBCTL_VLLM_*). Values come from flags (keyword arguments), then the
environment, then defaults. The README's configuration table is checked against these models by
tests/test_config.py, and the CLI's --help shows each option's variable from here.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import platformdirs
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from jobs import constants as c
from jobs.crypto import Cipher
from jobs.errors import JobctlError
from jobs.redact import redact_url

STRUCTURED_OUTPUT_STYLES = ("auto", "json_schema", "json_object")

# The environment a model reads; from_env(env=...) swaps it for a mapping (tests, Modal's planning).
_ENV: ContextVar[Mapping[str, str] | None] = ContextVar("jobctl_env", default=None)


class ConfigError(JobctlError):
    """A setting has a value jobctl cannot use; the message names the variable and the fix."""


class _MappingEnv(EnvSettingsSource):
    def _load_env_vars(self) -> Mapping[str, str | None]:
        source = _ENV.get()
        return parse_env_vars(
            os.environ if source is None else source,
            self.case_sensitive,
            self.env_ignore_empty,
            self.env_parse_none_str,
        )


class _Base(BaseSettings):
    model_config = SettingsConfigDict(
        case_sensitive=True, env_ignore_empty=True, extra="ignore", populate_by_name=True, validate_default=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env = _MappingEnv(
            settings_cls,
            case_sensitive=settings_cls.model_config.get("case_sensitive", True),
            env_prefix=settings_cls.model_config.get("env_prefix", ""),
        )
        return (init_settings, env)

    @classmethod
    def env_var(cls, name: str) -> str:
        """The environment variable of a field."""
        info: FieldInfo = cls.model_fields[name]
        alias = info.validation_alias
        if isinstance(alias, str):
            return alias
        return str(cls.model_config.get("env_prefix", "")) + name.upper()

    @classmethod
    def env_vars(cls) -> dict[str, str]:
        """Field name -> environment variable, for every field read from the environment."""
        return {name: cls.env_var(name) for name in cls.model_fields if name not in cls.not_from_env}

    not_from_env: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Any:
        """Defaults, overridden by the environment (or `env`), overridden by non-None keyword arguments."""
        given = {k: v for k, v in overrides.items() if v is not None}
        token = _ENV.set(env)
        try:
            return cls(**given)
        except ValidationError as e:
            raise ConfigError(_explain(cls, e, given)) from None
        finally:
            _ENV.reset(token)


def _explain(cls: type[_Base], e: ValidationError, given: dict[str, Any]) -> str:
    err = e.errors(include_url=False)[0]
    name = str(err["loc"][0]) if err["loc"] else ""
    field = next((f for f, info in cls.model_fields.items() if name in (f, info.validation_alias)), name)
    shown = "the value" if "key" in field or "password" in field else repr(err.get("input"))
    where = f"--{field.replace('_', '-')}" if field in given else cls.env_var(field) if field else "a setting"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}={shown} is not valid ({msg}); fix or unset it"


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("jobctl", appauthor=False))


class Settings(_Base):
    """What the CLI, the Python API and the workers use. Each field's env var is its alias."""

    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    home: Path = Field(default_factory=default_home, validation_alias="JOBCTL_HOME")
    key: SecretStr | None = Field(None, validation_alias="JOBCTL_KEY", repr=False)
    key_file: Path | None = Field(None, validation_alias="JOBCTL_KEY_FILE")
    queue: str = Field(c.DEFAULT_QUEUE, validation_alias="JOBCTL_QUEUE", min_length=1, max_length=200)
    base_url: str | None = Field(None, validation_alias="OPENAI_BASE_URL")
    api_key: SecretStr | None = Field(None, validation_alias="OPENAI_API_KEY", repr=False)
    model: str | None = Field(None, validation_alias="JOBCTL_MODEL")
    # vLLM takes {"type": "json_schema"}; llama.cpp's server takes {"type": "json_object", "schema": ...}.
    # "auto" asks the server which it is (worker.drain.style_for).
    structured_output: Literal["auto", "json_schema", "json_object"] = Field(
        "auto", validation_alias="JOBCTL_STRUCTURED_OUTPUT"
    )
    # Requests in flight against a server that does not report its load (OpenAI, llama.cpp, Ollama); against
    # vLLM the window starts here and follows the server's load (worker/window.py) up to max_in_flight.
    concurrency: int = Field(c.DEFAULT_CONCURRENCY, validation_alias="JOBCTL_CONCURRENCY", ge=1, le=100_000)
    max_in_flight: int = Field(c.DEFAULT_MAX_IN_FLIGHT, validation_alias="JOBCTL_MAX_IN_FLIGHT", ge=1, le=100_000)
    request_timeout: float = Field(c.DEFAULT_REQUEST_TIMEOUT, validation_alias="JOBCTL_REQUEST_TIMEOUT", gt=0)
    max_attempts: int = Field(c.DEFAULT_MAX_ATTEMPTS, validation_alias="JOBCTL_MAX_ATTEMPTS", ge=1, le=100)
    result_ttl: int = Field(c.DEFAULT_RESULT_TTL, validation_alias="JOBCTL_RESULT_TTL", ge=60)
    lease_seconds: int = Field(c.DEFAULT_LEASE_SECONDS, validation_alias="JOBCTL_LEASE_SECONDS", ge=1, le=3600)
    max_file_bytes: int = Field(c.DEFAULT_MAX_FILE_BYTES, validation_alias="JOBCTL_MAX_FILE_BYTES", ge=1)
    max_task_bytes: int = Field(
        c.DEFAULT_MAX_TASK_BYTES, validation_alias="JOBCTL_MAX_TASK_BYTES", ge=1, le=c.MAX_TASK_BYTES_LIMIT
    )
    context_tokens: int = Field(c.DEFAULT_CONTEXT_TOKENS, validation_alias="JOBCTL_CONTEXT_TOKENS", ge=256)

    @field_validator("home", "key_file", mode="after")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else v

    def __repr__(self) -> str:
        # Keys are SecretStr; URLs may carry a password of their own.
        shown = {k: getattr(self, k) for k in type(self).model_fields if k not in ("key", "api_key")}
        shown["redis_url"] = redact_url(self.redis_url)
        shown["base_url"] = redact_url(self.base_url)
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    __str__ = __repr__

    def with_(self, **overrides: Any) -> Settings:
        values = {k: v for k, v in overrides.items() if v is not None}
        if not values:
            return self
        data = {**self.model_dump(), **values}
        try:
            return type(self).model_validate(data)
        except ValidationError as e:
            raise ConfigError(_explain(type(self), e, values)) from None

    @property
    def key_text(self) -> str | None:
        return self.key.get_secret_value() if self.key else None

    @property
    def api_key_text(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None

    @property
    def default_key_file(self) -> Path:
        return self.key_file or self.home / "key"

    def cipher(self) -> Cipher:
        from jobs.crypto import load_key

        text, source = load_key(self.key_text, self.default_key_file)
        return Cipher(text, source)


GPU_TYPES = ("T4", "L4", "A10G", "L40S", "A100", "A100-40GB", "A100-80GB", "H100", "H100!", "H200", "B200")

# Modal's published GPU rates in USD per GPU-second (modal.com/pricing, as quoted on 2026-05-07 by techbytes.app's
# serverless GPU matrix and on 2026-06-27 by beam.cloud's "Modal Pricing Explained": H100 $3.9492/h = $0.001097/s).
# Region and non-preemptible multipliers, and the container's CPU and memory, are billed on top and not included.
# For a GPU not listed here, set JOBCTL_MODAL_GPU_PRICE_PER_SECOND.
MODAL_GPU_PRICES = {
    "H100": 0.001097,
    "H100!": 0.001097,
    "A100-80GB": 0.000694,
    "L40S": 0.000542,
    "L4": 0.000222,
    "T4": 0.000164,
}
# Seconds between a drain's time budget and Modal's timeout: the running requests' grace (30 s), writing the
# results and the report.
MODAL_TIMEOUT_MARGIN = 120


class ModalSettings(_Base):
    """Knobs of modal_worker.py, JOBCTL_MODAL_<FIELD>. Read where `modal deploy` runs, then carried into the
    containers with the deploy (modal_worker.deploy_knobs), so what runs there is what was deployed."""

    # Not case-sensitive: pydantic-settings then matches JOBCTL_MODAL_<FIELD> in upper case.
    model_config = SettingsConfigDict(env_prefix="JOBCTL_MODAL_", case_sensitive=False)

    # Modal's GPU type; the count is JOBCTL_VLLM_TENSOR_PARALLEL_SIZE. FP8 8B models want a Hopper (H100, H200).
    gpu: str = "H100"
    # Drainers at once: one drains; a second joins only for a deep queue (tasks_per_drainer).
    max_containers: int = Field(2, ge=1, le=100)
    # Idle seconds before a drainer's container stops: Modal's minimum. A drain runs until the queue is empty and the
    # cron comes every 15 minutes, so an idle drainer almost never gets a second call, while every idle second is
    # billed (60 s was $0.066 of H100 after every drain). A wake from the snapshot costs less than 15 idle minutes.
    scaledown_window: int = Field(2, ge=2, le=3600)
    # Seconds one drain call may run (Modal's timeout); the drain stops claiming MODAL_TIMEOUT_MARGIN before.
    timeout: int = Field(3600, ge=300, le=86400)
    # Seconds a container may take to start. The first boots after a deploy download the weights (unless
    # download_weights ran), compile, capture CUDA graphs, warm up and sleep: the lifecycle's own step timeouts
    # add up to about 1,900 s in the worst case. Also how long the cron counts a spawned call as on its way.
    startup_timeout: int = Field(2400, ge=60, le=86400)
    # When check_queue runs (UTC cron).
    schedule: str = "*/15 * * * *"
    # A drain's time budget, counted from the container's start for its first call (cold start included).
    max_drain_seconds: int = Field(3300, ge=60)
    # Waiting tasks that justify one more drainer (an 8B model drains ~60 tasks/s: 5,000 is ~1.5 min of work).
    tasks_per_drainer: int = Field(5000, ge=1)
    # The most requests in flight per drainer; the drain's window adapts below it to what vLLM holds.
    concurrency: int = Field(1024, ge=1)
    # The wake policy: with no drainer running, the cron starts one when at least `min_tasks` wait, or when the
    # oldest has waited `max_wait` seconds. A wake costs about a minute of H100 (restore, wake, the drain's end,
    # the report: ~$0.05-0.10) whatever it drains, while a task costs ~$0.00002 of GPU time: 100 tasks keep the
    # wake under half the bill. One hour bounds the wait (plus one cron period) and a trickle of single tasks to
    # 24 wakes a day (~$1-2). MIN_TASKS=1 (or MAX_WAIT=0) wakes for every task; `jobctl drain --remote` drains now.
    min_tasks: int = Field(100, ge=1)
    max_wait: int = Field(3600, ge=0)
    # USD per GPU-second for the drain reports' estimated cost; unset: MODAL_GPU_PRICES for the GPU type.
    gpu_price_per_second: float | None = Field(None, ge=0)
    # After a drainer failed to start (a model download failing, a crash at start), the cron starts no GPU for
    # this long: a cause that needs a person (a wrong model name, a missing HF_TOKEN) costs at most 24 failed
    # starts a day, not 96. A drain that starts clears it; `jobctl drain --remote` ignores it.
    start_backoff: int = Field(3600, ge=0)
    # The OpenAI Batch API price that `jobctl cost` puts beside the GPU's, USD per million tokens. Default:
    # gpt-4o-mini through the Batch API ($0.075 in, $0.30 out: half of $0.15/$0.60; listed July 2026), the
    # cheapest OpenAI model of an 8B model's class.
    openai_batch_model: str = "gpt-4o-mini"
    openai_batch_input_price: float = Field(0.075, ge=0)
    openai_batch_output_price: float = Field(0.30, ge=0)

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        if ":" in v:
            raise ValueError(
                "give the GPU type alone; the count is JOBCTL_VLLM_TENSOR_PARALLEL_SIZE (vLLM splits the model "
                "over that many GPUs)"
            )
        gpu = v.strip().upper()
        if gpu not in GPU_TYPES:
            raise ValueError(f"unknown GPU type {v!r}; use one of {', '.join(GPU_TYPES)}")
        return gpu

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError("not a cron schedule of five fields, such as '*/15 * * * *' (UTC)")
        return v

    @field_validator("gpu_price_per_second", mode="after")
    @classmethod
    def _price(cls, v: float | None, info: ValidationInfo) -> float | None:
        gpu = info.data.get("gpu")
        if v is None and gpu is not None:
            if gpu not in MODAL_GPU_PRICES:
                raise ValueError(f"no published price is known here for {gpu}; set it from modal.com/pricing (USD/s)")
            return MODAL_GPU_PRICES[gpu]
        return v

    @property
    def drain_budget(self) -> float:
        """A drain's time budget: max_drain_seconds, and always MODAL_TIMEOUT_MARGIN inside Modal's timeout."""
        return float(min(self.max_drain_seconds, self.timeout - MODAL_TIMEOUT_MARGIN))

    @property
    def price_per_gpu_second(self) -> float:
        return float(self.gpu_price_per_second or 0.0)


def _split(v: Any) -> Any:
    return shlex.split(v) if isinstance(v, str) else v


class VLLMSettings(_Base):
    """The vLLM server's settings (worker/vllm_lifecycle.py VLLMConfig), JOBCTL_VLLM_<FIELD>. Lists are
    shell-quoted strings, dicts JSON; "none" clears an optional setting (MAX_MODEL_LEN=none: the model's own)."""

    model_config = SettingsConfigDict(env_prefix="JOBCTL_VLLM_", env_parse_none_str="none", case_sensitive=False)

    model: str | None = None
    revision: str | None = None
    served_model_name: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    max_cudagraph_capture_size: int | None = Field(None, ge=1)
    max_num_seqs: int | None = Field(None, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=1)
    tensor_parallel_size: int | None = Field(None, ge=1)
    enforce_eager: bool | None = None
    load_format: str | None = None
    structured_outputs_config: dict[str, Any] | None = None
    port: int | None = Field(None, ge=1, le=65535)
    extra_args: Annotated[list[str] | None, NoDecode] = None
    env: dict[str, str] | None = None
    command: Annotated[list[str] | None, NoDecode] = None
    log_path: Path | None = None
    startup_timeout: float | None = Field(None, gt=0)
    warmup_timeout: float | None = Field(None, gt=0)
    sleep_timeout: float | None = Field(None, gt=0)
    wake_timeout: float | None = Field(None, gt=0)
    health_timeout: float | None = Field(None, gt=0)
    stop_timeout: float | None = Field(None, gt=0)

    _split_lists = field_validator("extra_args", "command", mode="before")(_split)

    def given(self) -> dict[str, Any]:
        """The settings that were set, "none" included (the lifecycle's own defaults fill in the rest)."""
        return {k: getattr(self, k) for k in self.model_fields_set}


def all_env_vars() -> list[str]:
    """Every environment variable jobctl reads."""
    return [v for model in (Settings, ModalSettings, VLLMSettings) for v in model.env_vars().values()]


@contextmanager
def environment(env: Mapping[str, str] | None) -> Iterator[None]:
    """Read every settings model from `env` instead of os.environ inside the block."""
    token = _ENV.set(env)
    try:
        yield
    finally:
        _ENV.reset(token)


__all__ = [
    "STRUCTURED_OUTPUT_STYLES",
    "ConfigError",
    "ModalSettings",
    "Settings",
    "VLLMSettings",
    "all_env_vars",
    "default_home",
    "environment",
    "redact_url",
]
