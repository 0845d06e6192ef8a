"""Mail whose attachments come first, or are the whole message, imports like any other mail.

A scanner's mail (a PDF and no text), a bill that is only a PDF, a phone's photo before its text:
each becomes a record whose attachments are name, type and size, and whose body is its text part
or empty. Odd but valid MIME (any Content-Disposition, Content-Type or nesting) never stops the
mailbox it is in.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.config import all_env_vars
from jobs.imports import ImportOptions, Record, detect, read_records
from jobs.imports.mail import BodyBudget, parse, to_input
from jobs.kinds.email import Email
from jobs.parse import Limits, parse_objects
from tests.fake_openai import Reply

HERE = Path(__file__).parent / "fixtures" / "imports" / "attachments"
MAIL = HERE / "mail"
SCAN = "20240122084117.0001.MFC-L2750DW@praxis-weber.example"
BILL = "JA2023.40711832.1705554164@billing.stadtwerke-lindenau.example"
PHOTO = "6D0B2F1E-93A4-4C5B-B7E8-1F2A3C4D5E6F@icloud.example"
COFFEE = "kaffee-0119@example.org"
BUDGET = BodyBudget(ImportOptions())


def records(path: Path) -> list[Record]:
    return list(read_records(path, detect(path), ImportOptions()))


def one(raw: bytes, tmp_path: Path, name: str = "m.eml") -> dict[str, Any]:
    p = tmp_path / name
    p.write_bytes(raw)
    (rec,) = records(p)
    Email.model_validate(rec.input)
    return rec.input


def test_a_scanner_mail_is_its_pdf_and_an_empty_body() -> None:
    (rec,) = records(MAIL / "scan-to-email.eml")
    assert rec.custom_id == SCAN
    assert rec.input["from"] == '"Brother MFC-L2750DW" <scanner@praxis-weber.example>'
    assert rec.input["subject"] == "Scanned from MFC-L2750DW"
    assert rec.input["body"] == ""  # the preamble ("This is a multi-part message") is no part
    assert rec.input["attachments"] == [{"type": "application/pdf", "size": 5933, "name": "Scan_20240122_084117.pdf"}]
    shown = Email.model_validate(rec.input).as_text()
    assert "Attachments: Scan_20240122_084117.pdf (application/pdf, 6 KB)" in shown and "JVBER" not in shown


def test_a_mail_that_is_only_an_attachment() -> None:
    (rec,) = records(MAIL / "attachment-only.eml")
    assert rec.custom_id == BILL
    assert rec.input["subject"] == "Ihre Jahresabrechnung 2023 – Kundennummer 40711832"
    assert rec.input["body"] == ""
    assert rec.input["attachments"] == [
        {"type": "application/pdf", "size": 2134, "name": "Jahresabrechnung_2023_40711832.pdf"}
    ]


def test_an_inline_photo_before_the_text_is_an_attachment_and_the_text_the_body() -> None:
    (rec,) = records(MAIL / "inline-photo-first.eml")
    assert rec.custom_id == PHOTO
    body = rec.input["body"]
    assert body.startswith("Hallo Frau Schneider,\n\nseit gestern ist an der Decke im Bad ein Wasserfleck")
    assert "Er wird größer." in body and body.endswith("Von meinem iPhone gesendet")
    assert rec.input["attachments"] == [{"type": "image/jpeg", "size": 3622, "name": "IMG_4821.jpeg"}]


def test_one_such_mail_never_stops_its_mailbox() -> None:
    eml = {r.custom_id: r.input for p in sorted(MAIL.glob("*.eml")) for r in records(p)}
    mbox = records(HERE / "scans.mbox")
    # An ordinary mail, the three, then another: all five imported, in order.
    assert [r.custom_id for r in mbox] == [COFFEE, SCAN, BILL, PHOTO, "kaffee-0119b@example.org"]
    assert mbox[1].origin == f"{HERE / 'scans.mbox'}:18"
    maildir = {r.custom_id: r.input for r in records(HERE / "Maildir")}  # CRLF line ends
    assert set(maildir) == {COFFEE, SCAN, BILL, PHOTO}
    for cid, fields in eml.items():
        assert fields == maildir[cid] == next(r.input for r in mbox if r.custom_id == cid)
    for kind in ("email.triage", "email.summarize", "email.extract", "email.draft_reply"):
        tasks = [{"custom_id": r.custom_id, "kind": kind, "input": r.input} for r in mbox]
        assert len(parse_objects(tasks, "scans.mbox", Limits())) == 5


def test_jobctl_submits_the_mailbox_and_its_csv_keeps_the_mail_s_own_subject(
    settings: Any, drain: Any, fake: Any, tmp_path: Path
) -> None:
    env: dict[str, str | None] = dict.fromkeys(all_env_vars())
    env.update(
        {"REDIS_URL": settings.redis_url, "JOBCTL_KEY": settings.key_text, "JOBCTL_QUEUE": settings.queue}
        | {"JOBCTL_HOME": str(settings.home), "JOBCTL_LEASE_SECONDS": str(settings.lease_seconds)}
    )

    def jobctl(*args: object) -> Any:
        result = CliRunner().invoke(cli(), [str(a) for a in args], env=env)
        assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.output}"
        return result

    # A hand-written task whose mail has no subject at all (an imported one has subject "").
    no_subject = tmp_path / "tasks.json"
    task = {"from": "ana@example.org", "body": "Call me?"}
    no_subject.write_text(json.dumps([{"custom_id": "nosubj", "kind": "email.draft_reply", "input": task}]))
    mbox = json.loads(jobctl("submit", "--json", "--kind", "email.draft_reply", HERE / "scans.mbox").stdout)
    assert (mbox["total"], mbox["enqueued"]) == (5, 5)
    tasks = json.loads(jobctl("submit", "--json", no_subject).stdout)
    fake.script(*[Reply(json.dumps({"subject": "Re: drafted", "body": "Gern."}))] * 6)
    drain(concurrency=1)
    rows = [
        row
        for b in (mbox, tasks)
        for row in csv.DictReader(io.StringIO(jobctl("results", b["batch_id"], "--format", "csv").stdout))
    ]
    by_id = {r["custom_id"]: r for r in rows}
    assert len(rows) == 6 and {r["status"] for r in rows} == {"completed"}
    assert by_id["nosubj"]["subject"] == "" and by_id[SCAN]["subject"] == "Scanned from MFC-L2750DW"
    assert by_id[SCAN]["from"] == '"Brother MFC-L2750DW" <scanner@praxis-weber.example>'
    assert {r["answer.subject"] for r in rows} == {"Re: drafted"}


def cli() -> Any:
    from producer.cli import cli as group

    return group


@pytest.mark.parametrize("path", sorted(MAIL.glob("*.eml")), ids=lambda p: p.name)
def test_setting_runs_aside_reads_the_same_record(path: Path) -> None:
    raw = path.read_bytes()
    assert to_input(parse(raw), BUDGET) == to_input(parse(raw, runs_aside=False), BUDGET)


def mime(ctype: str, *parts: str, extra: str = "") -> bytes:
    head = f"From: a@example.org\nTo: b@example.org\nSubject: odd\nMIME-Version: 1.0\n{extra}"
    body = "".join(f"--b0\n{p}\n" for p in parts)
    return f'{head}Content-Type: {ctype}; boundary="b0"\n\nPreamble.\n\n{body}--b0--\n'.encode()


TEXT = "Content-Type: text/plain; charset=utf-8\n\nSee you at 10.\n"
PDF_NO_NAME = (
    "Content-Type: application/pdf\nContent-Disposition: attachment\nContent-Transfer-Encoding: base64\n\n"
    "JVBERi0xLjQK\n"
)

# (the message, its body, its attachments as (type, name)).
ODD: dict[str, tuple[bytes, str, list[tuple[str, str | None]]]] = {
    "an attachment without a filename": (
        mime("multipart/mixed", PDF_NO_NAME, TEXT),
        "See you at 10.",
        [("application/pdf", None)],
    ),
    "Apple Mail: text parts marked inline, inside an alternative": (
        mime(
            "multipart/mixed",
            'Content-Type: multipart/alternative; boundary="alt"\n\n--alt\n'
            "Content-Type: text/plain; charset=us-ascii\nContent-Disposition: inline\n\nPlain text.\n"
            "--alt\nContent-Type: text/html; charset=us-ascii\nContent-Disposition: inline\n\n<p>Plain text.</p>\n"
            "--alt--",
            'Content-Type: image/png; name="a.png"\nContent-Disposition: inline; filename="a.png"\n\nPNG',
        ),
        "Plain text.",
        [("image/png", "a.png")],
    ),
    "a disposition in capitals, with odd spacing": (
        mime(
            "multipart/mixed",
            'Content-Type: application/zip\nContent-Disposition:  ATTACHMENT ;filename = "x.zip"\n\nPK',
            TEXT,
        ),
        "See you at 10.",
        [("application/zip", "x.zip")],
    ),
    "an empty disposition, and one of an unknown type": (
        mime(
            "multipart/mixed",
            "Content-Type: text/plain\nContent-Disposition:\n\nFirst.\n",
            "Content-Type: application/octet-stream\nContent-Disposition: form-data; name=upload\n\nxx",
        ),
        "First.",
        [("application/octet-stream", None)],
    ),
    "a text part marked attachment is an attachment, not the body": (
        mime(
            "multipart/mixed",
            'Content-Type: text/plain\nContent-Disposition: attachment; filename="notes.txt"\n\nnotes',
            TEXT,
        ),
        "See you at 10.",
        [("text/plain", "notes.txt")],
    ),
    "an inline image, then an HTML body": (
        mime(
            "multipart/mixed",
            "Content-Type: image/gif\nContent-Disposition: inline\n\nGIF89a",
            "Content-Type: text/html; charset=utf-8\n\n<p>Hi <b>there</b></p>",
        ),
        "Hi there",
        [("image/gif", None)],
    ),
    "parts without any header": (
        mime("multipart/mixed", "\nJust text.", "\nMore text."),
        "Just text.\n\nMore text.",
        [],
    ),
    "a broken RFC 2231 filename and a garbage type": (
        mime(
            "multipart/mixed",
            TEXT,
            "Content-Type: garbage\nContent-Disposition: attachment; filename*=bogus'xx'%ZZ%E9\n\nxx",
            "Content-Type: /\nContent-Disposition: attachment; filename*0*=utf-8''a%C3%A9; filename*1=.txt\n\nxx",
        ),
        "See you at 10.",
        [("text/plain", "%ZZé"), ("/", "aé.txt")],
    ),
    "a forwarded message whose first part is an attachment": (
        mime(
            "multipart/mixed",
            TEXT,
            "Content-Type: message/rfc822\nContent-Disposition: attachment\n\n"
            + mime("multipart/mixed", PDF_NO_NAME).decode().replace("b0", "inner"),
        ),
        "See you at 10.",
        [("message/rfc822", None)],
    ),
    "a forwarded message first, inline": (
        mime("multipart/mixed", "Content-Type: message/rfc822\nContent-Disposition: inline\n\nFrom: c@x\n\nold", TEXT),
        "See you at 10.",
        [("message/rfc822", None)],
    ),
    "a digest (parts default to message/rfc822)": (
        mime("multipart/digest", "\nFrom: c@x\nSubject: one\n\nfirst", "\nFrom: d@x\n\nsecond"),
        "",
        [("message/rfc822", None), ("message/rfc822", None)],
    ),
    "an alternative whose parts are all attachments": (
        mime("multipart/alternative", PDF_NO_NAME, PDF_NO_NAME.replace("pdf", "x-pdf")),
        "",
        [("application/pdf", None), ("application/x-pdf", None)],
    ),
    "a related whose root is an attachment": (
        mime("multipart/related", PDF_NO_NAME, "Content-Type: text/html\nContent-ID: <c1>\n\n<p>hi</p>"),
        "",
        [("application/pdf", None)],
    ),
    "a transfer encoding with a space at the end still decodes, either way": (
        mime(
            "multipart/mixed",
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: BASE64 \n\nR3LDvMOfZSBhdXMgS8O2bG4u\n",
            "Content-Type: text/calendar\nContent-Transfer-Encoding: base64 \n\n" + "QUJDREVGR0hJSktMTU5PUFFS\n" * 200,
        ),
        "Grüße aus Köln.",
        [("text/calendar", None)],
    ),
    "a whole message marked attachment, with no type": (
        b"From: a@example.org\nSubject: odd\nContent-Disposition: attachment; filename=readme.txt\n\nRead me.\n",
        "",
        [("text/plain", "readme.txt")],
    ),
    "a whole message marked inline": (
        b"From: a@example.org\nSubject: odd\nContent-Type: text/plain\nContent-Disposition: inline\n\nHello.\n",
        "Hello.",
        [],
    ),
    "a multipart without a boundary": (
        b"From: a@example.org\nSubject: odd\nContent-Type: multipart/mixed\n\n--x\n\nhello\n--x--\n",
        "",
        [("multipart/mixed", None)],
    ),
}


@pytest.mark.parametrize("case", ODD)
def test_odd_but_valid_mime_imports(case: str, tmp_path: Path) -> None:
    raw, body, attachments = ODD[case]
    rec = one(raw, tmp_path)
    assert rec["body"] == body
    assert [(a["type"], a.get("name")) for a in rec.get("attachments", [])] == attachments
    assert to_input(parse(raw), BUDGET) == to_input(parse(raw, runs_aside=False), BUDGET)


# Generated messages: every header an odd but valid MIME part can carry, nested.
DISPOSITIONS = [
    None,
    "attachment",
    'attachment; filename="Scan 0001.pdf"',
    "inline",
    "inline; filename=IMG_0001.jpeg",
    "ATTACHMENT",
    "",
    ";",
    "attachment;",
    "attachment; filename=",
    'attachment; filename="unterminated',
    "attachment; filename*=UTF-8''na%C3%AFve.txt",
    "attachment; filename*=bogus'xx'%ZZ",
    "attachment; filename*0=a; filename*2=c",
    "form-data; name=file",
    "inline; filename==?utf-8?q?Bild=C3=A4.png?=",
]
TYPES = [
    None,
    "text/plain",
    "text/plain; charset=utf-8",
    "text/plain; charset=x-unknown",
    'text/plain; charset="',
    "text/html; charset=utf-8",
    "text/calendar; method=REQUEST",
    "application/pdf",
    'application/octet-stream; name="data.bin"',
    "image/png",
    "garbage",
    "",
    "text/",
    "/",
    "message/delivery-status",
]
ENCODINGS = [None, "base64", "quoted-printable", "7bit", "8bit", "x-uuencode", "BASE64 "]
BIG = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\n" * 70  # a set-aside run


@st.composite
def part(draw: st.DrawFn, depth: int = 0) -> str:
    shape = draw(st.sampled_from(["leaf", "leaf", "leaf", "multipart", "rfc822"] if depth < 3 else ["leaf"]))
    disposition = draw(st.sampled_from(DISPOSITIONS))
    cd = f"Content-Disposition: {disposition}\n" if disposition is not None else ""
    if shape == "multipart":
        sub = draw(st.sampled_from(["mixed", "alternative", "related", "digest", "signed", "x-odd"]))
        boundary = f"d{depth}x{draw(st.integers(0, 9999))}"
        children = draw(st.lists(part(depth + 1), min_size=0, max_size=4))
        body = "".join(f"--{boundary}\n{c}\n" for c in children)
        return f'Content-Type: multipart/{sub}; boundary="{boundary}"\n{cd}\n{body}--{boundary}--'
    if shape == "rfc822":
        return f"Content-Type: message/rfc822\n{cd}\nFrom: fwd@example.org\nSubject: fwd\n{draw(part(depth + 1))}"
    ctype = draw(st.sampled_from(TYPES))
    cte = draw(st.sampled_from(ENCODINGS))
    headers = (f"Content-Type: {ctype}\n" if ctype is not None else "") + cd
    headers += f"Content-Transfer-Encoding: {cte}\n" if cte is not None else ""
    content = draw(st.sampled_from(["Hello there.", "", "=E9t=C3=A9 =\nsoft", BIG, "JVBERi0xLjQK", "<p>Hi</p>"]))
    return f"{headers}\n{content}"


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(top=part())
def test_generated_odd_mime_always_imports(top: str, tmp_path: Path) -> None:
    raw = f"From: a@example.org\nSubject: generated\nMIME-Version: 1.0\n{top}\n".encode()
    rec = one(raw, tmp_path)
    assert rec["from"] == "a@example.org" and rec["subject"] == "generated"
    assert to_input(parse(raw), BUDGET) == to_input(parse(raw, runs_aside=False), BUDGET)


def test_raw_non_ascii_bytes_in_a_part_type_or_file_name_stay_importable(tmp_path: Path) -> None:
    """Found by the import fuzz: a byte 0x80 in the Content-Type (and 0xff in a file name) reached the
    task as a lone surrogate, which no task field can hold: the import crashed with a ValidationError
    instead of giving a record."""
    raw = (MAIL / "inline-photo-first.eml").read_bytes()
    raw = raw.replace(b"Content-Type: multipart/mixed", b"Content-Type:\x80multipart/mixed", 1)
    raw = raw.replace(b"filename=IMG_4821.jpeg", b"filename=IMG\xff_4821.jpeg")
    fields = one(raw, tmp_path)  # validates the record as a task's input
    shown = [str(v) for a in fields.get("attachments", []) for v in a.values()]
    assert shown and not any("\ud800" <= ch <= "\udfff" for text in shown for ch in text)
