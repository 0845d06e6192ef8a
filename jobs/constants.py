"""Every Redis key prefix and default that jobctl uses, in one place.

RQ owns its own keys (`rq:queue:*`, `rq:job:*`, `rq:wip:*`, `rq:finished:*`,
`rq:failed:*`, `rq:canceled:*`, `rq:results:*`, `rq:execution:*`). jobctl adds only
the keys below, so `rq info` and RQ's registries keep showing the true state.
"""

# Batch metadata hash and the ordered list of its job ids.
BATCH_PREFIX = "jobctl:batch:"
BATCH_JOBS_SUFFIX = ":jobs"
# Sorted set of batch ids scored by creation time, for `jobctl status` without an id.
BATCHES_INDEX = "jobctl:batches"
# Hash of queue name -> key id, so a submit with another key is refused before it mixes keys.
QUEUE_KEY_IDS = "jobctl:queue-key-ids"

DEFAULT_QUEUE = "jobctl"
# The dotted path RQ stores for every job. A plain `rq worker` can run it too (one request at a time).
TASK_FUNC = "worker.task.perform_task"

DEFAULT_RESULT_TTL = 7 * 24 * 3600
# Seconds a claimed task stays "started" without a heartbeat before another worker may take it.
DEFAULT_LEASE_SECONDS = 30
# How many times an abandoned task (its worker died) is put back before it fails.
MAX_ABANDONS = 3

DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_TASK_BYTES = 256 * 1024
MAX_CUSTOM_ID_CHARS = 256
DEFAULT_CONTEXT_TOKENS = 8192

DEFAULT_CONCURRENCY = 64
DEFAULT_REQUEST_TIMEOUT = 120.0
DEFAULT_MAX_ATTEMPTS = 4
