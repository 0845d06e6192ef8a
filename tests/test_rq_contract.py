"""jobctl as a citizen of RQ: state jobctl writes, read back through RQ's public API; RQ's own tools
(`rq info`, `rq requeue`, RQ's registry cleanup, `rq worker` as the README gives it) run against a
live jobctl queue, as subprocesses, and never fail, lose or double-run a task.

If the installed rq is not the version the layout was verified against, the first test fails and
says what to re-check: everything else here is that check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
import rq
from rq import Queue
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry, clean_registries
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.worker import Worker

from jobs.outcomes import Failure, Success
from jobs.store import RQ_VERSION, codec, keys
from jobs.store.work import Finished, WorkQueue
from tests.conftest import finish, spawn, triage_task, wait_for

REPO = Path(__file__).resolve().parent.parent
README_RQ_WORKER = ["-m", "rq.cli", "worker", "-w", "worker.rq_worker.TaskWorker", "--burst"]


def test_installed_rq_is_the_version_the_layout_was_verified_against():
    assert rq.__version__ == RQ_VERSION, (
        f"rq {rq.__version__} is installed, but jobctl's Redis layout was verified against rq {RQ_VERSION}. "
        "Re-check before raising RQ_VERSION (jobs/store/__init__.py): the job hash fields and data blob "
        "(jobs/store/codec.py), the key names (jobs/store/keys.py), what the Lua scripts write for a claim, "
        "a heartbeat and a finish against rq.executions.Execution.create/heartbeat/delete and "
        "Job._handle_success/_handle_failure (jobs/store/scripts.py), how StartedJobRegistry.cleanup treats "
        "retries_left, and worker/rq_worker.py's overrides of SimpleWorker. Then run this file."
    )


def rq_cmd(redis_url: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "rq.cli", *args, "-u", redis_url],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def work_queue(settings: Any, conn: redis.Redis, lease: int | None = None) -> WorkQueue:
    return WorkQueue(conn, settings.cipher(), settings.queue, lease or settings.lease_seconds, settings.result_ttl)


def job_ids(client: Any, batch_id: str) -> list[str]:
    return [m.job_id for m in client.batch(batch_id).members()]


# -- state, read through RQ's public API ------------------------------------------------------------


def test_a_queued_task_is_an_rq_job(client, conn, settings):
    sub = client.submit([triage_task(1)])
    [jid] = job_ids(client, sub.batch_id)
    job = Job.fetch(jid, connection=conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.QUEUED and job.origin == settings.queue
    assert job.func_name == codec.TASK_FUNC and job.args[0].startswith("jc1.") and job.kwargs == {}
    assert job.retries_left == codec.MAX_ABANDONS
    assert job.enqueued_at is not None and job.timeout == codec.JOB_TIMEOUT
    q = Queue(settings.queue, connection=conn, serializer=JSONSerializer)
    assert q.count == 1 and q.job_ids == [jid]
    assert keys.queue(settings.queue).encode() in conn.smembers(Queue.redis_queues_keys)


def test_claim_heartbeat_and_finish_as_rq_writes_them(client, conn, settings):
    client.submit([triage_task(1), triage_task(2)])
    wq = work_queue(settings, conn)
    wq.register()
    try:
        claimed = wq.claim(2)
        assert len(claimed) == 2
        started = StartedJobRegistry(settings.queue, connection=conn)
        assert sorted(started.get_job_ids()) == sorted(c.job_id for c in claimed)
        for cl in claimed:
            job = Job.fetch(cl.job_id, connection=conn, serializer=JSONSerializer)
            assert job.get_status() == JobStatus.STARTED and job.worker_name == wq.worker_name
            ex = Execution.fetch(cl.execution_id, cl.job_id, conn)
            assert ex.worker_name == wq.worker_name
            assert ExecutionRegistry(cl.job_id, conn).get_execution_ids() == [cl.execution_id]
        before = Execution.fetch(claimed[0].execution_id, claimed[0].job_id, conn).last_heartbeat
        time.sleep(1.1)
        assert wq.heartbeat([c.member for c in claimed]) == 2
        assert Execution.fetch(claimed[0].execution_id, claimed[0].job_id, conn).last_heartbeat > before

        ok, bad = claimed
        done = wq.finish(
            [
                Finished(ok, Success("mail-x", {"choices": [{"message": {"content": "{}"}}]})),
                Finished(bad, Failure("mail-y", "invalid_output", "the answer is not valid JSON")),
            ]
        )
        assert done == [True, True]
        assert started.get_job_ids() == []
        assert FinishedJobRegistry(settings.queue, connection=conn).get_job_ids() == [ok.job_id]
        assert FailedJobRegistry(settings.queue, connection=conn).get_job_ids() == [bad.job_id]
        for cl, typ in ((ok, Result.Type.SUCCESSFUL), (bad, Result.Type.FAILED)):
            job = Job.fetch(cl.job_id, connection=conn, serializer=JSONSerializer)
            res = Result.fetch_latest(job, serializer=JSONSerializer)
            assert res is not None and res.type == typ and res.execution_id == cl.execution_id
            assert job.get_executions() == [] if hasattr(job, "get_executions") else True
        res_ok = Result.fetch_latest(Job.fetch(ok.job_id, connection=conn), serializer=JSONSerializer)
        assert res_ok is not None and str(res_ok.return_value).startswith("jc1.")
        failed_job = Job.fetch(bad.job_id, connection=conn, serializer=JSONSerializer)
        assert failed_job.get_status() == JobStatus.FAILED
        assert (failed_job.exc_info or "").startswith("jobctl invalid_output\n")  # the code, nothing private
        # The worker's counters, as `rq info` shows them.
        w = Worker.find_by_key(keys.worker(wq.worker_name), connection=conn)
        assert w is not None and (w.successful_job_count, w.failed_job_count) == (1, 1)
    finally:
        wq.unregister()


# -- RQ's tools against a live queue -----------------------------------------------------------------


def test_rq_info_puts_lapsed_tasks_back_instead_of_failing_them(client, conn, settings, redis_url):
    """The reported bug: claim 3 tasks with a 1 s lease, let it lapse, run `rq info`: all 3 failed for good."""
    sub = client.submit([triage_task(i) for i in range(3)])
    wq = work_queue(settings, conn, lease=1)
    assert len(wq.claim(3)) == 3
    time.sleep(2.1)
    out = rq_cmd(redis_url, "info", "--serializer", "rq.serializers.JSONSerializer", settings.queue)
    assert settings.queue in out
    assert FailedJobRegistry(settings.queue, connection=conn).count == 0
    assert client.queue_depth() == 3
    for jid in job_ids(client, sub.batch_id):
        job = Job.fetch(jid, connection=conn, serializer=JSONSerializer)
        assert job.get_status() == JobStatus.QUEUED and job.retries_left == codec.MAX_ABANDONS - 1
    # Also with rq info's default (pickle) serializer: cleanup never reads the data.
    assert len(wq.claim(3)) == 3
    time.sleep(2.1)
    rq_cmd(redis_url, "info", settings.queue)
    assert client.queue_depth() == 3 and FailedJobRegistry(settings.queue, connection=conn).count == 0


def test_rq_cleanup_fails_only_after_the_retries_and_jobctl_says_abandoned(client, conn, settings, drain, fake):
    sub = client.submit([triage_task(1)])
    q = Queue(settings.queue, connection=conn, serializer=JSONSerializer)
    wq = work_queue(settings, conn, lease=1)
    for _ in range(codec.MAX_ABANDONS + 1):
        assert len(wq.claim(1)) == 1
        time.sleep(2.1)  # RQ's cleanup compares whole seconds
        clean_registries(q)
    [out] = list(client.results(sub.batch_id))
    assert out.error is not None and out.error["code"] == "abandoned"  # was `unreadable`
    assert "retry" in out.error["message"]
    assert client.retry(sub.batch_id) == 1
    drain()
    [out] = list(client.results(sub.batch_id))
    assert out.ok


def test_rq_info_lists_each_running_drainer_with_its_state(client, conn, settings, fake, worker_env, procs):
    fake.latency = 0.3
    client.submit([triage_task(i) for i in range(60)])
    workers = [spawn(procs, {**worker_env, "JOBCTL_CONCURRENCY": "4"}) for _ in range(2)]
    from jobs.store import queues

    wait_for(lambda: len(queues.drainers(conn, settings.queue)) == 2, 30, "both drainers registered")
    wait_for(lambda: len(StartedJobRegistry(settings.queue, connection=conn).get_job_ids()) >= 8, 30, "drains")
    out = rq_cmd(settings.redis_url, "info", "--only-workers", settings.queue)
    lines = [ln for ln in out.splitlines() if ln.startswith("jobctl-")]
    assert len(lines) == 2, out
    assert all("busy" in ln and settings.queue in ln for ln in lines), out
    for w in workers:
        rc, _report, err = finish(w, 90)
        assert rc == 0, err
    out = rq_cmd(settings.redis_url, "info", "--only-workers", settings.queue)
    assert not [ln for ln in out.splitlines() if ln.startswith("jobctl-")], "drainers unregister when they stop"


def test_rq_requeue_of_failed_tasks_runs_each_once(client, conn, settings, drain, fake, redis_url):
    sub = client.submit([triage_task(i) for i in range(4)])
    fake.script(*[Failure_reply() for _ in range(8)])
    drain()
    assert FailedJobRegistry(settings.queue, connection=conn).count == 4
    rq_cmd(redis_url, "requeue", "--all", "--queue", settings.queue, "--serializer", "rq.serializers.JSONSerializer")
    assert client.queue_depth() == 4
    before = fake.stats.requests
    report = drain()
    assert (report.done, report.failed) == (4, 0) and fake.stats.requests - before == 4
    outs = list(client.results(sub.batch_id))
    assert len(outs) == 4 and all(o.ok for o in outs)


def Failure_reply() -> Any:  # reads as a value in the scripts above
    from tests.fake_openai import Reply

    return Reply("not json")


def test_dashboard_reads_never_fail(client, conn, settings, drain, fake):
    """What rq-dashboard reads (queues, registries, jobs, workers), with its default serializer too."""
    sub = client.submit([triage_task(i) for i in range(3)])
    drain()
    client.submit([triage_task(i) for i in range(3, 5)])
    for serializer in (JSONSerializer, None):
        for q in Queue.all(connection=conn, serializer=serializer):
            assert q.count >= 0
            for reg in (q.started_job_registry, q.finished_job_registry, q.failed_job_registry):
                reg.get_job_ids()
            ids = q.job_ids + q.finished_job_registry.get_job_ids()
            for job in Job.fetch_many(ids, connection=conn, serializer=serializer):
                assert job is not None
                job.get_status()
                job.to_dict()  # what the dashboard shows; data stays unread bytes
        Worker.all(connection=conn, serializer=serializer)
    assert len(list(client.results(sub.batch_id))) == 3


# -- `rq worker` as the README gives it --------------------------------------------------------------


def rq_worker_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "PYTHONPATH": str(REPO)}


def test_the_readme_rq_worker_completes_tasks_one_at_a_time(client, conn, settings, fake, worker_env):
    sub = client.submit([triage_task(i) for i in range(5)])
    proc = subprocess.run(
        [sys.executable, *README_RQ_WORKER, "-u", settings.redis_url, settings.queue],
        env=rq_worker_env(worker_env),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    outs = list(client.results(sub.batch_id))
    assert len(outs) == 5 and all(o.ok and o.parsed for o in outs)
    assert fake.stats.requests == 5 and fake.stats.max_in_flight == 1
    st = client.status(sub.batch_id)
    assert st.counts["completed"] == 5
    for secret in (settings.key_text or "", "dentist appointment"):
        assert secret not in proc.stderr and secret not in proc.stdout


def test_the_readme_rq_worker_seals_failures_like_the_drain(client, conn, settings, fake, worker_env):
    sub = client.submit([triage_task(1)])
    fake.script(Failure_reply(), Failure_reply())
    subprocess.run(
        [sys.executable, *README_RQ_WORKER, "-u", settings.redis_url, settings.queue],
        env=rq_worker_env(worker_env),
        capture_output=True,
        timeout=120,
        cwd=REPO,
        check=True,
    )
    [out] = list(client.results(sub.batch_id))
    assert not out.ok and out.error is not None and out.error["code"] == "invalid_output"
    assert client.status(sub.batch_id).counts["failed"] == 1
    assert fake.stats.requests == 2  # retried once as an invalid answer, never re-run by RQ's retries


def test_the_readme_rq_worker_refuses_a_planted_pickle_job(client, conn, settings, fake, worker_env, tmp_path):
    """A job planted in Redis with the default (pickle) serializer that would run a shell command."""
    marker = tmp_path / "pwned"
    q = Queue(settings.queue, connection=conn)  # pickle, as a default `rq enqueue` would write
    planted = q.enqueue(os.system, f"touch {marker}")
    sub = client.submit([triage_task(1)])
    proc = subprocess.run(
        [sys.executable, *README_RQ_WORKER, "-u", settings.redis_url, settings.queue],
        env=rq_worker_env(worker_env),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "the planted job ran"
    assert Job.fetch(planted.id, connection=conn, serializer=JSONSerializer).get_status() == JobStatus.FAILED
    [out] = list(client.results(sub.batch_id))
    assert out.ok


def test_the_readme_rq_worker_refuses_a_planted_json_job(client, conn, settings, worker_env, tmp_path):
    """JSON alone does not make a job safe: RQ would import and call any function it names."""
    marker = tmp_path / "pwned"
    q = Queue(settings.queue, connection=conn, serializer=JSONSerializer)
    planted = q.enqueue("os.system", f"touch {marker}")
    subprocess.run(
        [sys.executable, *README_RQ_WORKER, "-u", settings.redis_url, settings.queue],
        env=rq_worker_env(worker_env),
        capture_output=True,
        timeout=120,
        cwd=REPO,
        check=True,
    )
    assert not marker.exists(), "the planted job ran"
    job = Job.fetch(planted.id, connection=conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED and "refused" in (job.exc_info or "")


def test_drainers_and_the_rq_worker_share_a_queue_without_running_a_task_twice(
    client, conn, settings, fake, worker_env, procs
):
    fake.latency = 0.05
    sub = client.submit([triage_task(i) for i in range(60)])
    drainer = spawn(procs, {**worker_env, "JOBCTL_CONCURRENCY": "4"})
    rqw = subprocess.Popen(
        [sys.executable, *README_RQ_WORKER, "-u", settings.redis_url, settings.queue],
        env=rq_worker_env(worker_env),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(rqw)
    rc, report, err = finish(drainer, 120)
    assert rc == 0, err
    assert rqw.wait(120) == 0
    outs = list(client.results(sub.batch_id))
    assert sorted(o.custom_id for o in outs) == sorted(f"mail-{i}" for i in range(60))
    assert all(o.ok for o in outs) and fake.stats.requests == 60
    assert report is not None and 0 < report["done"] < 60, "both took part"
    data = json.dumps([o.custom_id for o in outs])
    assert data  # every task exactly once, checked above
