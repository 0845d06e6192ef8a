"""The README's cron recipes, as cron runs them (issue 10): the `nightly.sh` of "From cron and scripts"
and the crontab line of "From your mailbox and your bank", read from README.md itself (a change there
is tested as written), run by /bin/sh with a bare environment (only what the recipe sets, PATH with
jobctl on it, HOME a temporary folder), no terminal, against the test Redis and a real worker process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.config import Settings
from producer.client import Client
from tests.conftest import free_port, spawn, triage_task
from tests.fake_openai import FakeOpenAI
from tests.test_cli_faults import FAIL_MARK, PickyFake

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
VENV_BIN = REPO / ".venv" / "bin"
FIXTURES = REPO / "tests" / "fixtures" / "imports"
TIMEOUT = 300.0  # seconds for one recipe run: generous, for a loaded 2-core machine
README_REDIS = "redis://127.0.0.1:6379/0"  # what the README's crontab line says; the tests use their own


def readme_block(lang: str, first_line: str) -> str:
    """The README's fenced ```lang block whose first line starts with `first_line`."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)
    found = [body for kind, body in blocks if kind == lang and body.startswith(first_line)]
    assert len(found) == 1, f"README.md has {len(found)} ```{lang} blocks starting with {first_line!r}"
    return found[0]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with PickyFake() as srv:
        yield srv


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def bare_env(home: Path, **values: str) -> dict[str, str]:
    """What cron gives a job (HOME, LOGNAME, SHELL, a short PATH), with jobctl's venv on PATH, plus what
    the recipe's own line sets."""
    return {
        "HOME": str(home),
        "LOGNAME": "cron-test",
        "SHELL": "/bin/sh",
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        **values,
    }


def sh(script_or_command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run as cron does: /bin/sh, its own session (no terminal), stdin closed."""
    return subprocess.run(
        ["/bin/sh", *script_or_command],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        start_new_session=True,
    )


def keygen(home: Path) -> tuple[Path, str]:
    """`jobctl keygen` in the bare environment: the key lands in the default data folder."""
    p = sh(["-c", "jobctl keygen"], bare_env(home), home)
    assert p.returncode == 0, p.stderr
    key_file = home / ".local" / "share" / "jobctl" / "key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    return key_file, key_file.read_text().strip()


def start_worker(procs: list[subprocess.Popen[bytes]], redis_url: str, key: str, fake: FakeOpenAI) -> None:
    """A worker on the default queue, as a user runs it beside the cron jobs."""
    env = {**bare_env(Path(os.environ.get("HOME", "/tmp"))), "REDIS_URL": redis_url, "JOBCTL_KEY": key}
    spawn(procs, {**env, "OPENAI_BASE_URL": fake.url, "PYTHONPATH": str(REPO)}, burst=False)


def private_text(path: Path) -> list[str]:
    """Strings from a task file that must never reach a log: subjects, senders, bodies."""
    data = json.loads(path.read_text())
    tasks = data["tasks"] if isinstance(data, dict) else data
    out = []
    for t in tasks:
        for field in ("subject", "from", "body"):
            value = t["input"].get(field)
            if isinstance(value, str) and len(value) > 6:
                out.append(value[:40])
    return out


# -- nightly.sh ---------------------------------------------------------------------------------------


@pytest.fixture
def nightly(home: Path) -> Path:
    script = home / "nightly.sh"
    script.write_text(readme_block("sh", "#!/bin/sh\n# nightly.sh"))
    script.chmod(0o700)
    return script


def answers(home: Path) -> list[Path]:
    return sorted(home.glob("answers-*.csv"))


def test_nightly_script_submits_waits_and_writes_answers(nightly, home, redis_url, fake, procs):
    key_file, key = keygen(home)
    env = bare_env(home, REDIS_URL=redis_url, JOBCTL_KEY_FILE=str(key_file))
    start_worker(procs, redis_url, key, fake)
    inbox = home / "inbox.json"
    shutil.copy(REPO / "examples" / "inbox.json", inbox)
    secrets = [key, *private_text(inbox)]

    first = sh([str(nightly), str(inbox)], env, home)
    # Exit 0: all answered. Nothing on stdout (the batch id went into $batch), no traceback, nothing
    # private in what cron mails or logs.
    assert first.returncode == 0, first.stderr
    assert first.stdout == ""
    assert "Traceback" not in first.stderr
    assert not [s for s in secrets if s in first.stderr]
    assert "jobctl: submitted 10 new tasks to queue jobctl" in first.stderr
    [csv] = answers(home)
    assert stat.S_IMODE(csv.stat().st_mode) == 0o600
    rows = csv.read_text().splitlines()
    assert len(rows) == 11 and rows[0].startswith("custom_id,status,")
    batch = re.search(r"(batch_\w+): completed, 10/10 done, 0 failed", first.stderr)
    assert batch, first.stderr

    # The same export again: nothing runs twice, the new batch lists every task, the answers are whole.
    csv.unlink()
    second = sh([str(nightly), str(inbox)], env, home)
    assert second.returncode == 0, second.stderr
    assert "submitted 0 new tasks to queue jobctl (10 duplicates skipped: already queued or done)" in second.stderr
    assert re.search(r"batch_\w+: completed, 10/10 done, 0 failed", second.stderr)
    assert len(answers(home)[0].read_text().splitlines()) == 11
    assert not [s for s in secrets if s in second.stderr]


def test_nightly_script_exits_3_when_tasks_failed(nightly, home, redis_url, fake, procs):
    key_file, key = keygen(home)
    env = bare_env(home, REDIS_URL=redis_url, JOBCTL_KEY_FILE=str(key_file))
    start_worker(procs, redis_url, key, fake)
    tasks = home / "tonight.json"
    tasks.write_text(json.dumps([triage_task(1), triage_task(2, FAIL_MARK), triage_task(3)]))
    run = sh([str(nightly), str(tasks)], env, home)
    assert run.returncode == 3, run.stderr
    assert "Traceback" not in run.stderr and FAIL_MARK not in run.stderr
    # The answers are still written, the failed task's row with its status and error code.
    [csv] = answers(home)
    rows = csv.read_text().splitlines()
    assert len(rows) == 4 and sum(",failed,invalid_output," in r for r in rows) == 1


def test_nightly_script_passes_on_submit_failures(nightly, home, redis_url):
    """`batch=$(jobctl submit ...) || exit $?`: a submit that fails ends the script with its code, and
    one line on stderr says why."""
    key_file, _ = keygen(home)
    cases = {
        "missing file": (bare_env(home, REDIS_URL=redis_url, JOBCTL_KEY_FILE=str(key_file)), "no such file"),
        "Redis down": (
            bare_env(home, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", JOBCTL_KEY_FILE=str(key_file)),
            "cannot reach Redis",
        ),
        "no key": (bare_env(home, REDIS_URL=redis_url, JOBCTL_KEY_FILE=str(home / "nokey")), "no encryption key"),
    }
    tasks = home / "tonight.json"
    for label, (env, says) in cases.items():
        tasks.write_text(json.dumps([triage_task(1)])) if label != "missing file" else tasks.unlink(missing_ok=True)
        run = sh([str(nightly), str(tasks)], env, home)
        assert run.returncode == 1, (label, run.stderr)
        assert run.stderr.startswith("jobctl: error: ") and says in run.stderr, (label, run.stderr)
        assert "Traceback" not in run.stderr and run.stdout == ""
        assert answers(home) == [], "results were read for a batch that was never made"


# -- the crontab line -----------------------------------------------------------------------------


def crontab_command() -> str:
    """The README's crontab line without its schedule: the command cron hands to /bin/sh."""
    line = readme_block("cron", "").strip()
    assert len(line.splitlines()) == 1
    schedule_and_command = line.split(None, 5)
    assert len(schedule_and_command) == 6
    return schedule_and_command[5]


@pytest.fixture
def mailbox_and_bank(home: Path) -> None:
    """What the crontab line reads: a Maildir at ~/Mail/INBOX and a bank export at ~/Downloads/bank.csv,
    and jobctl installed at ~/.jobctl/bin/jobctl (the README's venv install, here a link to .venv's)."""
    shutil.copytree(FIXTURES / "Maildir", home / "Mail" / "INBOX")
    (home / "Downloads").mkdir()
    shutil.copy(FIXTURES / "csv" / "us-checking-2024-01.csv", home / "Downloads" / "bank.csv")
    (home / ".jobctl" / "bin").mkdir(parents=True)
    (home / ".jobctl" / "bin" / "jobctl").symlink_to(VENV_BIN / "jobctl")


def test_crontab_line_submits_mail_and_bank_and_skips_duplicates(home, mailbox_and_bank, redis_url):
    _, key = keygen(home)
    command = crontab_command()
    assert README_REDIS in command
    # The README's Redis is the user's; this test points the same line at the test database.
    command = command.replace(README_REDIS, redis_url)
    cron_env = {"HOME": str(home), "LOGNAME": "cron-test", "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}

    first = sh(["-c", command], cron_env, home)
    assert first.returncode == 0 and first.stdout == first.stderr == "", (first.stdout, first.stderr)
    log = (home / "jobctl.log").read_text()
    lines = log.splitlines()
    assert re.fullmatch(r"batch_\w+", lines[0]), log
    assert re.fullmatch(r"jobctl: submitted (\d+) new tasks to queue jobctl", lines[1]), log
    assert len(lines) == 2 and "Traceback" not in log
    n = int(lines[1].split()[2])

    # What went in: every message and every bank row, sealed with the key of the key file.
    client = Client(Settings.from_env(env={}, redis_url=redis_url, key=key))
    st = client.status(lines[0])
    assert st.total == n and st.counts["queued"] == n and st.name == "nightly-mail"

    # Nothing private in the log: no sender, subject or bank description.
    private = ["Subject:", "@", *_bank_descriptions(home / "Downloads" / "bank.csv")]
    assert not [p for p in private if p in log], log

    second = sh(["-c", command], cron_env, home)
    assert second.returncode == 0
    more = (home / "jobctl.log").read_text().removeprefix(log).splitlines()
    assert re.fullmatch(r"batch_\w+", more[0]) and more[0] != lines[0]
    assert more[1] == f"jobctl: submitted 0 new tasks to queue jobctl ({n} duplicates skipped: already queued or done)"
    assert client.queue_depth("jobctl") == n


def _bank_descriptions(path: Path) -> list[str]:
    import csv

    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    header = [h.lower() for h in rows[0]]
    col = next(i for i, h in enumerate(header) if "description" in h or "payee" in h or "memo" in h)
    return [r[col] for r in rows[1:] if len(r) > col and len(r[col]) > 6]


def test_without_redis_url_the_embedded_redis_is_named_once(home):
    """Cron's bare environment without REDIS_URL: jobctl works on the embedded Redis, and says so, once,
    and where, so that a queue no worker reads is not a silent surprise."""
    keygen(home)
    run = sh(["-c", "jobctl status; jobctl status --json"], bare_env(home), home)
    assert run.returncode == 0, run.stderr
    where = home / ".local" / "share" / "jobctl" / "redis.db"
    notice = f"jobctl: using the embedded Redis at {where}; set REDIS_URL to use another"
    assert run.stderr.splitlines() == [notice, notice]  # once per command
    assert run.stdout.splitlines()[0] == "no batches yet: `jobctl submit FILE` makes one"
    assert json.loads(run.stdout.splitlines()[1]) == []


# -- what a cron log gets -------------------------------------------------------------------------


def test_output_off_a_terminal_is_one_plain_line_per_row(home, redis_url, fake):
    """An 80-column cron log: one tab-separated line per batch and per task, never wrapped or cut."""
    key_file, key = keygen(home)
    env = bare_env(home, REDIS_URL=redis_url, JOBCTL_KEY_FILE=str(key_file), COLUMNS="80")
    client = Client(Settings.from_env(env={}, redis_url=redis_url, key=key))
    name = "nightly " + "x" * 200
    batch = client.submit([triage_task(i, "word " * 400) for i in range(3)], name=name).batch_id
    client.drain(base_url=fake.url)
    run = sh(["-c", f"jobctl status; jobctl results {batch}"], env, home)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 1 + 3, run.stdout
    assert lines[0].split("\t")[0] == batch and lines[0].split("\t")[-1] == name
    for i, line in enumerate(lines[1:]):
        custom_id, ok, answer = line.split("\t")
        assert (custom_id, ok) == (f"mail-{i}", "ok") and json.loads(answer)["category"]
    assert "\x1b[" not in run.stdout + run.stderr


@pytest.mark.slow
def test_wait_says_when_no_worker_drains_the_queue(home, redis_url):
    """`jobctl wait` in a cron log: a line every 10 seconds, and after a minute a notice that no worker
    drains the queue (and how to start one), then exit 4 at --timeout."""
    key_file, _ = keygen(home)
    env = bare_env(home, REDIS_URL=redis_url, JOBCTL_KEY_FILE=str(key_file))
    tasks = home / "tonight.json"
    tasks.write_text(json.dumps([triage_task(1)]))
    submit = sh(["-c", f"jobctl submit {tasks}"], env, home)
    batch = submit.stdout.strip()
    assert submit.returncode == 0 and batch.startswith("batch_"), submit.stderr
    run = sh(["-c", f"jobctl wait {batch} --timeout 80"], env, home)
    assert run.returncode == 4, run.stderr
    lines = run.stderr.splitlines()
    progress = [ln for ln in lines if ln.startswith(f"{batch}: in_progress")]
    assert len(progress) >= 5, run.stderr  # about one per 10 s; a loaded machine may skip one
    notes = [ln for ln in lines if "no worker is draining it" in ln]
    assert len(notes) == 1 and "run `jobctl worker`" in notes[0], run.stderr
    assert lines[-1].startswith(f"jobctl: error: batch {batch} still has 1 queued"), run.stderr
