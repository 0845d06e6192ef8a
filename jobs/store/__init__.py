"""The store: the only code that knows how jobctl's queue lives in Redis and in RQ's layout.

    keys.py      every key name (RQ's, from RQ's own classes, and jobctl's)
    codec.py     RQ's formats: the job hash and its data blob, result entries, timestamps
    sealed.py    what is encrypted, and the context each value is bound to
    scripts.py   the Lua scripts behind each atomic state change
    submit.py    stage, seal and publish a batch in bounded steps (and roll a dead submit forward)
    work.py      a worker's side: claim, heartbeat, finish, release, sweep; the worker as RQ sees it
    batches.py   a batch's owner's side: status, results, cancel, retry, listing
    queues.py    a queue as a whole: depth, live drainers, health notes (for status and Modal's cron)

Producer, worker, Modal and the results reader all go through here. The RQ version the layout was
verified against is RQ_VERSION; tests/test_rq_contract.py fails loudly on any other.
"""

from jobs.store.batches import Batch, BatchStatus, Member, NoSuchBatchError, list_batches
from jobs.store.submit import ConflictError, QueueKeyError, SubmitBusyError, SubmitResult, submit
from jobs.store.work import Claimed, Finished, WorkQueue

RQ_VERSION = "2.12.0"

__all__ = [
    "RQ_VERSION",
    "Batch",
    "BatchStatus",
    "Claimed",
    "ConflictError",
    "Finished",
    "Member",
    "NoSuchBatchError",
    "QueueKeyError",
    "SubmitBusyError",
    "SubmitResult",
    "WorkQueue",
    "list_batches",
    "submit",
]
