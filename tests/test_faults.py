"""Fault scenarios on a real Redis and real worker processes: a killed worker, a Redis restart,
a faulty or dying model server, workers racing on one queue, cancel and retry mid-drain.

Every scenario ends on the same invariant (`assert_settled`): each task finished or failed with a
reason code, none lost, one result per custom_id (and one entry in each job's results stream),
nothing left in the started registry.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs import outcomes as r
from jobs.store import codec, keys
from producer.client import Client
from tests.conftest import FAST, RedisProcess, finish, spawn, triage_task, wait_for
from tests.fake_openai import FakeOpenAI, Fault, FaultPlan
from worker.drain import Drainer, DrainOptions, RedisUnavailableError
from worker.http import make_client
from worker.llm import Policy, ServerUnreachableError

REPO = Path(__file__).resolve().parents[1]
REASONS = {r.SERVER_ERROR, r.TIMEOUT, r.CONNECTION_ERROR, r.RATE_LIMITED, r.LENGTH, r.INVALID_OUTPUT, r.ABANDONED}


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this module's own (flushed per test by conftest's `redis_url`): db 13 of the
    local Redis is shared with other test runs, whose per-test FLUSHDB would wipe a drain mid-way."""
    proc = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    try:
        yield proc.url
    finally:
        proc.stop()


def done_count(conn: redis.Redis, queue: str) -> int:
    return int(conn.zcard(keys.finished(queue))) + int(conn.zcard(keys.failed(queue)))


def stream_lengths(conn: redis.Redis, job_ids: list[str]) -> list[int]:
    with conn.pipeline(transaction=False) as p:
        for j in job_ids:
            p.xlen(keys.results(j))
        return [int(n) for n in p.execute()]


def assert_settled(
    client: Client, conn: redis.Redis, batch_id: str, expected: list[str], cancelled: int = 0
) -> list[Any]:
    """The invariant: every expected custom_id has exactly one outcome, each failure a reason, each
    ended job one results-stream entry; nothing queued, nothing in started."""
    queue = client.settings.queue
    outs = list(client.results(batch_id))
    counts = Counter(o.custom_id for o in outs)
    assert sorted(counts) == sorted(expected), "lost or unexpected custom_ids"
    assert max(counts.values(), default=1) == 1, f"twice in the results: {[k for k, v in counts.items() if v > 1]}"
    for o in outs:
        if not o.ok:
            assert o.error and o.error["code"] in REASONS and o.error["message"], o.error
    ids = [m.job_id for m in client.batch(batch_id).members()]
    lengths = Counter(stream_lengths(conn, ids))
    assert lengths == Counter({1: len(expected), **({0: cancelled} if cancelled else {})}), lengths
    assert conn.zcard(keys.started(queue)) == 0, "tasks stuck in started"
    assert conn.llen(keys.queue(queue)) == 0
    st = client.status(batch_id)
    assert st.done and st.counts.get("completed", 0) + st.counts.get("failed", 0) == len(expected)
    return outs


# -- 1. a worker killed mid-drain ------------------------------------------------------------------


def test_killed_worker_tasks_return_after_lease(client, conn, settings, fake, worker_env, procs):
    fake.latency = 0.3
    tasks = [triage_task(i) for i in range(120)]
    sub = client.submit(tasks)
    q = settings.queue
    w1 = spawn(procs, {**worker_env, "JOBCTL_CONCURRENCY": "16"})
    wait_for(lambda: done_count(conn, q) >= 16 and conn.zcard(keys.started(q)) > 0, 30, "a drain under way")
    w1.send_signal(signal.SIGKILL)
    w1.wait(10)
    held = [m.decode().rsplit(":", 1)[0] for m in conn.zrange(keys.started(q), 0, -1)]
    assert held, "the killed worker held no tasks"
    assert stream_lengths(conn, held) == [0] * len(held)

    t0 = time.monotonic()
    rc, report, err = finish(spawn(procs, {**worker_env, "JOBCTL_CONCURRENCY": "16"}), 60)
    assert rc == 0, err
    assert report is not None and report["requeued_abandoned"] == len(held)
    assert report["superseded"] == 0
    # A burst worker waits for the dead one's leases (3 s) instead of leaving its tasks behind.
    assert time.monotonic() - t0 < 30
    # RQ's retries_left counts the abandoned leases down, as RQ's own cleanup would.
    left = [int(a or 0) for a in (conn.hget(keys.job(j), "retries_left") for j in held)]
    assert left == [codec.MAX_ABANDONS - 1] * len(held)
    outs = assert_settled(client, conn, sub.batch_id, [t["custom_id"] for t in tasks])
    assert all(o.ok for o in outs)


# -- 2. Redis restarted mid-drain ------------------------------------------------------------------


def test_redis_restart_mid_drain(settings, fake, worker_env, procs, tmp_path):
    rp = RedisProcess(tmp_path / "redis").start()
    try:
        conn = redis.Redis.from_url(rp.url)
        client = Client(settings.with_(redis_url=rp.url), connection=conn)
        fake.latency = 0.1
        tasks = [triage_task(i) for i in range(300)]
        sub = client.submit(tasks)
        q = settings.queue
        env = {**worker_env, "REDIS_URL": rp.url, "JOBCTL_CONCURRENCY": "16"}
        w = spawn(procs, env, verbose="-v")
        wait_for(lambda: done_count(conn, q) >= 40, 30, "a drain under way")
        rp.stop()
        time.sleep(2.5)
        assert w.poll() is None, "the worker gave up on Redis at once"
        rp.start()  # same port, same append-only file
        rc, report, err = finish(w, 90)
        # The worker saw Redis go, kept its results, and carried on once Redis was back (its patience
        # is 30 s); a worker that gives up must instead exit with a clear message, and a re-run finish.
        assert "redis unreachable for 0s, retrying" in err
        assert rc == 0 and report is not None and "Traceback" not in err, err[-3000:]
        assert_settled(client, conn, sub.batch_id, [t["custom_id"] for t in tasks])
        assert all(o.ok for o in client.results(sub.batch_id))
        conn.close()
    finally:
        rp.stop()


def test_redis_gone_too_long_exits_cleanly(settings, fake, tmp_path, caplog):
    """Redis down for good: the drain gives up after its patience with a clear error, then a
    re-run against the restarted Redis finishes every task once. Meanwhile it says so once, not
    twice a second (a cron mails every line)."""
    rp = RedisProcess(tmp_path / "redis").start()
    rconn = redis.Redis.from_url(rp.url)
    rclient = Client(settings.with_(redis_url=rp.url), connection=rconn)
    tasks = [triage_task(i) for i in range(150)]
    sub = rclient.submit(tasks)
    fake.latency = 0.05

    async def go(patience: float) -> Any:
        opts = DrainOptions(
            queues=[settings.queue], concurrency=8, lease_seconds=3, poll_interval=0.1, redis_patience=patience
        )
        async with make_client(fake.url, None, 8, 5) as oa:
            return await Drainer(rconn, settings.cipher(), oa, opts, FAST).drain()

    stopper = threading.Thread(
        target=lambda: (wait_for(lambda: done_count(rconn, settings.queue) >= 20, 30, "progress"), rp.stop())
    )
    stopper.start()
    try:
        with (
            caplog.at_level(logging.WARNING, logger="jobctl"),
            pytest.raises(RedisUnavailableError, match=r"unreachable for 2s.*run the worker again"),
        ):
            asyncio.run(go(2.0))
        warned = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
        assert len(warned) == 1, [r.getMessage() for r in warned]
        stopper.join(10)
        rp.start()
        report = asyncio.run(go(30.0))
        assert report.superseded == 0
        assert_settled(rclient, rconn, sub.batch_id, [t["custom_id"] for t in tasks])
    finally:
        rconn.close()
        rp.stop()


# -- 3. model server faults ------------------------------------------------------------------------


def test_model_server_faults_end_with_reasons(client, conn, drain):
    plan = FaultPlan(rate=0.3, seed=11, hang_seconds=5.0)  # 500, close, hang, invalid_json, length
    tasks = [triage_task(i) for i in range(200)]
    sub = client.submit(tasks)
    with FakeOpenAI(faults=plan) as srv:
        report = drain(base_url=srv.url, timeout=1.0, concurrency=32)
        injected = {k.value: v for k, v in srv.stats.faults_injected.items() if v}
    assert report.done + report.failed == 200 and report.superseded == 0
    assert report.retries > 0 and report.done > 100
    assert set(injected) == {"500", "close", "hang", "invalid_json", "length"}, injected
    assert set(report.errors) <= REASONS, report.errors
    outs = assert_settled(client, conn, sub.batch_id, [t["custom_id"] for t in tasks])
    failed = Counter(o.error["code"] for o in outs if not o.ok)
    assert sum(failed.values()) == report.failed and failed == report.errors

    # The failed ones are retried against a healthy server: every task ends completed, once.
    assert client.retry(sub.batch_id) == report.failed
    with FakeOpenAI() as srv:
        again = drain(base_url=srv.url, timeout=1.0)
    assert (again.done, again.failed) == (report.failed, 0)
    outs = assert_settled(client, conn, sub.batch_id, [t["custom_id"] for t in tasks])
    assert all(o.ok for o in outs)


@pytest.mark.timeout(90)
def test_model_server_dies_mid_drain(client, conn, drain, settings):
    tasks = [triage_task(i) for i in range(300)]
    sub = client.submit(tasks)
    srv = FakeOpenAI(latency=0.05).start()

    def kill_when_busy() -> None:
        wait_for(lambda: srv.stats.completed >= 60, 30, "completions")
        srv.stop()

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ServerUnreachableError, match=r"stopped answering.*handing unfinished tasks back"):
            drain(base_url=srv.url, concurrency=16)
    finally:
        killer.join(30)
        srv.stop()
    assert time.monotonic() - t0 < 30, "the drain hung on a dead server"
    # Nothing burned to failed, nothing stuck: what did not finish is back in the queue.
    st = client.status(sub.batch_id)
    assert st.counts.get("failed", 0) == 0 and st.counts.get("running", 0) == 0
    assert 0 < st.counts["completed"] < 300 and st.counts["queued"] == 300 - st.counts["completed"]
    assert conn.zcard(keys.started(settings.queue)) == 0
    first = st.counts["completed"]

    with FakeOpenAI() as again:
        report = drain(base_url=again.url, concurrency=16)
        client.retry(sub.batch_id)  # nothing failed, so nothing to retry; harmless either way
        drain(base_url=again.url)
    assert report.done == 300 - first and report.failed == 0
    outs = assert_settled(client, conn, sub.batch_id, [t["custom_id"] for t in tasks])
    assert all(o.ok for o in outs)


def test_unreachable_server_at_concurrency_one_burns_nothing(client, conn, drain):
    """With one request in flight, a dead server still stops the drain before a task fails."""
    sub = client.submit([triage_task(i) for i in range(5)])
    srv = FakeOpenAI().start()
    dead_url = srv.url
    srv.stop()  # nothing listens on its port now; the model is given, so the first task meets it
    with pytest.raises(ServerUnreachableError):
        drain(base_url=dead_url, concurrency=1, model="fake-model")
    st = client.status(sub.batch_id)
    assert st.counts["queued"] == 5 and sum(st.counts.values()) == 5


def test_lone_connection_errors_still_fail_the_task(client, conn, drain, fake):
    """A task that cannot get through while the server answers others fails with its reason."""
    fake.script(Fault.CLOSE, Fault.CLOSE)
    sub = client.submit([triage_task(1), triage_task(2)])
    report = drain(concurrency=1, policy=Policy(max_attempts=2, backoff_base=0.01, backoff_max=0.02))
    assert (report.done, report.failed) == (1, 1)
    outs = assert_settled(client, conn, sub.batch_id, ["mail-1", "mail-2"])
    assert [o.error["code"] for o in outs if not o.ok] == [r.CONNECTION_ERROR]


# -- 4. several workers on one queue ---------------------------------------------------------------


def test_three_workers_process_each_task_once(client, conn, settings, fake, worker_env, procs, tmp_path):
    fake.latency = 0.02
    env = {**worker_env, "JOBCTL_CONCURRENCY": "16"}
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    workers = [spawn(procs, env, verbose="-v", stderr=log.open("wb"), burst=False) for log in logs]
    wait_for(lambda: all("drain start" in log.read_text() for log in logs), 30, "three workers up")
    tasks = [triage_task(i) for i in range(600)]
    sub = client.submit(tasks)
    client.wait(sub.batch_id, timeout=90, poll=0.2)
    for w in workers:
        w.send_signal(signal.SIGTERM)
    reports = []
    for w, log in zip(workers, logs, strict=True):
        rc, report, _ = finish(w, 30)
        assert rc == 143, log.read_text()[-2000:]  # stopped by SIGTERM, as documented
        reports.append(report)
    assert sum(rep["done"] for rep in reports) == 600
    assert sum(rep["superseded"] for rep in reports) == 0
    assert sum(1 for rep in reports if rep["done"]) >= 2, [rep["done"] for rep in reports]
    assert fake.stats.requests == 600
    assert_settled(client, conn, sub.batch_id, [t["custom_id"] for t in tasks])


# -- 5. cancel and retry mid-drain -----------------------------------------------------------------


def test_cancel_mid_drain(client, conn, settings, fake, worker_env, procs):
    fake.latency = 0.2
    tasks = [triage_task(i) for i in range(200)]
    sub = client.submit(tasks)
    w = spawn(procs, {**worker_env, "JOBCTL_CONCURRENCY": "8"})
    wait_for(lambda: done_count(conn, settings.queue) >= 16, 30, "a drain under way")
    dropped = client.cancel(sub.batch_id)
    assert 0 < dropped < 200
    assert client.status(sub.batch_id).status in ("cancelling", "cancelled")
    rc, report, err = finish(w, 60)
    assert rc == 0, err
    st = client.status(sub.batch_id)
    assert st.status == "cancelled"
    assert st.counts.get("cancelled") == dropped and st.counts.get("completed") == 200 - dropped
    assert report is not None and report["done"] == 200 - dropped
    finished_ids = [o.custom_id for o in client.results(sub.batch_id)]
    assert_settled(client, conn, sub.batch_id, finished_ids, cancelled=dropped)
    assert client.retry(sub.batch_id) == 0  # retry does not bring cancelled tasks back


def test_retry_while_another_drain_runs(client, conn, settings, fake, worker_env, procs, drain):
    first = [triage_task(f"a{i}") for i in range(20)]
    sub1 = client.submit(first)
    fake.script(*([Fault.HTTP_500] * 10))
    report = drain(concurrency=1, policy=Policy(max_attempts=1))
    assert (report.done, report.failed) == (10, 10)

    fake.latency = 0.1
    second = [triage_task(f"b{i}") for i in range(200)]
    sub2 = client.submit(second)
    w = spawn(procs, {**worker_env, "JOBCTL_CONCURRENCY": "8"})
    wait_for(lambda: client.status(sub2.batch_id).counts.get("completed", 0) >= 16, 30, "a drain under way")
    assert client.retry(sub1.batch_id) == 10
    rc, report2, err = finish(w, 60)
    assert rc == 0, err
    assert report2 is not None and report2["done"] == 210
    outs = assert_settled(client, conn, sub1.batch_id, [t["custom_id"] for t in first])
    assert all(o.ok for o in outs)
    assert_settled(client, conn, sub2.batch_id, [t["custom_id"] for t in second])


def test_dead_server_from_cli_exits_nonzero_and_hands_back(client, conn, settings, worker_env, procs):
    """`jobctl worker` against a server that died: a clear error, exit 1, tasks back in the queue."""
    srv = FakeOpenAI(latency=0.05).start()
    sub = client.submit([triage_task(i) for i in range(100)])
    env = {**worker_env, "OPENAI_BASE_URL": srv.url, "JOBCTL_CONCURRENCY": "8"}
    w = spawn(procs, env)
    wait_for(lambda: done_count(conn, settings.queue) >= 10, 30, "a drain under way")
    srv.stop()
    rc, report, err = finish(w, 30)
    assert rc == 1 and report is None
    assert "stopped answering" in err and "Traceback" not in err, err
    st = client.status(sub.batch_id)
    assert st.counts.get("failed", 0) == 0 and st.counts.get("running", 0) == 0
    assert conn.zcard(keys.started(settings.queue)) == 0


@pytest.mark.parametrize("fault", [Fault.HTTP_429, Fault.HTTP_503])
def test_retry_after_is_honoured(client, conn, drain, fake, fault):
    """A server that says when to come back is not asked again sooner (our backoff here is ~10 ms)."""
    fake.retry_after = "1.5"
    fake.script(fault)
    sub = client.submit([triage_task(1)])
    t0 = time.monotonic()
    report = drain(concurrency=1)
    waited = time.monotonic() - t0
    assert (report.done, report.retries) == (1, 1)
    assert waited >= 1.4, f"asked again after {waited:.2f}s"
    assert [o.ok for o in client.results(sub.batch_id)] == [True]


def test_a_retry_after_past_the_limit_fails_the_task_instead_of_waiting(client, conn, drain, fake):
    fake.retry_after = "3600"
    fake.script(Fault.HTTP_429)
    sub = client.submit([triage_task(1)])
    report = drain(concurrency=1)
    assert (report.done, report.failed) == (0, 1)
    [out] = list(client.results(sub.batch_id))
    assert out.error is not None and out.error["code"] == "rate_limited"
