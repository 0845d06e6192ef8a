"""The CLI at its edges, as a cron or script user meets them (an outside review's findings):

1. where long text is cut for display, the cut is marked, never splits a character, grapheme or
   escape, and cannot be forged by the text itself;
2. narrow terminals (COLUMNS=20, 40): tables give way to stacked rows, ids and counts stay whole;
3. a batch read with another key: one line naming both key ids and JOBCTL_KEY / JOBCTL_KEY_FILE;
4. REDIS_URL with a database part that is not a database: one line naming REDIS_URL and the fix;
5. (the embedded Redis's files: tests/test_security_files.py)
6. --help reads well: no broken paragraphs, no option split at its hyphen, no cut summaries;
7. a worker (or drain) stopped by SIGINT exits 130, by SIGTERM 143, with one closing line.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from rich.console import Console

from jobs.outcomes import Outcome
from jobs.store.batches import BatchStatus
from producer.cli import output
from producer.cli.app import INTERRUPTED, TERMINATED
from producer.client import Client
from producer.safe_text import cut_at, visible, visible_cut
from tests.conftest import clean_env, triage_task, wait_for
from tests.fake_openai import FakeOpenAI, Reply
from tests.test_cli_faults import Run, jobctl, start

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
MARK = re.compile(r"…\[cut (\d+) chars\]")


def one_error_line(run: Run, as_json: bool) -> str:
    """The single line a failed run printed on stderr (its message, with --json), or fail."""
    lines = run.err.strip().splitlines()
    assert "Traceback" not in run.err + run.out, run
    assert len(lines) == 1, run
    if as_json:
        err = json.loads(lines[0])["error"]
        assert err["exit_code"] == run.code, run
        return str(err["message"])
    assert lines[0].startswith("jobctl: error: "), run
    return lines[0]


# -- a terminal of a given width ----------------------------------------------------------------


def on_terminal(env: dict[str, str], *args: str, columns: int, timeout: float = 120) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal `columns` wide; its exit code and what
    the terminal got, colours and cursor moves stripped."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    p = subprocess.Popen(
        [sys.executable, "-m", "producer.cli", *args],
        env={**env, "COLUMNS": str(columns), "LINES": "24", "TERM": "xterm-256color"},
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    chunks = []
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif p.poll() is not None:
                break
        code = p.wait(timeout=10)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return code, ANSI.sub("", text)


# -- 1. cut markers -------------------------------------------------------------------------------


class Screen:
    """output's tables and lines, recorded: on a terminal `width` wide, or plain lines (no terminal)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tty: bool, width: int = 100):
        self.buf = io.StringIO()
        self.tty = tty
        monkeypatch.setattr(output, "is_tty", lambda stderr=False: tty)

        def console(stderr: bool = False) -> Console:
            return Console(file=self.buf, width=width, force_terminal=True, color_system=None, highlight=False)

        monkeypatch.setattr(output, "console", console)

    def text(self, capsys: pytest.CaptureFixture[str]) -> str:
        captured = capsys.readouterr()
        return self.buf.getvalue() + captured.out + captured.err


def answered(custom_id: str, content: str) -> Outcome:
    return Outcome("j-" + custom_id, custom_id, True, 200, {"choices": [{"message": {"content": content}}]}, None)


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "plain"])
def test_a_long_answer_is_cut_with_a_marker_that_counts_what_was_cut(tty, monkeypatch, capsys):
    screen = Screen(monkeypatch, tty)
    answer = "word " * 5000  # 25,000 characters
    output.results_rows([answered("long-1", answer), answered("short-1", "fine")])
    out = screen.text(capsys)
    marks = [int(n) for n in MARK.findall(out)]
    assert len(marks) == 1, out[-500:]
    shown = out.count("word")
    # What was shown plus what the marker says was cut is the whole answer: nothing silently lost.
    assert abs(shown * 5 + marks[0] - len(answer)) <= 5, (shown, marks)
    assert "fine" in out and "2 succeeded, 0 failed" in out


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "plain"])
def test_a_failure_message_is_cut_with_a_marker(tty, monkeypatch, capsys):
    screen = Screen(monkeypatch, tty)
    failed = Outcome("j1", "f1", False, 500, None, {"code": "invalid_output", "message": "x" * 20_000})
    output.results_rows([failed])
    assert len(MARK.findall(screen.text(capsys))) == 1


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "plain"])
def test_an_answer_that_fits_has_no_marker(tty, monkeypatch, capsys):
    screen = Screen(monkeypatch, tty)
    output.results_rows([answered("a1", "short and whole")])
    out = screen.text(capsys)
    assert "short and whole" in out and "cut" not in out and "…" not in out


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "plain"])
def test_a_forged_marker_in_an_answer_is_not_taken_for_a_cut(tty, monkeypatch, capsys):
    screen = Screen(monkeypatch, tty)
    output.results_rows([answered("a1", "all is well…[cut 4000 chars]")])
    out = screen.text(capsys)
    assert not MARK.search(out), out
    assert "all is well" in out and "[cut 4000 chars]" in out  # shown, as escaped text


# Clusters that a cut must keep whole or drop whole: a base and its combining accent, a ZWJ family,
# a flag (two regional indicators), a skin-tone modifier, a keycap, an emoji with VS16, Hangul jamo.
CLUSTERS = [
    "e\u0301",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0001f1e9\U0001f1ea",
    "\U0001f44d\U0001f3fd",
    "1\ufe0f\u20e3",
    "\u2764\ufe0f",
    "\u1100\u1161\u11a8",
    "a\u0308\u0323",
]


@pytest.mark.parametrize("cluster", CLUSTERS, ids=[f"c{i}" for i in range(len(CLUSTERS))])
@pytest.mark.parametrize("offset", [1, 2, 3])
def test_a_cut_never_splits_a_grapheme(cluster, offset):
    limit, start = 20, 20 - offset
    text = "x" * start + cluster + "tail" * 10
    i = cut_at(text, limit)
    assert i <= limit and i not in range(start + 1, start + len(cluster)), (i, repr(text[:i]))
    assert i >= min(start, limit), "cut more than the grapheme that did not fit"
    shown = visible_cut(text, limit)
    assert shown == visible(text[:i]) + f"…[cut {len(text) - i} chars]"


def test_flags_are_cut_between_pairs_not_inside_one():
    flags = "\U0001f1e9\U0001f1ea\U0001f1eb\U0001f1f7\U0001f1ee\U0001f1f9"  # DE FR IT
    for limit in range(1, 7):
        assert cut_at(flags, limit) % 2 == 0, limit


@pytest.mark.parametrize("limit", range(1, 12))
def test_a_cut_never_splits_an_escape(limit):
    text = "ab\x1b[2J\x1b]0;t\x07\u202ecd" * 3
    shown = visible_cut(text, limit)
    body = MARK.split(shown)[0]
    # What is shown is the escaped form of a prefix: every escape in it whole.
    assert any(body == visible(text[:k]) for k in range(limit + 1)), (limit, body)
    assert "\x1b" not in shown and "\u202e" not in shown


def test_lone_surrogates_are_shown_escaped_and_never_crash_the_output(monkeypatch, capsys):
    assert visible("a\ud83db\udc00") == "a\\ud83db\\udc00"
    for tty in (False, True):
        Screen(monkeypatch, tty)
        stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
        monkeypatch.setattr(sys, "stdout", stream)
        output.results_rows([answered("s\ud800", "half a pair: \ud83d, and its other half \ude00" * 50)])
        stream.flush()
        monkeypatch.undo()
        written = stream.buffer.getvalue().decode()  # type: ignore[attr-defined]
        if not tty:
            assert "\\ud83d" in written and "s\\ud800" in written


def test_status_lists_at_most_20_problems_and_says_how_many_more(capsys):
    problems = {f"task-{i}": "invalid_output" for i in range(25)}
    st = BatchStatus(
        id="b1", queue="q", status="completed", created_at=time.time(), total=25, duplicates=0, problems=problems
    )
    output.status_detail(st, notes=[])
    out = capsys.readouterr().out
    assert out.count("problem ") == 20 + 1 and "5 more" in out and "--json" in out


# -- 2. narrow terminals --------------------------------------------------------------------------


def batch(i: int, **over: Any) -> BatchStatus:
    fields: dict[str, Any] = {
        "id": f"batch_{i:02d}35f715a74d0247e290",
        "queue": "nightly-mail-queue",
        "status": "in_progress",
        "created_at": time.time(),
        "total": 1234,
        "duplicates": 0,
        "counts": {"completed": 1000, "failed": 34, "queued": 200},
        "name": "weekly inbox from the shared mailbox",
    }
    return BatchStatus(**{**fields, **over})


# Words that must come out whole (a count and its total, a state, a queue); the words of a phrase
# ("34 failed") may go to lines of their own in a narrow column.
WHOLE = ["1000/1234", "1234/1234", "34", "200", "in_progress", "completed", "nightly-mail-queue"]


@pytest.mark.parametrize("width", [20, 30, 40, 60, 80, 100, 140])
def test_status_rows_keep_ids_and_counts_whole_at_any_width(width, monkeypatch, capsys):
    screen = Screen(monkeypatch, True, width)
    states = [batch(1), batch(2, name=None), batch(3, status="completed", counts={"completed": 1234})]
    output.status_rows(states)
    out = screen.text(capsys)
    assert "…" not in out, out
    for s in states:
        assert s.id in out, (width, out)
    words = set(re.findall(r"[\w/-]+", out))
    for word in WHOLE:
        assert word in words, (width, word, out)
    assert "weekly inbox" in " ".join(out.split())


@pytest.mark.parametrize("width", [20, 30, 40, 60, 80, 100])
def test_results_rows_keep_custom_ids_whole_at_any_width(width, monkeypatch, capsys):
    screen = Screen(monkeypatch, True, width)
    ids = ["mail-<CAF=abc123@mail.example.org>", "m2", "transaction-2026-11-27-0001"]
    output.results_rows([answered(i, "an answer " * 8) for i in ids])
    out = screen.text(capsys)
    for cid in ids:
        assert cid in out, (width, out)
    assert "…" not in out and "3 succeeded, 0 failed" in " ".join(out.split())


@pytest.mark.parametrize("width", [20, 40, 80])
def test_progress_keeps_the_batch_id_whole_at_any_width(width, monkeypatch, capsys):
    screen = Screen(monkeypatch, True, width)
    with output.Progress(every=0) as p:
        p.update(batch(1, counts={"completed": 1000, "failed": 34, "running": 3, "queued": 197}))
        p.update(batch(1, status="completed", counts={"completed": 1200, "failed": 34}))
    out = screen.text(capsys)
    assert batch(1).id in out and "…" not in out, out


@pytest.fixture
def drained(client: Client, fake: FakeOpenAI, drain: Any) -> str:
    # The chat task first: it is claimed first, and gets the long scripted answer.
    tasks = [{"custom_id": "chat-1", "kind": "chat", "input": {"messages": [{"role": "user", "content": "hi"}]}}]
    tasks += [triage_task(f"narrow-{i}") for i in range(3)]
    fake.script(Reply("long answer " * 3000))
    sub = client.submit(tasks, name="a batch name long enough to need wrapping somewhere")
    drain(concurrency=1)
    return sub.batch_id


@pytest.mark.parametrize("columns", [20, 40])
def test_status_results_and_wait_on_a_narrow_terminal(columns, drained, base_env):
    for args, expect in [
        (("status",), [drained, "4/4 done"]),
        (("status", drained), [drained, "4/4 done"]),
        (("results", drained), ["narrow-0", "chat-1", "4 succeeded, 0 failed"]),
        (("wait", drained), [drained, "4/4 done"]),
    ]:
        code, out = on_terminal(base_env, *args, columns=columns)
        assert code == 0 and "Traceback" not in out, (args, out)
        for word in expect:
            assert word in out, (args, word, out)
        if args[0] == "results":
            assert MARK.search(out), out  # the long chat answer, cut and marked


# -- 3. a batch read with another key ----------------------------------------------------------------


def test_reading_a_batch_with_another_key_says_which_keys_and_what_to_do(base_env, client):
    from jobs.crypto import Cipher, generate_key

    batch_id = client.submit([triage_task(1)]).batch_id
    other = generate_key()
    env = {**base_env, "JOBCTL_KEY": other}
    mine, theirs = client.cipher.key_id, Cipher(other).key_id
    for args in [
        ("status", batch_id),
        ("results", batch_id),
        ("results", batch_id, "--format", "csv"),
        ("wait", batch_id, "--timeout", "5"),
        ("cancel", batch_id),
        ("retry", batch_id),
    ]:
        for as_json in (False, True):
            run = jobctl(env, *args, *(["--json"] if as_json else []))
            assert run.code == 1, run
            message = one_error_line(run, as_json)
            assert mine in message and theirs in message, run
            assert "JOBCTL_KEY" in message and "JOBCTL_KEY_FILE" in message, run
            assert other not in run.err + run.out
    assert client.status(batch_id).counts["queued"] == 1  # nothing was cancelled


def test_listing_with_another_key_says_that_other_keys_batches_are_hidden(base_env, client):
    from jobs.crypto import generate_key

    client.submit([triage_task(1)])
    for as_json in (False, True):
        run = jobctl({**base_env, "JOBCTL_KEY": generate_key()}, "status", *(["--json"] if as_json else []))
        assert run.code == 0, run
        if as_json:
            assert json.loads(run.out) == []
        assert client.cipher.key_id in run.err and "JOBCTL_KEY" in run.err, run
        assert "no batches yet" not in run.out + run.err


# -- 4. REDIS_URL's database part ---------------------------------------------------------------------


def _bad_dbs(hostport: str) -> list[str]:
    return [
        f"redis://:s3cret-pw@{hostport}/abc",
        f"redis://:s3cret-pw@{hostport}/-1",
        f"redis://:s3cret-pw@{hostport}/99999",
        f"redis://:s3cret-pw@{hostport}/0/extra",
        f"redis://:s3cret-pw@{hostport}/1.5",
        f"redis://:s3cret-pw@{hostport}/99999999999999999999",
        f"redis://:s3cret-pw@{hostport}/16",  # past the server's `databases` (16 by default)
        f"rediss://:s3cret-pw@{hostport}/x",
    ]


def test_a_bad_database_in_redis_url_is_one_line_naming_redis_url(base_env, settings):
    hostport = (settings.redis_url or "").split("://", 1)[1].rsplit("/", 1)[0]
    commands = [("status",), ("submit", str(REPO / "examples" / "inbox.json")), ("worker", "--burst")]
    cases = [
        (url, (*args, *(["--json"] if as_json else [])), as_json)
        for i, url in enumerate(_bad_dbs(hostport))
        for args in (commands if i % 3 == 0 else commands[:1])  # every URL with status, some with all
        for as_json in (False, True)
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda c: jobctl({**base_env, "REDIS_URL": c[0]}, *c[1]), cases))
    for run, (_, _, as_json) in zip(runs, cases, strict=True):
        assert run.code == 1, run
        message = one_error_line(run, as_json)
        assert "REDIS_URL" in message and "database" in message, run
        assert "s3cret-pw" not in run.err + run.out, run
        assert re.search(r"\b0-15\b|/0\b", message), run  # the fix: what to write


def test_a_good_database_in_redis_url_still_works(base_env, settings):
    url = settings.redis_url or ""
    for good in [url, url.rsplit("/", 1)[0] + "/", url.rsplit("/", 1)[0]]:
        run = jobctl({**base_env, "REDIS_URL": good}, "status")
        assert run.code == 0, run


# -- 6. help -----------------------------------------------------------------------------------------


def help_pages(env: dict[str, str], columns: int) -> dict[str, str]:
    """`jobctl --help` and every `jobctl COMMAND --help`, `columns` wide, in-process (click's runner)."""
    from click.testing import CliRunner

    from producer.cli import cli

    run_env: dict[str, str | None] = {k: None for k in os.environ}
    run_env.update({**env, "COLUMNS": str(columns)})
    pages = {}
    for name, args in [("jobctl", ["--help"]), *((n, [n, "--help"]) for n in cli.commands)]:
        result = CliRunner().invoke(cli, args, env=run_env, prog_name="jobctl", terminal_width=columns)
        assert result.exit_code == 0, result.output
        pages[name] = result.output
    return pages


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_help_pages_read_well(columns, tmp_path):
    env = clean_env(JOBCTL_HOME=str(tmp_path))
    found = []
    for name, page in help_pages(env, columns).items():
        prose = page.split("\nOptions:")[0]
        for line in prose.splitlines():
            if re.search(r"\S {3,}\S", line):
                found.append(f"{name}: a paragraph with a run of spaces: {line!r}")
        for line in page.splitlines():
            if re.search(r"[A-Za-z]-$", line):
                found.append(f"{name}: a word split at its hyphen: {line!r}")
            if len(line) > max(columns, 60):
                found.append(f"{name}: wider than {columns}: {line!r}")
        flat = " ".join(page.split())
        for example in re.findall(r"`[^`]{1,40}`|'\{[^']{1,40}\}'", flat):
            if example not in page:
                found.append(f"{name}: an example split over two lines: {example}")
        if flat.count("default:") != len(re.findall(r"\[(?:env: [A-Z_]+; )?default: ", flat)):
            found.append(f"{name}: a default that is not in [default: ...]")
        internal = re.search(r"Drainer|perform_task|TaskWorker|\b(?:jobs|producer|worker)\.[a-z_]|Settings\(", flat)
        if internal:
            found.append(f"{name}: names the internal {internal.group()}")
    listing = help_pages(env, columns)["jobctl"].split("Commands:")[1].split("Exit codes")[0]
    if "..." in listing:
        found.append(f"a command summary cut short:\n{listing}")
    assert not found, "\n".join(found)


def test_help_shows_the_defaults_that_matter(tmp_path):
    env = clean_env(JOBCTL_HOME=None, XDG_DATA_HOME=str(tmp_path / "data"))
    pages = {k: " ".join(v.split()) for k, v in help_pages(env, 100).items()}
    # --home: the real folder, as a new process (where the user's environment is read) shows it.
    main = " ".join(jobctl({**env, "COLUMNS": "200"}, "--help").out.split())
    assert str(tmp_path / "data" / "jobctl") in main
    assert "default: --home/key" in pages["jobctl"]
    assert "default: (wait forever)" in pages["wait"] and "default: (no limit)" in pages["worker"]
    assert "143" in pages["jobctl"] and "130" in pages["worker"] and "143" in pages["worker"]


# -- 7. signals ----------------------------------------------------------------------------------------


def _stop(p: subprocess.Popen[bytes], conn: redis.Redis, sig: signal.Signals, settle: float = 1.5) -> Run:
    # Until the worker is registered in Redis (as `rq info` sees it), it is still starting.
    wait_for(lambda: conn.keys("rq:worker:*"), 120, "the worker to start")
    time.sleep(settle)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    return Run(tuple(str(a) for a in p.args[3:]), p.returncode, out.decode(), err.decode())  # type: ignore[index]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, INTERRUPTED), (signal.SIGTERM, TERMINATED)])
@pytest.mark.parametrize("command", [("worker",), ("worker", "--json"), ("drain", "--max-seconds", "600")])
def test_a_worker_stopped_by_a_signal_exits_with_its_documented_code(sig, code, command, base_env, client, conn, fake):
    # Work for a minute, one slow request at a time: the signal comes mid-drain (drain stops when the
    # queue is empty), and the running request finishes before the worker stops.
    client.submit([triage_task(i) for i in range(200)])
    fake.latency = 0.3
    run = _stop(start({**base_env, "JOBCTL_CONCURRENCY": "1"}, *command), conn, sig)
    assert run.code == code, run
    assert "Traceback" not in run.err, run
    last = run.err.strip().splitlines()[-1]
    if "--json" in command:
        report = json.loads(run.out.strip().splitlines()[-1])
        assert report["stop_reason"] == f"signal {sig.name}", run
        assert json.loads(last)["error"]["exit_code"] == code, run
    else:
        assert f"stopped: signal {sig.name}" in run.out, run
        assert last.startswith("jobctl: error: ") and sig.name in last, run
    # Only the notice of the signal (a log line) may come before the closing line.
    assert len([ln for ln in run.err.strip().splitlines() if "WARNING" not in ln]) == 1, run


def test_sigterm_to_wait_exits_143_with_one_line(base_env, client):
    batch_id = client.submit([triage_task(1)]).batch_id
    p = start(base_env, "wait", batch_id)
    assert p.stderr is not None
    first = p.stderr.readline().decode()
    assert batch_id in first, first
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    run = Run(("wait", batch_id), p.returncode, out.decode(), err.decode())
    assert run.code == TERMINATED and "Traceback" not in run.err, run
    assert run.err.strip().splitlines() == ["jobctl: error: terminated (SIGTERM)"], run


# -- and: wait on a cancelled batch -------------------------------------------------------------------


def test_wait_on_a_cancelled_batch_exits_3(base_env, client):
    batch_id = client.submit([triage_task(1), triage_task(2)]).batch_id
    client.cancel(batch_id)
    for as_json in (False, True):
        run = jobctl(base_env, "wait", batch_id, "--timeout", "30", *(["--json"] if as_json else []))
        assert run.code == 3 and "Traceback" not in run.err, run
        if as_json:
            assert json.loads(run.out.strip().splitlines()[-1])["status"] == "cancelled", run
        else:
            assert run.err.strip().splitlines()[-1] == f"jobctl: {batch_id}: cancelled, 0/2 done, 0 failed, 2 cancelled"
