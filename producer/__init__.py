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

from jobs.config import ConfigError, Settings
from jobs.connection import RedisUnavailableError
from jobs.crypto import CryptoError, DecryptError, MissingKeyError
from jobs.errors import JobctlError
from jobs.outcomes import Outcome
from jobs.parse import InputError
from jobs.store import BatchStatus, ConflictError, NoSuchBatchError, SubmitResult
from producer.client import Client, WaitTimeoutError

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
