"""Worker processes for imports whose reading is CPU-bound Python: parsing a large mailbox.

`ordered_map` runs a function over chunks of work in worker processes and yields the results in
the order the chunks came, with a bounded number of chunks in flight, so the input streams through
and memory stays flat. The processes are forked, which costs a few milliseconds and no imports;
forking is safe only from a process with no other threads, on Linux: elsewhere `workers_for`
says 0 and the caller reads in its own process. Workers ignore Ctrl-C: the parent handles it and
stops them, so an interrupted import prints one line, not a traceback per process.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from jobs.errors import JobctlError

T = TypeVar("T")
R = TypeVar("R")

# Below this, starting processes and moving the bytes to them costs more than it saves.
MIN_BYTES = 4 << 20
MAX_WORKERS = 4


class WorkerError(JobctlError):
    """A worker process stopped (killed for memory, say) before its work was done."""


def workers_for(size: int) -> int:
    """How many worker processes an input of `size` bytes is read with: 0 to read it in this process."""
    if size < MIN_BYTES or sys.platform != "linux" or threading.active_count() > 1:
        return 0
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0
    cores = len(os.sched_getaffinity(0))
    return min(cores, MAX_WORKERS) if cores > 1 else 0


def ordered_map(
    fn: Callable[[T], R],
    chunks: Iterable[T],
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...] = (),
    ahead: int = 2,
) -> Generator[R, None, None]:
    """fn(chunk) for each chunk, in worker processes, yielded in order; at most `ahead` chunks per
    worker are in flight. `fn` and `initializer` must be module-level functions."""
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_worker,
        initargs=(initializer, initargs),
    )
    pending: deque[Future[R]] = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(fn, chunk))
            if len(pending) >= workers * ahead:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _result(future: Future[R]) -> R:
    try:
        return future.result()
    except BrokenProcessPool as e:
        raise WorkerError(
            "a worker process reading the input stopped before it was done (out of memory?); "
            "nothing was submitted: try again, or split the input"
        ) from e


def _start_worker(initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    initializer(*initargs)
