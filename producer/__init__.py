"""The submitting side of jobctl: the Python API for scripts, the CLI, and the local model server.

    from producer import Client, InputError, ConflictError
    client = Client(queue="mail")            # keyword arguments override env, which overrides defaults
    sub = client.submit_file("inbox.json")
    status = client.wait(sub.batch_id, timeout=3600)
    for outcome in client.results(sub.batch_id):
        print(outcome.custom_id, outcome.parsed if outcome.ok else outcome.error)

Every error jobctl raises on purpose is a JobctlError; the ones scripts usually catch are exported
here, next to the types they return.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobs.config import ConfigError, Settings
    from jobs.connection import RedisUnavailableError
    from jobs.crypto import CryptoError, DecryptError, MissingKeyError
    from jobs.errors import JobctlError
    from jobs.outcomes import Outcome
    from jobs.parse import InputError
    from jobs.store import BatchStatus, ConflictError, NoSuchBatchError, SubmitResult
    from producer.client import Client, WaitTimeoutError

# Loaded when first used: `jobctl` imports this package before anything else, and a Ctrl-C while
# pydantic and redis load would end in a traceback before the CLI can say "interrupted".
_WHERE = {
    "BatchStatus": "jobs.store",
    "Client": "producer.client",
    "ConfigError": "jobs.config",
    "ConflictError": "jobs.store",
    "CryptoError": "jobs.crypto",
    "DecryptError": "jobs.crypto",
    "InputError": "jobs.parse",
    "JobctlError": "jobs.errors",
    "MissingKeyError": "jobs.crypto",
    "NoSuchBatchError": "jobs.store",
    "Outcome": "jobs.outcomes",
    "RedisUnavailableError": "jobs.connection",
    "Settings": "jobs.config",
    "SubmitResult": "jobs.store",
    "WaitTimeoutError": "producer.client",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'producer' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


__all__ = [
    "BatchStatus",
    "Client",
    "ConfigError",
    "ConflictError",
    "CryptoError",
    "DecryptError",
    "InputError",
    "JobctlError",
    "MissingKeyError",
    "NoSuchBatchError",
    "Outcome",
    "RedisUnavailableError",
    "Settings",
    "SubmitResult",
    "WaitTimeoutError",
]
assert set(__all__) == set(_WHERE)
