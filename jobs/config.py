"""Settings: flags, then environment variables, then defaults.

The CLI passes flags as overrides; scripts call `Settings.from_env(queue="x")` the same way.
Each environment variable is listed in ENV_VARS, which the CLI's --help shows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import platformdirs

from jobs import constants as c
from jobs.crypto import Cipher, load_key

# setting name -> environment variable
ENV_VARS = {
    "redis_url": "REDIS_URL",
    "home": "JOBCTL_HOME",
    "key": "JOBCTL_KEY",
    "key_file": "JOBCTL_KEY_FILE",
    "queue": "JOBCTL_QUEUE",
    "base_url": "OPENAI_BASE_URL",
    "api_key": "OPENAI_API_KEY",
    "model": "JOBCTL_MODEL",
    "structured_output": "JOBCTL_STRUCTURED_OUTPUT",
    "concurrency": "JOBCTL_CONCURRENCY",
    "request_timeout": "JOBCTL_REQUEST_TIMEOUT",
    "max_attempts": "JOBCTL_MAX_ATTEMPTS",
    "result_ttl": "JOBCTL_RESULT_TTL",
    "lease_seconds": "JOBCTL_LEASE_SECONDS",
    "max_file_bytes": "JOBCTL_MAX_FILE_BYTES",
    "max_task_bytes": "JOBCTL_MAX_TASK_BYTES",
    "context_tokens": "JOBCTL_CONTEXT_TOKENS",
}

STRUCTURED_OUTPUT_STYLES = ("auto", "json_schema", "json_object")


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("jobctl", appauthor=False))


@dataclass(frozen=True, repr=False)
class Settings:
    redis_url: str | None = None
    home: Path = field(default_factory=default_home)
    key: str | None = field(default=None, repr=False)
    key_file: Path | None = None
    queue: str = c.DEFAULT_QUEUE
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None
    # vLLM takes {"type": "json_schema"}; llama.cpp's server takes {"type": "json_object", "schema": ...}.
    # "auto" asks the server which it is (worker.drain.style_for).
    structured_output: str = "auto"
    concurrency: int = c.DEFAULT_CONCURRENCY
    request_timeout: float = c.DEFAULT_REQUEST_TIMEOUT
    max_attempts: int = c.DEFAULT_MAX_ATTEMPTS
    result_ttl: int = c.DEFAULT_RESULT_TTL
    lease_seconds: int = c.DEFAULT_LEASE_SECONDS
    max_file_bytes: int = c.DEFAULT_MAX_FILE_BYTES
    max_task_bytes: int = c.DEFAULT_MAX_TASK_BYTES
    context_tokens: int = c.DEFAULT_CONTEXT_TOKENS

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, overridden by the environment, overridden by non-None keyword arguments."""
        source: Mapping[str, str] = os.environ if env is None else env
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, var in ENV_VARS.items():
            raw = source.get(var)
            if raw not in (None, ""):
                values[name] = _coerce(name, types[name], raw, var)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "home" in values:
            values["home"] = Path(values["home"]).expanduser()
        if values.get("key_file") is not None:
            values["key_file"] = Path(values["key_file"]).expanduser()
        settings = cls(**values)
        settings.validate()
        return settings

    def __repr__(self) -> str:
        # Keys are left out by field(repr=False); URLs may carry a password of their own.
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        shown["redis_url"] = redact_url(self.redis_url)
        shown["base_url"] = redact_url(self.base_url)
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def with_(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def validate(self) -> None:
        from jobs.errors import JobctlError

        if self.structured_output not in STRUCTURED_OUTPUT_STYLES:
            raise JobctlError(
                f"structured output style {self.structured_output!r} is unknown; "
                f"use one of {', '.join(STRUCTURED_OUTPUT_STYLES)} (JOBCTL_STRUCTURED_OUTPUT)"
            )
        if self.concurrency < 1:
            raise JobctlError("concurrency must be at least 1 (--concurrency, JOBCTL_CONCURRENCY)")

    @property
    def default_key_file(self) -> Path:
        return self.key_file or self.home / "key"

    def cipher(self) -> Cipher:
        text, source = load_key(self.key, self.default_key_file)
        return Cipher(text, source)


def redact_url(url: str | None) -> str | None:
    """The URL with any password replaced by ***."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _coerce(name: str, typ: Any, raw: str, var: str) -> Any:
    from jobs.errors import JobctlError

    kind = str(typ)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError as e:
        raise JobctlError(f"{var}={raw!r} is not a number") from e
    return raw
