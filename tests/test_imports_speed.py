"""The shortcuts that make large mail imports fast give the same records as the plain way.

Base64 runs set aside before parsing (jobs.imports.base64_runs) must not change a body, an
attachment's size or the detection of a cut-off file; worker processes (jobs.imports.pool) must
give the same records, ids and errors, in the same order, as one process.
"""

from __future__ import annotations

import base64
import os
import sys
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest

from bench.import_bench import make_mbox
from jobs.imports import ImportOptions, detect, pool, read_records
from jobs.imports import mail as mail_module
from jobs.imports.base64_runs import TOKEN
from jobs.imports.mail import BodyBudget, parse, to_input
from jobs.parse import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "imports"
BUDGET = BodyBudget(ImportOptions())


def b64_lines(data: bytes, width: int = 76) -> str:
    text = base64.b64encode(data).decode()
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


def both_ways(raw: bytes) -> tuple[Any, Any, bool]:
    """The record read with runs set aside and without, and whether any run was set aside."""
    fast = parse(raw)
    slow = parse(raw, runs_aside=False)
    return to_input(fast, BUDGET), to_input(slow, BUDGET), getattr(fast, "set_aside", None) is not None


def message(body_part: str, *parts: str, boundary: str = "b1") -> bytes:
    head = (
        "From: Ana <ana@example.org>\nTo: me@example.net\nSubject: test\nMessage-ID: <m@example.org>\n"
        f'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{boundary}"\n\n'
    )
    body = "".join(f"--{boundary}\n{p}\n" for p in (body_part, *parts))
    return (head + body + f"--{boundary}--\n").encode()


TEXT = "Content-Type: text/plain; charset=utf-8\n\nHello, see the attachment.\n"
PDF = bytes(range(256)) * 60


def attachment(data: bytes = PDF, width: int = 76, name: str = "a.pdf", ctype: str = "application/pdf") -> str:
    return (
        f'Content-Type: {ctype}; name="{name}"\nContent-Disposition: attachment; filename="{name}"\n'
        f"Content-Transfer-Encoding: base64\n\n{b64_lines(data, width)}\n"
    )


CASES = {
    "pdf attachment": message(TEXT, attachment()),
    "72-character lines": message(TEXT, attachment(width=72)),
    "two attachments": message(TEXT, attachment(), attachment(PDF[:5000], name="b.bin")),
    "data a multiple of 57 bytes (no short last line)": message(TEXT, attachment(PDF[: 57 * 100])),
    "base64 text body": message(
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        + b64_lines(("Grüße aus Köln, Absatz. " * 400).encode())
    ),
    "base64 html body": message(
        "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        + b64_lines(("<p>Réunion lundi</p>" * 300).encode()),
        attachment(),
    ),
    "a body that quotes base64 headers": message(
        "Content-Type: text/plain\n\nHere is what the server sent:\nContent-Transfer-Encoding: base64\n\n"
        + b64_lines(PDF[:3000], 64)
        + "\n\nthat was it.\n"
    ),
    "a line of another width inside": message(
        TEXT, attachment().replace(b64_lines(PDF)[:77], b64_lines(PDF)[:70] + "\n" + b64_lines(PDF)[70:77])
    ),
    "a stray character inside": message(TEXT, attachment().replace(b64_lines(PDF)[800:801], "*", 1)),
    "cut off mid-run": message(TEXT, attachment())[:9000],
    "cut off mid-line": message(TEXT, attachment())[:9030] + b"\n",
    "crlf line ends": message(TEXT, attachment()).replace(b"\n", b"\r\n"),
    "the token itself in a body": message(
        "Content-Type: text/plain\n\nJOBCTLSETASIDE000000 is what it says\n", attachment()
    ),
}


@pytest.mark.parametrize("raw", CASES.values(), ids=CASES.keys())
def test_setting_runs_aside_reads_the_same_record(raw: bytes) -> None:
    fast, slow, _ = both_ways(raw)
    assert fast == slow


def test_runs_are_set_aside_where_they_open_a_base64_part() -> None:
    assert both_ways(CASES["pdf attachment"])[2]
    assert both_ways(CASES["base64 text body"])[2]
    assert not both_ways(CASES["a body that quotes base64 headers"])[2]  # parsed again, whole
    assert not both_ways(CASES["the token itself in a body"])[2]
    (_cid, fields), _, _ = both_ways(CASES["pdf attachment"])
    assert fields["attachments"] == [{"type": "application/pdf", "size": len(PDF), "name": "a.pdf"}]
    (_cid, fields), _, _ = both_ways(CASES["base64 text body"])
    assert fields["body"].startswith("Grüße aus Köln") and len(fields["body"]) > 9000


def test_a_forwarded_message_keeps_its_size() -> None:
    inner = EmailMessage()
    inner["From"], inner["Subject"] = "b@example.org", "fwd"
    inner.set_content("forwarded\n")
    inner.add_attachment(PDF, maintype="application", subtype="pdf", filename="in.pdf")
    outer = EmailMessage()
    outer["From"], outer["Subject"], outer["Message-ID"] = "a@example.org", "Fwd", "<o@example.org>"
    outer.set_content("see below\n")
    outer.add_attachment(inner)
    fast, slow, aside = both_ways(outer.as_bytes(policy=default_policy))
    assert aside and fast == slow and fast[1]["attachments"][0]["type"] == "message/rfc822"


def test_fixtures_and_a_generated_mailbox_read_the_same(tmp_path: Path) -> None:
    box = tmp_path / "gen.mbox"
    make_mbox(box, 60)
    for path in [box, FIXTURES / "inbox.mbox", *sorted((FIXTURES / "mail").glob("*.eml"))]:
        raws = path.read_bytes().split(b"\nFrom ") if path.suffix == ".mbox" else [path.read_bytes()]
        for raw in raws:
            body = raw.split(b"\n", 1)[1] if raw.startswith(b"From ") or path.suffix == ".mbox" else raw
            fast, slow, _ = both_ways(body)
            assert fast == slow, path


def test_a_truncated_attachment_is_still_noticed(tmp_path: Path) -> None:
    raw = message(TEXT, attachment())
    cut = raw[: raw.index(b"--b1--") - 200]  # base64 cut mid-group, no closing boundary
    box = tmp_path / "cut.mbox"
    box.write_bytes(b"From a@example.org Mon Jan  1 00:00:00 2024\n" + cut + b"\n")
    with pytest.raises(InputError, match="the file looks cut off"):
        list(read_records(box, "mbox", ImportOptions()))


# -- worker processes ---------------------------------------------------------------------------------

needs_pool = pytest.mark.skipif(
    sys.platform != "linux" or len(os.sched_getaffinity(0)) < 2, reason="worker processes: Linux with 2+ cores"
)


def _read(path: Path) -> list[tuple[str, Any, str]]:
    return [(r.custom_id, r.input, r.origin) for r in read_records(path, detect(path), ImportOptions())]


@needs_pool
def test_worker_processes_give_the_same_records_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = tmp_path / "gen.mbox"
    make_mbox(box, 500)
    maildir = FIXTURES / "Maildir"
    alone = {p: _read(p) for p in (box, maildir, FIXTURES / "mail")}
    monkeypatch.setattr(pool, "MIN_BYTES", 0)
    monkeypatch.setattr("jobs.imports.mailboxes.CHUNK_MESSAGES", 7)  # many chunks, out of step with workers
    assert pool.workers_for(1) >= 2
    for path, records in alone.items():
        assert _read(path) == records, path


@needs_pool
def test_worker_processes_report_the_same_located_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = tmp_path / "gen.mbox"
    make_mbox(box, 40)
    raw = box.read_bytes()
    cut = raw[: len(raw) - 3000].rstrip(b"\n")  # the last message cut short
    box.write_bytes(cut)
    with pytest.raises(InputError) as alone:
        _read(box)
    monkeypatch.setattr(pool, "MIN_BYTES", 0)
    monkeypatch.setattr("jobs.imports.mailboxes.CHUNK_MESSAGES", 3)
    with pytest.raises(InputError) as pooled:
        _read(box)
    assert str(pooled.value) == str(alone.value) and "the file looks cut off" in str(pooled.value)


def test_small_inputs_and_threaded_processes_read_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pool.workers_for(pool.MIN_BYTES - 1) == 0
    monkeypatch.setattr("threading.active_count", lambda: 2)
    assert pool.workers_for(10 * pool.MIN_BYTES) == 0


def test_the_set_aside_token_is_base64_that_decodes_on_its_own() -> None:
    token = TOKEN + "000000"
    assert len(token) % 4 == 0 and base64.b64decode(token, validate=True)


@pytest.mark.parametrize(
    "value",
    [
        "a\n b",
        "Mon, 01 Jan 2024\n\t10:00 +0100",
        "<x@y>",
        " a  b ",
        "a\x0cb",
        "a\rb",
        "",
        "x\x7fy",
        "Ana <a@b>,\n Bo <b@c>",
    ],
)
def test_plain_headers_take_a_short_way_to_the_same_text(value: str) -> None:
    class Raw:
        def raw_items(self) -> list[tuple[str, str]]:
            return [("subject", value)]

    assert mail_module._Headers(Raw(), {}).text("subject") == mail_module._header_text("subject", value)  # type: ignore[arg-type]
