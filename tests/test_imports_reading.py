"""What imports refuse before reading: devices, FIFOs, binaries, empty folders, files over the limit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jobs.imports import FORMATS, ImportOptions, detect, read_records
from jobs.parse import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "imports"


def refused(path: Path, fmt: str | None = None, **opts: object) -> str:
    with pytest.raises(InputError) as e:
        list(read_records(path, fmt or detect(path), ImportOptions(**opts)))  # type: ignore[arg-type]
    return str(e.value)


def test_task_files_are_left_to_the_task_parser(tmp_path: Path) -> None:
    task = {"custom_id": "m1", "kind": "email.triage", "input": {"from": "a@example.org", "body": "hi"}}
    batch = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}
    for name, text in [
        ("a.json", json.dumps([task])),
        ("b.json", json.dumps({"tasks": [task]})),
        ("c.jsonl", json.dumps(task) + "\n" + json.dumps(task)),
        ("d.jsonl", "\ufeff" + json.dumps(batch) + "\n"),
        ("e.json", ""),
        ("f.json", "not json at all"),
    ]:
        p = tmp_path / name
        p.write_text(text)
        assert detect(p) == "tasks", name
    assert set(FORMATS) == {"tasks", "mbox", "maildir", "eml-dir", "eml", "csv", "ofx"}


def test_a_binary_file_is_refused(tmp_path: Path) -> None:
    png = tmp_path / "scan.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    with pytest.raises(InputError, match="looks binary"):
        detect(png)
    assert "looks binary" in refused(png, "csv")
    assert "looks binary" in refused(png, "eml")


def test_unknown_text_is_refused_with_what_is_read(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("Remember the milk.\n")
    with pytest.raises(InputError, match="cannot tell what this file is; jobctl reads JSON"):
        detect(p)


@pytest.mark.timeout(20)
def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "inbox.mbox"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"is a named pipe \(FIFO\), not a regular file"):
        detect(fifo)
    for fmt in ("mbox", "eml", "csv", "ofx"):
        assert "named pipe" in refused(fifo, fmt)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_devices_are_refused_unread(device: str) -> None:
    path = Path(device)
    with pytest.raises(InputError, match="is a character device, not a regular file"):
        detect(path)
    for fmt in ("mbox", "csv", "ofx", "eml"):
        assert "character device" in refused(path, fmt)


@pytest.mark.timeout(20)
def test_a_fifo_or_device_inside_a_mail_folder_is_refused(tmp_path: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (tmp_path / "md" / sub).mkdir(parents=True)
    os.mkfifo(tmp_path / "md" / "new" / "1705.M1.host")
    assert "named pipe" in refused(tmp_path / "md")
    (tmp_path / "emls").mkdir()
    os.symlink("/dev/zero", tmp_path / "emls" / "a.eml")
    assert "character device" in refused(tmp_path / "emls")


def test_an_empty_folder_and_a_folder_without_mail_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="the folder is empty"):
        detect(tmp_path / "empty")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(InputError, match=r"holds no \.eml files and is not a Maildir"):
        detect(tmp_path / "photos")
    for sub in ("cur", "new", "tmp"):
        (tmp_path / "md" / sub).mkdir(parents=True)
    assert "the Maildir has no messages" in refused(tmp_path / "md")


def test_a_file_in_a_mail_folder_that_is_no_message_is_located(tmp_path: Path) -> None:
    (tmp_path / "emls").mkdir()
    (tmp_path / "emls" / "a.eml").write_bytes((FIXTURES / "mail" / "reply-thread.eml").read_bytes())
    (tmp_path / "emls" / "b.eml").write_text("Just some notes, not a message.\n")
    msg = refused(tmp_path / "emls")
    assert f"{tmp_path / 'emls'}/b.eml: does not start with mail headers" in msg


@pytest.mark.parametrize(
    "path", ["inbox.mbox", "mail/invoice-attachments.eml", "csv/us-checking-2024-01.csv", "checking-ofx1.qfx"]
)
def test_files_over_the_limit_are_refused_before_reading(path: str) -> None:
    p = FIXTURES / path
    msg = refused(p, max_file_bytes=500)
    assert "over the 0 MiB limit" in msg or "limit" in msg
    assert "JOBCTL_MAX_FILE_BYTES" in msg


def test_folders_count_all_their_messages_against_the_limit() -> None:
    size = sum(p.stat().st_size for p in (FIXTURES / "Maildir").rglob("*") if p.is_file())
    assert "the folder's messages together" in refused(FIXTURES / "Maildir", max_file_bytes=size - 1)
    assert len(list(read_records(FIXTURES / "Maildir", "maildir", ImportOptions(max_file_bytes=size)))) == 3


def test_a_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or folder"):
        detect(tmp_path / "nope.mbox")


def test_a_bank_file_as_a_mail_kind_is_refused() -> None:
    p = FIXTURES / "csv" / "us-checking-2024-01.csv"
    assert "--kind email.triage does not take bank transactions" in refused(p, kind="email.triage")


def test_detect_refuses_a_file_over_the_limit_before_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "export.csv"
    with open(big, "wb") as f:
        f.truncate(100 * 1024 * 1024)  # sparse: nothing to read, and nothing is
    with pytest.raises(InputError, match="over the 64 MiB limit"):
        detect(big, max_file_bytes=64 * 1024 * 1024)
    assert detect(FIXTURES / "checking-ofx1.qfx", max_file_bytes=64 * 1024 * 1024) == "ofx"
