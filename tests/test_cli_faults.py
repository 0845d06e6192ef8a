"""The CLI under every operational fault (issue 10), as cron runs it: `python -m producer.cli ...` in a
subprocess with no terminal, against a real Redis and real server processes that these tests start,
kill and restart.

For each fault, every command runs plain and with --json, and must: print no traceback; end with the
documented exit code (README: 0 done, 1 could not, 2 usage, 3 finished with failed tasks, 4 timed
out, 130 interrupted); say on stderr, in one line (or the located list, for bad input), what is wrong
and what to do, as a JSON object with --json; and lose nothing (queued tasks still queued, results
intact, nothing enqueued by a failed submit).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from producer.cli.app import INTERRUPTED, OK, TASKS_FAILED, USAGE
from producer.client import Client
from tests.conftest import RedisProcess, clean_env, free_port, triage_task, wait_for
from tests.fake_openai import FakeOpenAI, _error

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 180.0  # seconds for one CLI run: generous, for a loaded 2-core machine
# A message says what to do: one of these verbs (or a command to run) is in it.
ADVICE = re.compile(
    r"\b(run|set|start|check|use|give|make|pass|put|free|name|leave|write|unset|point|remove|fix|"
    r"chmod|reinstall|wait)\b|`jobctl ",
    re.IGNORECASE,
)
FAIL_MARK = "FAIL-ME"  # a task whose body holds this gets an unusable answer from PickyFake


# -- servers ----------------------------------------------------------------------------------------


class PickyFake(FakeOpenAI):
    """The fake model server, plus two things real servers do: a 404 for a model it does not serve,
    and (for these tests) an unusable answer to any task whose text holds FAIL_MARK."""

    async def _chat_inner(self, body: bytes) -> Any:
        try:
            req = json.loads(body)
        except ValueError:
            req = {}
        model = req.get("model") if isinstance(req, dict) else None
        if model and model != self.model:
            return _error(404, f"The model `{model}` does not exist.", "model_not_found")
        if FAIL_MARK.encode() in body:
            return self._completion(req, "this is not JSON", "stop")
        return await super()._chat_inner(body)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    """conftest's `fake`, with PickyFake's 404s and scripted failures (worker_env and drain use it)."""
    with PickyFake() as srv:
        yield srv


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisProcess, str]]:
    """A redis-server that wants a password (set at run time: RedisProcess starts without one)."""
    rp = RedisProcess(tmp_path_factory.mktemp("redis-auth")).start()
    redis.Redis(port=rp.port).config_set("requirepass", "s3cret-pw")
    try:
        yield rp, f"redis://:s3cret-pw@127.0.0.1:{rp.port}/0"
    finally:
        rp.stop()


# -- running the CLI --------------------------------------------------------------------------------


@dataclass
class Run:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        head = f"jobctl {' '.join(self.args)} -> exit {self.code}"
        return f"{head}\n--- stdout\n{self.out[-2000:]}\n--- stderr\n{self.err[-3000:]}"


def start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """One CLI run left running, as a script starts it (its own session, stdin closed, pipes read by the test)."""
    return subprocess.Popen(
        [sys.executable, "-m", "producer.cli", *args],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def jobctl(env: dict[str, str], *args: str, stdout: Any = subprocess.PIPE, timeout: float = TIMEOUT) -> Run:
    """One CLI run as a script runs it: its own session (no terminal), stdin closed."""
    p = subprocess.run(
        [sys.executable, "-m", "producer.cli", *args],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=timeout,
        start_new_session=True,
    )
    out = p.stdout.decode(errors="replace") if isinstance(p.stdout, bytes) else ""
    return Run(args, p.returncode, out, p.stderr.decode(errors="replace"))


def error_message(run: Run, as_json: bool) -> tuple[str | None, list[str]]:
    """The error message a failed run gave (None if it gave none the documented way), and its problems."""
    lines = run.err.strip().splitlines()
    if not lines:
        return None, ["nothing on stderr"]
    if as_json:
        try:
            obj = json.loads(lines[-1])
            message, code = obj["error"]["message"], obj["error"]["exit_code"]
        except (ValueError, KeyError, TypeError):
            return None, ["the last line of stderr is not a JSON error object"]
        return message, ([] if code == run.code else [f"JSON exit_code {code} != {run.code}"])
    if run.code == USAGE and lines[-1].startswith("Error: "):
        # A usage error, in click's words: the usage, `Try 'jobctl X --help' for help.`, the error.
        helped = any(line.startswith("Try 'jobctl") for line in lines)
        return lines[-1], ([] if helped else ["a usage error without `Try 'jobctl ... --help'`"])
    # The error line, and for bad input the located list under it (indented).
    starts = [i for i, line in enumerate(lines) if line.startswith("jobctl: error: ")]
    if not starts or not all(line.startswith("  ") for line in lines[starts[-1] + 1 :]):
        return None, ["the error is not the last thing on stderr, as `jobctl: error: ...`"]
    return "\n".join(lines[starts[-1] :]).removeprefix("jobctl: error: "), []


def problems(
    run: Run,
    code: int,
    as_json: bool,
    one_line: bool = True,
    secrets: tuple[str, ...] = (),
    stdout_ok: bool = False,
) -> list[str]:
    """What is wrong with how a run ended, against the README's promises (empty: nothing)."""
    found = []
    if "Traceback" in run.out or "Traceback" in run.err:
        found.append("a traceback")
    if run.code != code:
        found.append(f"exit {run.code}, expected {code}")
    for s in secrets:
        if s and (s in run.out or s in run.err):
            found.append(f"shows the secret {s[:4]}...")
    if code in (OK, TASKS_FAILED) or run.code in (OK, TASKS_FAILED):
        return found  # a result, not an error: what it prints is checked where it matters
    message, more = error_message(run, as_json)
    found += more
    if message is not None:
        n_lines = len(run.err.strip().splitlines())
        if one_line and n_lines != (4 if run.code == USAGE and not as_json else 1):
            found.append(f"{n_lines} lines on stderr, not one")
        if run.code == USAGE:
            if as_json and "--help`" not in message:
                found.append("a usage error that does not point at --help")
        elif run.code != INTERRUPTED and not ADVICE.search(message):
            found.append(f"does not say what to do: {message!r}")
    if run.out.strip() and not stdout_ok:
        found.append("output on stdout despite the error")
    return found


def check_all(runs: list[tuple[Run, list[str]]]) -> None:
    bad = [f"{r}\n=> {'; '.join(p)}" for r, p in runs if p]
    assert not bad, f"{len(bad)} of {len(runs)} runs broke a promise:\n\n" + "\n\n".join(bad)


def run_many(env_for: Any, cases: list[tuple[tuple[str, ...], int]], **kw: Any) -> list[tuple[Run, list[str]]]:
    """Each case plain and with --json (two at a time), checked by problems()."""
    jobs = [
        (args + (("--json",) if as_json else ()), code, as_json) for args, code in cases for as_json in (False, True)
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda j: jobctl(env_for(j[0]), *j[0]), jobs))
    return [(r, problems(r, code, as_json, **kw)) for r, (_, code, as_json) in zip(runs, jobs, strict=True)]


# -- state that must survive every fault ---------------------------------------------------------


@dataclass
class Seeded:
    done: str  # a drained batch: its results must stay readable
    queued: str  # a batch nobody drained: its tasks must stay queued
    tasks_file: Path
    before: dict[str, Any]


def snapshot(client: Client, seeded: Seeded) -> dict[str, Any]:
    st = client.status(seeded.queued)
    return {
        "batches": sorted(b.id for b in client.batches(100)),
        "queued": (st.counts["queued"], st.counts["running"], st.counts["cancelled"]),
        "results": [(o.custom_id, o.ok, o.parsed) for o in client.results(seeded.done)],
        "depth": client.queue_depth(),
    }


def seed(client: Client, fake_url: str, tmp_path: Path) -> Seeded:
    done = client.submit([triage_task(i) for i in range(3)], name="done").batch_id
    client.drain(base_url=fake_url)
    queued = client.submit([triage_task(f"q{i}") for i in range(3)], name="queued").batch_id
    tasks_file = tmp_path / "new-tasks.json"
    tasks_file.write_text(json.dumps([triage_task(f"new{i}") for i in range(2)]))
    seeded = Seeded(done, queued, tasks_file, {})
    seeded.before = snapshot(client, seeded)
    assert seeded.before["queued"] == (3, 0, 0) and len(seeded.before["results"]) == 3
    return seeded


@pytest.fixture
def seeded(client: Client, fake: FakeOpenAI, tmp_path: Path) -> Seeded:
    return seed(client, fake.url, tmp_path)


def commands(s: Seeded) -> dict[str, tuple[str, ...]]:
    """Every command, as a cron script would run it. worker and drain are bounded (--burst)."""
    return {
        "keygen": ("keygen",),
        "submit": ("submit", str(s.tasks_file)),
        "status": ("status",),
        "status BATCH": ("status", s.queued),
        "results": ("results", s.done),
        "wait": ("wait", s.queued, "--timeout", "60"),
        "retry": ("retry", s.done),
        "cancel": ("cancel", s.queued),
        "worker": ("worker", "--burst"),
        "drain": ("drain",),
        "cost": ("cost",),
    }


def per_run_home(env: dict[str, str], tmp_path: Path) -> Any:
    """Each run its own JOBCTL_HOME, so that keygen in one run gives no key to another."""

    def env_for(args: tuple[str, ...]) -> dict[str, str]:
        home = tmp_path / ("home-" + re.sub(r"[^a-z0-9]+", "-", " ".join(args).lower())[:80])
        return {**env, "JOBCTL_HOME": str(home)}

    return env_for


# -- 1. Redis: unreachable, a typo, no scheme, no such database, a wrong password -------------------


def _redis_faults(redis_url: str) -> dict[str, str]:
    hostport = redis_url.split("://", 1)[1].rsplit("/", 1)[0]
    return {
        "unreachable": f"redis://127.0.0.1:{free_port()}/0",
        "scheme typo": f"redus://{hostport}/0",
        "no scheme": hostport,
        "database 99": f"redis://{hostport}/99",
    }


@pytest.mark.parametrize("fault", ["unreachable", "scheme typo", "no scheme", "database 99"])
def test_every_command_with_a_bad_redis_url(fault, base_env, seeded, client, tmp_path):
    env = {**base_env, "REDIS_URL": _redis_faults(client.settings.redis_url or "")[fault]}
    cmds = commands(seeded)
    cases = [(args, 0 if name == "keygen" else 1) for name, args in cmds.items()]
    # keygen needs no Redis: it writes the key file whatever REDIS_URL says, and says JOBCTL_KEY wins.
    results = run_many(per_run_home(env, tmp_path), cases, one_line=False)
    for run, found in results:
        if run.args[0] != "keygen" and run.code:
            lines = run.err.strip().splitlines()
            if len(lines) != 1:
                found.append(f"{len(lines)} lines on stderr, not one")
            if "Redis" not in run.err and "REDIS_URL" not in run.err:
                found.append("does not name Redis")
    check_all(results)
    assert snapshot(client, seeded) == seeded.before


def test_every_command_with_a_wrong_redis_password(password_redis, settings, fake, tmp_path):
    rp, good_url = password_redis
    redis.Redis.from_url(good_url).flushdb()
    good = Client(settings.with_(redis_url=good_url))
    s = seed(good, fake.url, tmp_path)
    base = clean_env(
        JOBCTL_KEY=settings.key_text, JOBCTL_QUEUE=settings.queue, OPENAI_BASE_URL=fake.url, JOBCTL_LEASE_SECONDS="3"
    )
    for label, url in {
        "wrong password": good_url.replace("s3cret-pw", "wrong-pw"),
        "no password": f"redis://127.0.0.1:{rp.port}/0",
        "wrong user": good_url.replace("://:", "://nobody:"),
    }.items():
        cases = [(args, 0 if name == "keygen" else 1) for name, args in commands(s).items()]
        results = run_many(
            per_run_home({**base, "REDIS_URL": url}, tmp_path / label.replace(" ", "-")),
            cases,
            one_line=False,
            secrets=("s3cret-pw", "wrong-pw", settings.key_text or ""),
        )
        for run, found in results:
            if run.args[0] != "keygen" and "refused the credentials" not in run.err:
                found.append(f"{label}: not said as a refused password")
        check_all(results)
    assert snapshot(good, s) == s.before


# -- 2. the model server: down, refusing the key, no /v1, an unknown model ------------------------


@pytest.fixture
def keyed_fake() -> Iterator[FakeOpenAI]:
    with PickyFake(api_key="the-right-api-key") as srv:
        yield srv


def test_worker_and_drain_with_a_bad_model_server(base_env, seeded, client, fake, keyed_fake, tmp_path):
    faults = {
        "down": {"OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"},
        "refuses the key": {"OPENAI_BASE_URL": keyed_fake.url, "OPENAI_API_KEY": "a-wrong-api-key"},
        "wants a key": {"OPENAI_BASE_URL": keyed_fake.url},
        "no /v1": {"OPENAI_BASE_URL": fake.base},
        "unknown model": {"OPENAI_BASE_URL": fake.url, "JOBCTL_MODEL": "no-such-model"},
    }
    said = {
        "down": "cannot connect",
        "refuses the key": "refused the API key",
        "wants a key": "refused the API key",
        "no /v1": "/v1",
        "unknown model": "no-such-model",
    }
    all_results = []
    for label, extra in faults.items():
        env = {**base_env, **extra}
        cases = [(("worker", "--burst"), 1), (("drain",), 1)]
        results = run_many(lambda args, env=env: env, cases, secrets=("a-wrong-api-key", "the-right-api-key"))
        for run, found in results:
            if said[label] not in run.err:
                found.append(f"{label}: does not say {said[label]!r}")
        all_results += results
        # Nothing burned: the queued tasks went back at once, none ran, none failed.
        st = client.status(seeded.queued)
        assert (st.counts["queued"], st.counts["running"], st.counts["failed"]) == (3, 0, 0), (label, st.counts)
    check_all(all_results)
    assert snapshot(client, seeded) == seeded.before


# -- 3. keys: missing, malformed, readable by others ---------------------------------------------


def test_every_command_with_a_bad_key(base_env, seeded, client, settings, tmp_path):
    loose = tmp_path / "loose-key"
    loose.write_text((settings.key_text or "") + "\n")
    loose.chmod(0o644)
    faults: dict[str, tuple[dict[str, str | None], str, int]] = {
        # fault: (environment, what the message says, keygen's exit code)
        "missing": ({"JOBCTL_KEY": None}, "no encryption key", 0),
        "malformed": ({"JOBCTL_KEY": "not-a-key"}, "JOBCTL_KEY", 0),
        "readable by others": ({"JOBCTL_KEY": None, "JOBCTL_KEY_FILE": str(loose)}, "chmod 600", 1),
    }
    all_results = []
    for label, (extra, says, keygen_code) in faults.items():
        env = {k: v for k, v in {**base_env, **extra}.items() if v is not None}
        # cost reads only the drain reports, which hold no secrets: it needs no key.
        cases = [
            (args, keygen_code if name == "keygen" else 0 if name == "cost" else 1)
            for name, args in commands(seeded).items()
        ]
        results = run_many(per_run_home(env, tmp_path / label.replace(" ", "-")), cases, one_line=False)
        for run, found in results:
            if run.args[0] not in ("keygen", "cost"):
                if says not in run.err:
                    found.append(f"{label}: does not say {says!r}")
                if len(run.err.strip().splitlines()) != 1:
                    found.append("not one line on stderr")
            if settings.key_text and settings.key_text in run.out + run.err:
                found.append("shows the key")
        all_results += results
    check_all(all_results)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o644, "keygen changed the user's key file"
    assert snapshot(client, seeded) == seeded.before


# -- 4. files: a missing input, an unwritable -o, a device as -o, a full disk, a closed pipe ---------


def test_a_missing_input_file_enqueues_nothing(base_env, seeded, client, tmp_path):
    missing = tmp_path / "no-such-inbox.json"
    cases = [
        (("submit", str(missing)), 1),
        # all or none: the good file's tasks are not enqueued either
        (("submit", str(seeded.tasks_file), str(missing)), 1),
        (("submit", "--wait", "--timeout", "5", str(missing)), 1),
    ]
    results = run_many(lambda a: base_env, cases, one_line=False)
    for run, found in results:
        if f"{missing}: no such file" not in run.err or "nothing was submitted" not in run.err:
            found.append("no located error naming the file")
    check_all(results)
    assert snapshot(client, seeded) == seeded.before


def test_an_unwritable_output_file(base_env, seeded, client, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    targets = [tmp_path / "no-such-folder" / "out.jsonl", a_file / "out.jsonl"]
    cases = [
        (("results", seeded.done, *fmt, "-o", str(target)), 1)
        for target in targets
        for fmt in ((), ("--format", "csv"))
    ]
    results = run_many(lambda a: base_env, cases)
    for run, found in results:
        if "cannot write" not in run.err:
            found.append("does not say it cannot write")
    check_all(results)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == ["a-file", "new-tasks.json"]
    assert snapshot(client, seeded) == seeded.before


@pytest.mark.parametrize("target", ["/dev/full", "/dev/null", "/dev/stdout", "/dev/fd/1"])
def test_a_device_as_output_is_refused_and_left_alone(target, base_env, seeded):
    """-o writes a file beside its target and renames it over the target: that must never replace a
    device or /dev/stdout (which root could do), so these are a usage error."""
    before = os.lstat(target)
    check_all(run_many(lambda a: base_env, [(("results", seeded.done, "-o", target), 2)]))
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)


def test_stdout_on_a_full_disk(base_env, seeded):
    """/dev/full as stdout: every write fails with ENOSPC, as on a full disk."""
    cases = [
        ("status",),
        ("status", seeded.done),
        ("results", seeded.done),
        ("results", seeded.done, "--json"),
        ("results", seeded.done, "--format", "csv"),
        ("cost",),
        ("keygen", "--print"),
    ]
    found_all = []
    for args in cases:
        for as_json in (False, True):
            full = args + (("--json",) if as_json and "--json" not in args else ())
            with open("/dev/full", "wb") as out:
                run = jobctl(base_env, *full, stdout=out)
            found = problems(run, 1, as_json or "--json" in args)
            if "free some space" not in run.err:
                found.append("does not say the disk is full")
            found_all.append((run, found))
    check_all(found_all)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, filled up (needs root, or CAP_SYS_ADMIN; skipped elsewhere)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_files_on_a_full_disk(tiny_disk, base_env, seeded):
    old = tiny_disk / "answers.jsonl"
    old.write_text("yesterday's answers\n")
    data = tiny_disk / "jobctl"
    data.mkdir(mode=0o700)
    with contextlib.suppress(OSError), open(tiny_disk / "filler", "wb") as f:
        while True:
            f.write(b"x" * 4096)
            f.flush()
    cases = [
        (("results", seeded.done, "-o", str(old)), 1),
        (("results", seeded.done, "--format", "csv", "-o", str(old)), 1),
        (("keygen",), 1),
    ]
    # keygen writes the key file into JOBCTL_HOME, on the full disk
    no_key = {k: v for k, v in base_env.items() if k != "JOBCTL_KEY"}
    results = run_many(lambda a: {**no_key, "JOBCTL_HOME": str(data)} if a[0] == "keygen" else base_env, cases)
    for run, found in results:
        if "free some space" not in run.err:
            found.append("does not say the disk is full")
    check_all(results)
    # The old file is left as it was, and no half-written file remains.
    assert old.read_text() == "yesterday's answers\n"
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["answers.jsonl", "filler", "jobctl"]
    assert list(data.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "{done}"),
        ("results", "{done}"),
        ("results", "{done}", "--json"),
        ("results", "{done}", "--format", "csv"),
        ("cost", "--json"),
        ("keygen", "--print"),
        ("--help",),
        ("--version",),
        ("wait", "--help"),
    ],
)
def test_a_closed_pipe_is_a_quiet_zero(args, base_env, seeded):
    """The reader is gone before jobctl writes its first byte (`| head -0`): exit 0, no error."""
    full = [a.replace("{done}", seeded.done) for a in args]
    p = start(base_env, *full)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read().decode()
    code = p.wait(TIMEOUT)
    assert code == 0 and "Traceback" not in err and "error" not in err.lower(), (code, err)


def test_results_piped_to_head(base_env, client, fake):
    """The README's `jobctl results B --json | head -1`, with more output than a pipe buffers."""
    body = "Can we move the dentist appointment to Friday? " * 40
    sub = client.submit([triage_task(i, body) for i in range(300)])
    client.drain(base_url=fake.url, concurrency=32)
    script = f'set -o pipefail; "{sys.executable}" -m producer.cli results {sub.batch_id} --json | head -1'
    p = subprocess.run(["bash", "-c", script], env=base_env, cwd=REPO, capture_output=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr.decode()
    assert len(p.stdout.splitlines()) == 1 and json.loads(p.stdout)["custom_id"] == "mail-0"
    assert p.stderr.decode() == ""


def test_debug_shows_the_traceback_and_verbose_does_not(base_env):
    env = {**base_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    debug = jobctl(env, "--debug", "status")
    assert debug.code == 1 and "Traceback" in debug.err and "ConnectionError" in debug.err
    verbose = jobctl(env, "-vv", "status")
    assert not problems(verbose, 1, False, one_line=False), verbose
    assert verbose.err.strip().splitlines()[-1].startswith("jobctl: error: cannot reach Redis")


def test_usage_errors_exit_2_and_are_json_with_json(base_env, seeded):
    cases = [
        (("status", "--limit", "many"), 2),
        (("submit", str(seeded.tasks_file), "--options", "{not json"), 2),
        (("submit", str(seeded.tasks_file), "--timeout", "5"), 2),  # --timeout without --wait
        (("results", seeded.done, "--fields", "custom_id"), 2),  # --fields without --format csv
        (("no-such-command",), 2),
    ]
    check_all(run_many(lambda a: base_env, cases, one_line=False))


# -- 5. exit codes of wait and submit --wait ----------------------------------------------------


def test_wait_exit_codes(base_env, client, fake):
    ok = client.submit([triage_task(i) for i in range(3)]).batch_id
    client.drain(base_url=fake.url)
    some_failed = client.submit([triage_task("f1", FAIL_MARK), triage_task("f2"), triage_task("f3")]).batch_id
    client.drain(base_url=fake.url)
    all_failed = client.submit([triage_task("g1", FAIL_MARK), triage_task("g2", FAIL_MARK)]).batch_id
    client.drain(base_url=fake.url)
    pending = client.submit([triage_task("p1")]).batch_id
    assert client.status(some_failed).counts["failed"] == 1
    cases = [
        (("wait", ok), 0),
        (("wait", some_failed), 3),
        (("wait", all_failed), 3),
        (("wait", pending, "--timeout", "1.5"), 4),
        (("wait", "batch_doesnotexist", "--timeout", "5"), 1),
    ]
    results = run_many(lambda a: base_env, cases, one_line=False)
    for run, found in results:
        as_json = "--json" in run.args
        if run.code in (0, 3):
            last = run.out.strip().splitlines()[-1] if as_json else run.err.strip().splitlines()[-1]
            if as_json and json.loads(last)["id"] != run.args[1]:
                found.append("--json: no final status on stdout")
            if not as_json and not last.startswith(f"jobctl: {run.args[1]}: "):
                found.append("no final status line on stderr")
        if run.code == 4 and "still has 1 queued" not in run.err:
            found.append("the timeout does not say what is left")
    check_all(results)
    assert client.status(pending).counts["queued"] == 1


def test_submit_wait_exit_codes(base_env, worker_env, client, tmp_path, procs):
    from tests.conftest import spawn

    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps([triage_task(i) for i in range(3)]))
    bad.write_text(json.dumps([triage_task("b1", FAIL_MARK), triage_task("b2")]))
    pending = tmp_path / "pending.json"
    pending.write_text(json.dumps([triage_task("later")]))
    # No worker yet: --timeout ends the wait with 4, and the tasks stay queued for a worker.
    check_all(
        run_many(
            lambda a: base_env,
            [(("submit", str(pending), "--wait", "--timeout", "1.5"), 4)],
            one_line=False,
            stdout_ok=True,
        )
    )
    assert client.queue_depth() == 1
    spawn(procs, worker_env, burst=False)
    results = run_many(
        lambda a: base_env,
        [
            (("submit", str(good), "--wait", "--timeout", "120"), 0),
            (("submit", str(bad), "--wait", "--timeout", "120"), 3),
        ],
        one_line=False,
    )
    # Plain and --json ran at once: one of each pair enqueued, the other found duplicates, and both
    # waited on the same tasks.
    for run, found in results:
        if "--json" in run.args:
            lines = run.out.strip().splitlines()
            first, last = json.loads(lines[0]), json.loads(lines[-1])
            if first.get("batch_id") != last.get("id"):
                found.append("--json: not the submit result, then the batch's final status")
    check_all(results)


def test_sigint_to_wait_exits_130(base_env, client):
    batch = client.submit([triage_task(1)]).batch_id
    p = start(base_env, "wait", batch)
    assert p.stderr is not None
    first = p.stderr.readline().decode()  # the first progress line: the wait is under way
    assert batch in first, first
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=TIMEOUT)
    run = Run(("wait", batch), p.returncode, out.decode(), first + err.decode())
    assert not problems(run, 130, False, one_line=False), run
    assert run.err.strip().splitlines()[-1] == "jobctl: error: interrupted"
    assert client.status(batch).counts["queued"] == 1


# -- 6. Redis killed during `jobctl wait`, and restarted --------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    rp = RedisProcess(tmp_path / "redis").start()
    try:
        yield rp
    finally:
        rp.stop()


def kill(rp: RedisProcess) -> None:
    assert rp.proc is not None
    rp.proc.kill()  # SIGKILL: no goodbye to its clients
    rp.proc.wait(10)
    rp.proc = None


def test_wait_waits_out_a_redis_restart(own_redis, base_env, worker_env, settings, procs):
    from tests.conftest import finish, spawn

    conn = redis.Redis.from_url(own_redis.url)
    client = Client(settings.with_(redis_url=own_redis.url), connection=conn)
    batch = client.submit([triage_task("r1", FAIL_MARK), *[triage_task(f"r{i}") for i in range(2, 6)]]).batch_id
    env = {**base_env, "REDIS_URL": own_redis.url}
    p = start(env, "wait", batch, "--timeout", "300")
    assert p.stderr is not None
    first = p.stderr.readline().decode()
    assert batch in first, first
    kill(own_redis)
    time.sleep(4)  # a few of wait's polls fail
    assert p.poll() is None, "wait gave up when Redis went away"
    own_redis.start()  # same port, same append-only file
    rc, _, err = finish(spawn(procs, {**worker_env, "REDIS_URL": own_redis.url}), TIMEOUT)
    assert rc == 0, err
    out, rest = p.communicate(timeout=TIMEOUT)
    run = Run(("wait", batch), p.returncode, out.decode(), first + rest.decode())
    # One of five tasks failed: exit 3, and the outage was said, and its end.
    assert not problems(run, 3, False, one_line=False), run
    assert "waiting for it to come back" in run.err and "Redis is back" in run.err, run
    assert run.err.strip().splitlines()[-1].startswith(f"jobctl: {batch}: completed, 4/5 done, 1 failed"), run
    conn.close()


def connected(conn: redis.Redis, before: int) -> bool:
    return len(conn.client_list()) > before


def test_wait_timeout_holds_while_redis_is_down(own_redis, base_env, settings):
    conn = redis.Redis.from_url(own_redis.url)
    client = Client(settings.with_(redis_url=own_redis.url), connection=conn)
    batch = client.submit([triage_task(1)]).batch_id
    env = {**base_env, "REDIS_URL": own_redis.url}
    for as_json in (False, True):
        if own_redis.proc is None:
            own_redis.start()
        clients = len(conn.client_list())
        p = start(env, "wait", batch, "--timeout", "12", *(["--json"] if as_json else []))
        assert p.stderr is not None
        # The wait's first read went through (a Redis unreachable at the start is an error, exit 1).
        wait_for(partial(connected, conn, clients), TIMEOUT, "wait to connect")
        time.sleep(0.5)
        kill(own_redis)
        out, rest = p.communicate(timeout=TIMEOUT)
        run = Run(("wait", batch), p.returncode, out.decode(), rest.decode())
        assert not problems(run, 4, as_json, one_line=False), run
        assert "Redis has been unreachable" in run.err, run
    own_redis.start()
    assert client.status(batch).counts["queued"] == 1  # nothing lost
    conn.close()


def test_wait_progress_is_plain_lines_off_a_terminal(base_env, client, fake):
    """No bar, no cursor movement, no colour in a cron log: one plain line per state."""
    batch = client.submit([triage_task(1)]).batch_id
    client.drain(base_url=fake.url)
    run = jobctl(base_env, "wait", batch)
    assert run.code == 0 and "\r" not in run.err and "\x1b[" not in run.err, run
    assert run.err.splitlines() == [
        f"{batch}: completed, 1/1 done, 0 failed",
        f"jobctl: {batch}: completed, 1/1 done, 0 failed",
    ]
