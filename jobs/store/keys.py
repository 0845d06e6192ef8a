"""Every Redis key jobctl reads or writes: RQ's (taken from RQ's own classes) and jobctl's own.

RQ owns `rq:*`. jobctl adds only `jobctl:*` keys, listed here, so `rq info`, rq-dashboard and RQ's
registries keep showing the true state of every task. The Lua scripts (jobs/store/scripts.py) get
these prefixes substituted in; no key name is typed anywhere else.
"""

from __future__ import annotations

from typing import Any

from rq import worker_registration
from rq.executions import ExecutionRegistry
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.worker import Worker

# -- RQ's layout (rq 2.12; tests/test_rq_contract.py checks it against the installed rq) ----------

JOB_PREFIX = Job.redis_job_namespace_prefix  # rq:job:{id}            hash
QUEUE_PREFIX = Queue.redis_queue_namespace_prefix  # rq:queue:{q}    list of job ids
QUEUES_SET = Queue.redis_queues_keys  # rq:queues                    set of queue keys
RESULTS_PREFIX = Result.get_key("")  # rq:results:{id}               stream of results
EXECUTION_PREFIX = "rq:execution:"  # rq:execution:{id}:{exec id}   hash (rq.executions.Execution.key)
EXECUTIONS_PREFIX = ExecutionRegistry.key_template.format("")  # rq:executions:{id}  zset of exec ids
WORKER_PREFIX = Worker.redis_worker_namespace_prefix  # rq:worker:{name}  hash
WORKERS_SET = Worker.redis_workers_keys  # rq:workers               set of worker keys
WORKERS_BY_QUEUE = worker_registration.WORKERS_BY_QUEUE_KEY  # rq:workers:%s


def job(jid: str) -> str:
    return JOB_PREFIX + jid


def queue(name: str) -> str:
    return QUEUE_PREFIX + name


def intermediate(name: str) -> str:
    """Where RQ's own worker moves a job between popping it and starting it (jobctl's claim never does)."""
    return IntermediateQueue.get_intermediate_queue_key(queue(name))


def intermediate_seen(name: str, jid: str) -> str:
    """When RQ's cleanup first saw a job sitting in the intermediate list."""
    return IntermediateQueue(queue(name), connection=None).get_first_seen_key(jid)  # type: ignore[arg-type]


def started(name: str) -> str:
    """RQ's StartedJobRegistry: members `{job id}:{execution id}`, scored by lease end."""
    return StartedJobRegistry.key_template.format(name)


def finished(name: str) -> str:
    return FinishedJobRegistry.key_template.format(name)


def failed(name: str) -> str:
    return FailedJobRegistry.key_template.format(name)


def canceled(name: str) -> str:
    return CanceledJobRegistry.key_template.format(name)


def results(jid: str) -> str:
    return RESULTS_PREFIX + jid


def execution(jid: str, execution_id: str) -> str:
    return f"{EXECUTION_PREFIX}{jid}:{execution_id}"


def executions(jid: str) -> str:
    return EXECUTIONS_PREFIX + jid


def worker(name: str) -> str:
    return WORKER_PREFIX + name


def workers_of(queue_name: str) -> str:
    return WORKERS_BY_QUEUE % queue_name


# -- jobctl's own keys ------------------------------------------------------------------------------

BATCH_PREFIX = "jobctl:batch:"
# Sorted set of batch ids scored by creation time, for `jobctl status` without an id.
BATCHES_INDEX = "jobctl:batches"
# Hash: queue name -> key id, so a submit or a worker with another key is refused before it mixes keys.
QUEUE_KEY_IDS = "jobctl:queue-key-ids"
SUBMIT_LOCK_PREFIX = "jobctl:submit-lock:"
# Set of a queue's batches whose publishing a submit began and may not have finished (rolled forward).
PUBLISHING_PREFIX = "jobctl:publishing:"
# Hash: why a queue is not draining (the Modal drainer's last start failure), shown by `jobctl status`.
QUEUE_HEALTH_PREFIX = "jobctl:queue-health:"
# Sorted set: drain calls started for a queue and not yet seen running (Modal's cron), scored by start time.
SPAWNS_PREFIX = "jobctl:spawns:"
# Stream of drain reports (counts, tokens, container seconds, estimated cost), for `jobctl cost`.
DRAINS = "jobctl:drains"


def batch(batch_id: str) -> str:
    """Hash: the batch's plaintext bookkeeping and its sealed header."""
    return BATCH_PREFIX + batch_id


def manifest(batch_id: str) -> str:
    """List of sealed chunks: the batch's members, each (custom_id, kind, job id, fingerprint) or a rejection."""
    return BATCH_PREFIX + batch_id + ":manifest"


def usage(batch_id: str) -> str:
    """Hash of counters the workers add to: tokens, and the GPU seconds the Modal drainer attributes."""
    return BATCH_PREFIX + batch_id + ":usage"


def submit_lock(queue_name: str) -> str:
    return SUBMIT_LOCK_PREFIX + queue_name


def publishing(queue_name: str) -> str:
    return PUBLISHING_PREFIX + queue_name


def queue_health(queue_name: str) -> str:
    return QUEUE_HEALTH_PREFIX + queue_name


def spawns(queue_name: str) -> str:
    return SPAWNS_PREFIX + queue_name


# The prefixes the Lua scripts derive keys from (a single Redis, not a cluster: see scripts.py).
LUA_PREFIXES = {
    "JOB": JOB_PREFIX,
    "RESULTS": RESULTS_PREFIX,
    "EXECUTION": EXECUTION_PREFIX,
    "EXECUTIONS": EXECUTIONS_PREFIX,
    "BATCH": BATCH_PREFIX,
}


def text(value: bytes | str | Any) -> str:
    """A Redis reply as str (redis-py types replies as bytes or str)."""
    return value.decode() if isinstance(value, bytes) else str(value)
