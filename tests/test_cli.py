"""The `jobctl` command line, in-process through click's CliRunner, against the test Redis and the fake server."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from jobs.config import Settings
from producer.cli import cli
from tests.conftest import triage_task
from tests.fake_openai import Reply

CORE_COMMANDS = ["keygen", "submit", "status", "results", "wait", "retry", "cancel", "worker", "serve-local"]


@pytest.fixture
def jobctl(env):
    def invoke(*args: str, input: bytes | str | None = None, ok: bool = True, **more_env: str | None) -> Result:
        result = CliRunner().invoke(cli, list(args), env={**env, **more_env}, input=input)
        if ok:
            assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.output}\n{result.exc_info}"
        return result

    return invoke


@pytest.fixture
def tasks_file(tmp_path) -> Path:
    path = tmp_path / "inbox.json"
    path.write_text(json.dumps([triage_task(i) for i in range(3)], indent=1))
    return path


def submit_json(jobctl, path: Path | str, *more: str, input: bytes | None = None) -> dict[str, Any]:
    result = jobctl("submit", str(path), "--json", *more, input=input)
    return json.loads(result.stdout)


def worker(jobctl, fake) -> dict[str, Any]:
    result = jobctl("worker", "--base-url", fake.url, "--burst", "--json", "--concurrency", "4")
    return json.loads(result.stdout)


# -- help -------------------------------------------------------------------------------------------


def test_help_lists_every_command_and_the_env_vars(jobctl):
    out = jobctl("--help").output
    assert set(CORE_COMMANDS) <= set(cli.commands)
    for name in cli.commands:
        assert f"  {name} " in out or f"  {name}\n" in out, name
    for var in Settings.env_vars().values():
        assert var in " ".join(out.split()), var
    for name in cli.commands:
        sub = jobctl(name, "--help").output
        assert f"Usage: cli {name}" in sub or f"Usage: jobctl {name}" in sub


def test_submit_help_names_the_formats_and_kinds(jobctl):
    out = " ".join(jobctl("submit", "--help").output.split())
    assert "OpenAI Batch JSONL" in out and "`-` reads stdin" in out
    for kind in ("email.triage", "transaction.categorize", "chat", "extract"):
        assert kind in out


# -- keygen -----------------------------------------------------------------------------------------


def test_keygen_writes_a_private_file_and_refuses_to_overwrite(jobctl, settings):
    key_file = settings.home / "key"
    result = jobctl("keygen", JOBCTL_KEY=None)
    assert str(key_file) in result.output
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first = key_file.read_text()
    assert len(first.strip()) == 44

    again = jobctl("keygen", JOBCTL_KEY=None, ok=False)
    assert again.exit_code != 0
    assert "already exists" in again.output and "--force" in again.output
    assert key_file.read_text() == first

    noop = jobctl("keygen", "--if-missing", JOBCTL_KEY=None)
    assert "key file exists" in noop.output
    assert key_file.read_text() == first

    jobctl("keygen", "--force", JOBCTL_KEY=None)
    assert key_file.read_text() != first
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_keygen_key_file_is_used_by_submit(jobctl, settings, tmp_path, tasks_file, conn):
    key_file = tmp_path / "k" / "jobctl.key"
    jobctl("keygen", JOBCTL_KEY=None, JOBCTL_KEY_FILE=str(key_file))
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    out = jobctl("submit", str(tasks_file), "--json", JOBCTL_KEY=None, JOBCTL_KEY_FILE=str(key_file))
    assert json.loads(out.stdout)["total"] == 3


def test_keygen_print_writes_nothing(jobctl, settings):
    result = jobctl("keygen", "--print")
    assert len(result.stdout.strip()) == 44
    assert not (settings.home / "key").exists()


# -- submit -----------------------------------------------------------------------------------------


def test_submit_prints_the_batch_id(jobctl, client, tasks_file):
    result = jobctl("submit", str(tasks_file))
    batch_id = result.stdout.strip()
    assert batch_id.startswith("batch_") and "\n" not in batch_id
    assert "submitted 3 new tasks" in result.stderr
    assert client.queue_depth() == 3
    assert client.status(batch_id).total == 3


def test_submit_json(jobctl, client, tasks_file, settings):
    sub = submit_json(jobctl, tasks_file)
    assert {"batch_id", "total", "duplicates"} <= set(sub)
    assert (sub["total"], sub["duplicates"]) == (3, 0)
    assert sub["batch_id"].startswith("batch_")
    assert sub.get("queue", settings.queue) == settings.queue


def test_submit_from_stdin(jobctl, client):
    lines = "\n".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "x", "messages": [{"role": "user", "content": "hi"}]},
            }
        )
        for i in range(4)
    )
    sub = submit_json(jobctl, "-", input=lines.encode())
    assert sub["total"] == 4
    assert client.queue_depth() == 4


def test_resubmit_reports_duplicates(jobctl, client, tasks_file, tmp_path):
    first = submit_json(jobctl, tasks_file)
    again = jobctl("submit", str(tasks_file))
    assert "3 duplicates skipped" in again.stderr
    more = tmp_path / "more.json"
    more.write_text(json.dumps([triage_task(i) for i in range(5)]))
    sub = submit_json(jobctl, more)
    assert (sub["total"], sub["duplicates"]) == (5, 3)
    assert sub["batch_id"] != first["batch_id"]
    assert client.queue_depth() == 5


def test_submit_to_another_queue(jobctl, client, tasks_file, settings):
    sub = submit_json(jobctl, tasks_file, "--queue", "other")
    assert sub["total"] == 3
    assert client.queue_depth() == 0 and client.queue_depth("other") == 3


# -- status, worker, results, wait ------------------------------------------------------------------


def test_status_json(jobctl, tasks_file):
    sub = submit_json(jobctl, tasks_file)
    st = json.loads(jobctl("status", sub["batch_id"], "--json").stdout)
    assert st["id"] == sub["batch_id"]
    assert st["status"] == "in_progress"
    assert st["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    listing = json.loads(jobctl("status", "--json").stdout)
    assert [b["id"] for b in listing] == [sub["batch_id"]]
    # Not on a terminal (a cron log): one tab-separated line per batch, never wrapped.
    [line] = jobctl("status").stdout.splitlines()
    assert line.split("\t")[:2] == [sub["batch_id"], "in_progress"] and "0/3 done" in line


def test_worker_burst_report(jobctl, fake, tasks_file):
    sub = submit_json(jobctl, tasks_file)
    report = worker(jobctl, fake)
    assert {"done", "failed", "wall_seconds", "jobs_per_second"} <= set(report)
    assert (report["done"], report["failed"]) == (3, 0)
    assert report["wall_seconds"] > 0 and report["jobs_per_second"] > 0
    st = json.loads(jobctl("status", sub["batch_id"], "--json").stdout)
    assert st["status"] == "completed"
    assert st["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    text = jobctl("worker", "--base-url", fake.url, "--burst").output
    assert "done 0" in text and "jobs/s" in text


def test_results_json_lines(jobctl, fake, tasks_file):
    sub = submit_json(jobctl, tasks_file)
    worker(jobctl, fake)
    lines = [json.loads(x) for x in jobctl("results", sub["batch_id"], "--json").stdout.splitlines()]
    assert [x["custom_id"] for x in lines] == ["mail-0", "mail-1", "mail-2"]
    for x in lines:
        assert set(x) >= {"id", "custom_id", "response", "error"}
        assert x["id"].startswith("batch_req_") and x["error"] is None
        assert x["response"]["status_code"] == 200
        parsed = x["response"]["body"]["choices"][0]["message"]["parsed"]
        assert set(parsed) == {"category", "priority", "needs_reply", "reason"}
    table = jobctl("results", sub["batch_id"]).output
    assert "mail-0" in table and "3 succeeded, 0 failed" in table


def test_results_to_files(jobctl, fake, drain, tasks_file, tmp_path):
    # Two tasks answer off-schema twice and fail; one succeeds.
    fake.script(Reply("not json"), Reply("not json"), Reply("not json"), Reply("not json"))
    sub = submit_json(jobctl, tasks_file)
    report = drain(concurrency=1)
    assert (report.done, report.failed) == (1, 2)
    out = tmp_path / "out.jsonl"
    result = jobctl("results", sub["batch_id"], "-o", str(out))
    errors = tmp_path / "out.errors.jsonl"
    assert f"wrote 1 results to {out} and 2 errors to {errors}" in " ".join(result.stderr.split())
    ok_lines = [json.loads(x) for x in out.read_text().splitlines()]
    err_lines = [json.loads(x) for x in errors.read_text().splitlines()]
    assert len(ok_lines) == 1 and ok_lines[0]["error"] is None
    assert len(err_lines) == 2 and all(x["error"]["code"] == "invalid_output" for x in err_lines)
    assert {x["custom_id"] for x in ok_lines + err_lines} == {"mail-0", "mail-1", "mail-2"}
    custom = tmp_path / "bad.jsonl"
    jobctl("results", sub["batch_id"], "-o", str(out), "--errors", str(custom))
    assert len(custom.read_text().splitlines()) == 2


def test_wait_on_a_finished_batch(jobctl, fake, tasks_file):
    sub = submit_json(jobctl, tasks_file)
    worker(jobctl, fake)
    result = jobctl("wait", sub["batch_id"], "--timeout", "5")
    assert result.exit_code == 0
    assert f"{sub['batch_id']}: completed, 3/3 done, 0 failed" in result.stderr


def test_wait_times_out_on_a_pending_batch(jobctl, tasks_file):
    sub = submit_json(jobctl, tasks_file)
    result = jobctl("wait", sub["batch_id"], "--timeout", "0.6", ok=False)
    assert result.exit_code == 4
    assert "still has 3 queued and 0 running tasks after 0.6s" in result.output


def test_submit_wait_json(jobctl, fake, tasks_file):
    # --wait on a batch of duplicates of finished tasks: nothing to run, done at once.
    submit_json(jobctl, tasks_file)
    worker(jobctl, fake)
    result = jobctl("submit", str(tasks_file), "--json", "--wait")
    assert json.loads(result.stdout.splitlines()[0])["duplicates"] == 3


# -- retry and cancel -------------------------------------------------------------------------------


def test_retry_requeues_failed_tasks(jobctl, fake, drain, client, tasks_file):
    fake.script(*[Reply("not json")] * 6)
    sub = submit_json(jobctl, tasks_file)
    drain(concurrency=1)
    st = json.loads(jobctl("status", sub["batch_id"], "--json").stdout)
    assert st["request_counts"]["failed"] == 3 and st["status"] == "failed"
    assert f"re-queued 3 tasks of {sub['batch_id']}" in jobctl("retry", sub["batch_id"]).output
    assert client.queue_depth() == 3
    worker(jobctl, fake)
    st = json.loads(jobctl("status", sub["batch_id"], "--json").stdout)
    assert st["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert "re-queued 0 tasks" in jobctl("retry", sub["batch_id"]).output


def test_cancel_drops_queued_tasks(jobctl, fake, client, tasks_file):
    sub = submit_json(jobctl, tasks_file)
    assert f"cancelled 3 queued tasks of {sub['batch_id']}" in jobctl("cancel", sub["batch_id"]).output
    assert client.queue_depth() == 0
    st = json.loads(jobctl("status", sub["batch_id"], "--json").stdout)
    assert st["status"] == "cancelled" and st["cancelled"] == 3
    assert worker(jobctl, fake)["done"] == 0
    # Not every task was answered: a cron script waiting on the batch must not read "all done" (exit 0).
    assert jobctl("wait", sub["batch_id"], "--timeout", "5", ok=False).exit_code == 3


# -- unknown batches --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "results", "wait", "retry", "cancel"])
def test_unknown_batch_is_a_clear_error(jobctl, command):
    result = jobctl(command, "batch_doesnotexist", ok=False)
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    assert "no batch 'batch_doesnotexist'" in result.output
    assert "`jobctl status` lists the batches" in result.output
    assert "Traceback" not in result.output
