"""The README's "From Python" and "Installing it" sections, run as written (issue 10): the Python block
is read from README.md itself and run in a fresh interpreter against the test Redis and the fake
model server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import producer
from jobs.config import all_env_vars

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
VENV_BIN = REPO / ".venv" / "bin"
TIMEOUT = 300.0
README_SERVER = "http://127.0.0.1:8000/v1"  # the model server the README's example names


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def python_block() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", section("From Python"), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "the README's From Python section has one ```python block"
    return str(blocks[0])


def test_python_example_runs_as_written(settings, fake, tmp_path):
    code = python_block()
    # Where the README names a model server of its own, the test's fake one serves instead; Redis and the
    # key come from the environment, as the README's comment says they may.
    assert README_SERVER in code
    code = code.replace(README_SERVER, fake.url)
    env = {k: v for k, v in os.environ.items() if k not in set(all_env_vars())}
    env.update(
        {
            "REDIS_URL": settings.redis_url or "",
            "JOBCTL_KEY": settings.key_text or "",
            "JOBCTL_HOME": str(tmp_path / "home"),
        }
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    counts, outcome = p.stdout.splitlines()
    assert counts == "1 0"  # completed, failed: every count is there, 0 or not
    custom_id, sender, parsed = outcome.split(" ", 2)
    assert (custom_id, sender) == ("m1", "ana@example.org")
    assert parsed.startswith("{") and "'category'" in parsed  # outcome.parsed, the validated answer


def test_python_example_errors_are_the_ones_it_catches(settings, tmp_path):
    """The block's `except (InputError, ConflictError)` is what a bad task raises: a located message."""
    from producer import Client, InputError

    client = Client(settings)
    with pytest.raises(InputError, match=r"tasks\[0\].*input"):
        client.submit([{"custom_id": "m1", "kind": "email.triage", "input": {"body": 3}}])
    assert client.queue_depth() == 0


def test_the_named_client_methods_and_exceptions_exist():
    text = section("From Python")
    methods = re.search(r"`Client` has (.*?); each has a docstring", text, re.DOTALL)
    assert methods, "the README lists Client's methods"
    names = re.findall(r"`(\w+)`", methods.group(1))
    assert len(names) >= 10
    for name in names:
        doc = getattr(producer.Client, name).__doc__
        assert doc and doc.strip(), f"Client.{name} has no docstring"
    errors = re.search(r"importable from `producer`\s*\((.*?)\)", text, re.DOTALL)
    assert errors
    for name in [*re.findall(r"`(\w+)`", errors.group(1)), "JobctlError"]:
        cls = getattr(producer, name)
        assert issubclass(cls, producer.JobctlError), name


def test_status_counts_never_raise(client):
    sub = client.submit([{"custom_id": "m1", "kind": "email.triage", "input": {"from": "a@b.example", "body": "x"}}])
    counts = client.status(sub.batch_id).counts
    for key in ("completed", "failed", "queued", "running", "cancelled", "expired", "missing"):
        assert isinstance(counts[key], int)


# -- Installing it ------------------------------------------------------------------------------------


def test_venv_jobctl_works_from_anywhere(tmp_path):
    """`.venv/bin/jobctl works from anywhere`: another folder, a bare environment."""
    p = subprocess.run(
        [str(VENV_BIN / "jobctl"), "--help"],
        cwd=tmp_path,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode == 0, p.stderr
    assert "Exit codes: 0 done" in p.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_line(shell, tmp_path):
    text = section("Installing it for use outside `make`")
    assert f"{shell}_source" in text
    p = subprocess.run(
        [str(VENV_BIN / "jobctl")],
        cwd=tmp_path,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "_JOBCTL_COMPLETE": f"{shell}_source"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode == 0, p.stderr
    assert "_JOBCTL_COMPLETE" in p.stdout and p.stderr == ""
    if shell == "bash":
        # The script it prints is valid bash, and completes the commands.
        check = subprocess.run(["bash", "-n"], input=p.stdout, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        words = subprocess.run(
            [str(VENV_BIN / "jobctl")],
            cwd=tmp_path,
            env={
                "HOME": str(tmp_path),
                "PATH": "/usr/bin:/bin",
                "_JOBCTL_COMPLETE": "bash_complete",
                "COMP_WORDS": "jobctl su",
                "COMP_CWORD": "1",
            },
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert "plain,submit" in words.stdout.splitlines(), words.stdout
