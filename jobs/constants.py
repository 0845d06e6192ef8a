"""Defaults and limits shared by the parser, the settings and the store.

Redis key names are not here: jobs/store/keys.py holds every one. Environment variables are read in
jobs/config.py only.
"""

DEFAULT_QUEUE = "jobctl"
DEFAULT_RESULT_TTL = 7 * 24 * 3600
# Seconds a claimed task stays "started" without a heartbeat before another worker may take it.
DEFAULT_LEASE_SECONDS = 30

DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_TASK_BYTES = 256 * 1024
# Sealed, a task this size stays under jobs.store.codec.MAX_DATA_BYTES, the most any reader inflates.
MAX_TASK_BYTES_LIMIT = 64 * 1024 * 1024
MAX_CUSTOM_ID_CHARS = 256
DEFAULT_CONTEXT_TOKENS = 8192

# Requests in flight against a server that does not report its load (OpenAI, llama.cpp, Ollama), and
# the window's start against vLLM, which then follows the server up to DEFAULT_MAX_IN_FLIGHT.
DEFAULT_CONCURRENCY = 64
DEFAULT_MAX_IN_FLIGHT = 1024
DEFAULT_REQUEST_TIMEOUT = 120.0
DEFAULT_MAX_ATTEMPTS = 4
