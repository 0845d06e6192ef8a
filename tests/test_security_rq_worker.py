"""Attacks through RQ's own machinery on a Redis the attacker can write (docs/SECURITY.md, "Redis"):
jobs planted where RQ's cleanup or failure path would act on them, compressed data and results that
inflate without end, numbers that do not parse, and an old payload shown as a task's input.

Each test plants what an attacker would and checks that nothing ran, nothing was fetched, nothing
blew up, and no jobctl task was lost.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
import zlib
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Callback, Queue
from rq.job import Job, JobStatus
from rq.registry import clean_registries
from rq.serializers import JSONSerializer
from rq.webhook import Webhook

from jobs.store import codec, keys
from jobs.store.work import INTERMEDIATE_GRACE, WorkQueue
from tests.conftest import triage_task

REPO = Path(__file__).resolve().parent.parent
README_RQ_WORKER = ["-m", "rq.cli", "worker", "-w", "worker.rq_worker.TaskWorker", "--burst"]
MARKER_ENV = "JOBCTL_TEST_PLANTED_MARKER"


def planted_callback(*args: Any, **kwargs: Any) -> None:
    """What an attacker's failure callback would be: any importable function, called with the job."""
    Path(os.environ[MARKER_ENV]).write_text("ran")


def run_rq_worker(settings: Any, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, *README_RQ_WORKER, "-u", settings.redis_url, settings.queue],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def plant_lapsed_job(conn: redis.Redis, queue: str, **enqueue: Any) -> Job:
    """A job sitting in the queue's started registry with its lease long gone, as a dead worker leaves one."""
    q = Queue(queue, connection=conn, serializer=JSONSerializer)
    job = q.enqueue("builtins.print", "hello", **enqueue)
    conn.lrem(keys.queue(queue), 0, job.id)
    conn.hset(keys.job(job.id), "status", "started")
    conn.zadd(keys.started(queue), {f"{job.id}:planted": time.time() - 3600})
    return job


def test_rq_cleanup_runs_a_planted_failure_callback_but_the_task_worker_does_not(
    client, conn, settings, worker_env, tmp_path, monkeypatch
):
    marker = tmp_path / "callback-ran"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    callback = Callback(f"{__name__}.planted_callback")
    # The attack, shown against RQ's own cleanup (what a plain `rq worker` runs every few minutes).
    plant_lapsed_job(conn, settings.queue, on_failure=callback)
    clean_registries(Queue(settings.queue, connection=conn, serializer=JSONSerializer))
    assert marker.exists(), "control: RQ's cleanup calls the callback a job names"
    marker.unlink()

    planted = plant_lapsed_job(conn, settings.queue, on_failure=callback)
    sub = client.submit([triage_task(1)])
    proc = run_rq_worker(settings, {**worker_env, MARKER_ENV: str(marker)})
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "the TaskWorker's cleanup ran a planted callback"
    # The planted job (no retries left) was failed as refused, with nothing of it loaded.
    job = Job.fetch(planted.id, connection=conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED and "refused" in (job._exc_info or "")
    [out] = list(client.results(sub.batch_id))
    assert out.ok


class Hits(http.server.BaseHTTPRequestHandler):
    count = 0

    def do_POST(self) -> None:
        Hits.count += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[str]:
    Hits.count = 0
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hits)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook"
    srv.shutdown()


def test_a_refused_job_posts_no_webhook(client, conn, settings, worker_env, listener):
    """RQ's failure path posts a failed job's webhooks: refusing a planted job through it would make the
    worker fetch any URL the attacker names (from inside the user's network)."""
    q = Queue(settings.queue, connection=conn, serializer=JSONSerializer)
    planted = q.enqueue("os.system", "true", webhooks=[Webhook(listener, "failed")])
    sub = client.submit([triage_task(1)])
    proc = run_rq_worker(settings, worker_env)
    assert proc.returncode == 0, proc.stderr
    assert Hits.count == 0, "the worker posted the planted job's webhook"
    job = Job.fetch(planted.id, connection=conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED and "refused" in (job._exc_info or "")
    assert conn.zscore(keys.failed(settings.queue), planted.id) is not None
    assert conn.zcard(keys.started(settings.queue)) == 0
    [out] = list(client.results(sub.batch_id))
    assert out.ok


def bomb(size: int) -> bytes:
    """zlib data a few hundred KB long that inflates to `size` bytes."""
    c = zlib.compressobj(9)
    chunk = b"\0" * (1 << 20)
    out = [c.compress(chunk) for _ in range(size >> 20)]
    return b"".join([*out, c.flush()])


BOMB = 4 * codec.MAX_DATA_BYTES


def test_a_job_whose_data_inflates_past_the_limit_is_refused_without_inflating_it(client, conn, settings, worker_env):
    from worker.rq_worker import BoundedJob

    blob = bomb(BOMB)
    assert len(blob) < 2 * 1024 * 1024
    sub = client.submit([triage_task(1)])
    [m] = client.batch(sub.batch_id).members()
    q = Queue(settings.queue, connection=conn, serializer=JSONSerializer)
    planted = q.enqueue("builtins.print", "x")
    conn.hset(keys.job(planted.id), "data", blob)
    # Twice-compressed: inflating once gives zlib data, which RQ's Job.restore would inflate unbounded.
    conn.hset(keys.job(m.job_id), "data", zlib.compress(blob))

    with pytest.raises(ValueError):
        codec.decode_data(blob)
    job = BoundedJob.fetch(planted.id, connection=conn, serializer=JSONSerializer)
    assert job.data == b"null"
    twice = BoundedJob.fetch(m.job_id, connection=conn, serializer=JSONSerializer)
    assert twice.data == b"null"

    proc = run_rq_worker(settings, worker_env)
    assert proc.returncode == 0, proc.stderr
    for jid in (planted.id, m.job_id):
        assert Job.fetch(jid, connection=conn, serializer=JSONSerializer).get_status() == JobStatus.FAILED


def test_a_result_that_inflates_past_the_limit_reads_as_tampered(client, conn, drain):
    sub = client.submit([triage_task(i) for i in range(2)])
    drain()
    first = client.batch(sub.batch_id).members()[0].job_id
    [(_entry, fields)] = conn.xrange(keys.results(first))
    conn.delete(keys.results(first))
    conn.xadd(keys.results(first), {**fields, b"type": b"2", b"exc_string": b64encode(bomb(BOMB))})
    conn.hset(keys.job(first), "status", "failed")
    t0 = time.monotonic()
    outs = list(client.results(sub.batch_id))
    assert time.monotonic() - t0 < 60
    assert [o.error["code"] if o.error else "ok" for o in outs] == ["tampered", "ok"]


@pytest.mark.parametrize(
    "fields",
    [
        {b"type": b"x"},
        {b"type": b"1", b"return_value": b"%%%"},
        {b"type": b"1", b"return_value": b64encode(b"[" * 100_000)},
        {b"type": b"1", b"return_value": b64encode(b"12")},
        {b"type": b"2", b"exc_string": b64encode(b"not zlib")},
        {b"type": b"2", b"exc_string": b64encode(zlib.compress(b"\xff\xfe"))},
    ],
)
def test_malformed_result_entries_read_as_tampered(client, conn, drain, fields):
    sub = client.submit([triage_task(1)])
    drain()
    [m] = client.batch(sub.batch_id).members()
    conn.delete(keys.results(m.job_id))
    conn.xadd(keys.results(m.job_id), fields)
    [out] = list(client.results(sub.batch_id))
    assert out.error is not None and out.error["code"] == "tampered"


def test_numbers_changed_in_redis_do_not_break_status_or_listing(client, conn, drain):
    sub = client.submit([triage_task(1)])
    drain()
    conn.hset(keys.usage(sub.batch_id), mapping={"gpu_seconds": "nan", "cost_usd": "lots", "prompt_tokens": "x"})
    conn.hset(keys.batch(sub.batch_id), mapping={"created_at": "yesterday", "result_ttl": "forever"})
    st = client.status(sub.batch_id)
    assert st.counts["completed"] == 1 and st.gpu_seconds == 0 and st.cost_usd == 0
    assert st.usage.prompt_tokens == 0 and st.created_at > 0
    assert [b.id for b in client.batches(since=0)] == [sub.batch_id]


def test_an_old_payload_put_back_is_not_shown_as_the_input(client, conn, drain):
    first = client.submit([triage_task(1, "version A of the task")])
    drain()
    [m] = client.batch(first.batch_id).members()
    saved = conn.hmget(keys.job(m.job_id), "data", "jobctl_batch", "jobctl_fp")
    conn.delete(keys.job(m.job_id), keys.results(m.job_id))  # expired; the user submits new content
    second = client.submit([triage_task(1, "version B of the task")])
    drain()
    [out] = list(client.results(second.batch_id))
    assert out.ok and "version B" in str(out.input)
    conn.hset(keys.job(m.job_id), mapping={"data": saved[0], "jobctl_batch": saved[1], "jobctl_fp": saved[2]})
    [out] = list(client.results(second.batch_id))
    assert out.ok and out.input is None, "an old payload was shown as this answer's input"


# -- upkeep that RQ's cleanup would get wrong ---------------------------------------------------------


def test_a_task_stranded_in_rqs_intermediate_list_goes_back_to_the_queue(client, conn, settings, drain):
    """An `rq worker` killed between popping a task and starting it leaves it in the intermediate list;
    RQ's cleanup fails it there. jobctl puts it back."""
    sub = client.submit([triage_task(i) for i in range(2)])
    conn.lmove(keys.queue(settings.queue), keys.intermediate(settings.queue), "LEFT", "RIGHT")
    wq = WorkQueue(conn, settings.cipher(), settings.queue, settings.lease_seconds, settings.result_ttl)
    assert wq.maintain() == (0, 0)  # first seen now: left alone for the grace period
    [jid] = [keys.text(j) for j in conn.lrange(keys.intermediate(settings.queue), 0, -1)]
    conn.set(keys.intermediate_seen(settings.queue, jid), time.time() - INTERMEDIATE_GRACE - 1)
    assert wq.maintain() == (1, 0)
    assert conn.llen(keys.intermediate(settings.queue)) == 0 and wq.depth() == 2
    assert wq.maintain() == (0, 0)  # nothing twice
    drain()
    outs = list(client.results(sub.batch_id))
    assert len(outs) == 2 and all(o.ok for o in outs)


def test_the_task_workers_upkeep_fails_a_task_abandoned_too_often_sealed(client, conn, settings):
    sub = client.submit([triage_task(1)])
    wq = WorkQueue(conn, settings.cipher(), settings.queue, 1, settings.result_ttl)
    for _ in range(codec.MAX_ABANDONS):
        assert len(wq.claim(1)) == 1
        conn.zadd(keys.started(settings.queue), {m: 0 for m in conn.zrange(keys.started(settings.queue), 0, -1)})
        assert wq.maintain() == (1, 0)
    assert len(wq.claim(1)) == 1
    conn.zadd(keys.started(settings.queue), {m: 0 for m in conn.zrange(keys.started(settings.queue), 0, -1)})
    assert wq.maintain() == (0, 1)
    [out] = list(client.results(sub.batch_id))
    assert out.custom_id == "mail-1" and out.error is not None and out.error["code"] == "abandoned"


# -- review findings: checks made on the loaded job, not on a second read of Redis ---------------------


def test_callbacks_and_webhooks_are_judged_on_the_job_as_loaded_not_read_again(
    client, conn, settings, worker_env, listener, tmp_path, monkeypatch
):
    """The attacker adds a success callback and a webhook to a real task, the worker loads the job, and
    the attacker removes them before the worker's check read Redis again: the check passed, and RQ
    ran the callback (with the decrypted answer) and posted the webhook from the object it had loaded.
    Here the removal happens exactly in that gap, every time."""
    from worker.rq_worker import TaskWorker

    marker = tmp_path / "callback-ran"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    for k, v in worker_env.items():
        monkeypatch.setenv(k, v)
    sub = client.submit([triage_task(1)])
    [m] = client.batch(sub.batch_id).members()
    planted = {
        "success_callback_name": f"{__name__}.planted_callback",
        "failure_callback_name": f"{__name__}.planted_callback",
        "webhooks": f'[{{"url": "{listener}", "events": ["success", "failed"]}}]',
    }
    conn.hset(keys.job(m.job_id), mapping=planted)
    real_perform = TaskWorker.perform_job

    def attacker_removes_them_first(self: TaskWorker, job: Job, queue: Queue) -> bool:
        conn.hdel(keys.job(job.id), *planted)  # after the load, before any check
        return real_perform(self, job, queue)

    monkeypatch.setattr(TaskWorker, "perform_job", attacker_removes_them_first)
    TaskWorker([Queue(settings.queue, connection=conn)], connection=conn).work(burst=True)
    assert not marker.exists(), "a planted callback ran"
    assert Hits.count == 0, "the worker posted a planted webhook"
    job = Job.fetch(m.job_id, connection=conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED and "refused" in (job._exc_info or "")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("created_at", "junk"),
        ("timeout", "forever"),
        ("status", "no-such-status"),
        ("retries_left", "many"),
        ("enqueued_at", "1e999"),
        ("retry_intervals", "[[["),
    ],
)
def test_junk_in_rqs_plaintext_fields_fails_that_job_and_the_worker_goes_on(
    client, conn, settings, worker_env, field, value
):
    """RQ's Job.restore raised on a field it cannot parse, out of its dequeue: the README's `rq worker`
    ended with a traceback, the job stuck in RQ's intermediate list, and the rest of the queue waited
    (jobctl's recovery then put the job back at the front, and the next run ended the same way)."""
    sub = client.submit([triage_task(i) for i in range(3)])
    first = client.batch(sub.batch_id).members()[0].job_id
    conn.hset(keys.job(first), field, value)
    proc = run_rq_worker(settings, worker_env)
    assert proc.returncode == 0, proc.stderr
    outs = {o.job_id: o for o in client.results(sub.batch_id)}
    assert [outs[j].ok for j in outs if j != first] == [True, True]
    assert not outs[first].ok
    assert conn.zscore(keys.failed(settings.queue), first) is not None
    assert conn.llen(keys.intermediate(settings.queue)) == 0 and conn.llen(keys.queue(settings.queue)) == 0


def test_an_exc_info_that_inflates_past_the_limit_is_not_inflated(client, conn, settings, worker_env):
    """RQ inflates a job's exc_info without a bound when it loads the job: a 2 MB plant took the worker
    to 4.2 GB. Here the worker runs with a 1.5 GiB address-space limit and still finishes the queue."""
    from worker.rq_worker import BoundedJob

    sub = client.submit([triage_task(i) for i in range(2)])
    first = client.batch(sub.batch_id).members()[0].job_id
    conn.hset(keys.job(first), "exc_info", bomb(BOMB))
    job = BoundedJob.fetch(first, connection=conn, serializer=JSONSerializer)
    assert len(job._exc_info or "") < 10_000
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20)); "
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            limit + "import sys; from rq.cli import main; sys.argv[0] = 'rq'; main()",
            *README_RQ_WORKER[2:],
            "-u",
            settings.redis_url,
            settings.queue,
        ],
        env={**worker_env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0 and "MemoryError" not in proc.stderr, proc.stderr[-2000:]
    assert all(o.ok for o in client.results(sub.batch_id))


def test_the_rq_worker_logs_no_answer_text_even_at_debug(client, conn, settings, worker_env):
    """RQ logs `result: %r` of what a job returns at DEBUG (`rq worker -v`): the result's repr held
    the answer."""
    sub = client.submit([triage_task(1, body="PRIVATE-ZEBRA-5521 please call me")])
    proc = subprocess.run(
        [sys.executable, *README_RQ_WORKER, "-v", "-u", settings.redis_url, settings.queue],
        env={**worker_env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    [out] = list(client.results(sub.batch_id))
    assert out.ok
    answer = out.body["choices"][0]["message"]["content"]  # type: ignore[index]
    logs = proc.stdout + proc.stderr
    assert "result:" in logs  # RQ's debug line is there
    assert answer not in logs and "PRIVATE-ZEBRA" not in logs and '"category"' not in logs
