"""Mail imports: mbox, Maildir, .eml folders and single .eml files become email records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.imports import EMAIL, ImportOptions, Record, detect, read_records
from jobs.kinds import KINDS
from jobs.kinds.base import estimate_tokens
from jobs.kinds.email import Email
from jobs.parse import InputError, Limits, parse_objects

FIXTURES = Path(__file__).parent / "fixtures" / "imports"
MAIL = FIXTURES / "mail"
AGENDA = "20240115093012.4F2A1@atelier-lumen.fr"
ORDER = "b7c1e0a2-58213@buecherstube-freiburg.example"
INVOICE = "KH.2024-0117.1705486503@koehler-haustechnik.example"
REPLY = "c0ffee42-1b7d-4e8a-9f00-5a1d2e3f4a5b@example.net"


def records(path: Path, **opts: object) -> list[Record]:
    return list(read_records(path, detect(path), ImportOptions(**opts)))  # type: ignore[arg-type]


def by_id(path: Path) -> dict[str, Record]:
    return {r.custom_id: r for r in records(path)}


def test_formats_are_told_from_content() -> None:
    assert detect(FIXTURES / "inbox.mbox") == "mbox"
    assert detect(FIXTURES / "Maildir") == "maildir"
    assert detect(MAIL) == "eml-dir"
    assert detect(MAIL / "reply-thread.eml") == "eml"


def test_the_same_message_via_mbox_maildir_and_eml_is_one_record() -> None:
    mbox = by_id(FIXTURES / "inbox.mbox")
    maildir = by_id(FIXTURES / "Maildir")  # CRLF line ends, flags in the names
    folder = by_id(MAIL)
    assert set(mbox) == set(folder) == {AGENDA, ORDER, INVOICE, REPLY}
    assert set(maildir) == {AGENDA, INVOICE, REPLY}
    for cid, rec in maildir.items():
        assert rec.input == mbox[cid].input == folder[cid].input
    for cid, rec in folder.items():
        single = records(Path(rec.origin))
        assert [(r.custom_id, r.input) for r in single] == [(cid, mbox[cid].input)]
        assert rec.family == EMAIL


def test_origins_say_where_each_message_is() -> None:
    mbox = by_id(FIXTURES / "inbox.mbox")
    assert mbox[AGENDA].origin == f"{FIXTURES / 'inbox.mbox'}:1"
    assert mbox[ORDER].origin == f"{FIXTURES / 'inbox.mbox'}:56"
    assert by_id(FIXTURES / "Maildir")[REPLY].origin == f"{FIXTURES / 'Maildir'}/cur/1705316680.M77P2231.mailhost:2,S"


def test_multipart_alternative_keeps_the_text_part_and_its_headers() -> None:
    rec = by_id(FIXTURES / "inbox.mbox")[AGENDA].input
    assert rec["from"] == "Zoé Martin <zoe.martin@atelier-lumen.fr>"
    assert rec["to"] == "Inès García <ines.garcia@example.net>, Paul Roche <paul.roche@atelier-lumen.fr>"
    assert rec["subject"] == "Réunion de lundi – ordre du jour"
    assert rec["date"] == "2024-01-15T09:30:12+01:00"
    assert rec["message_id"] == AGENDA
    assert rec["body"].startswith("Bonjour à tous,\n\nVoici l'ordre du jour")
    assert "<" not in rec["body"] and "Devis de l'imprimeur pour le catalogue 2024 : 3 480 € HT" in rec["body"]
    # The mbox wrote this line as ">From the minutes": mboxrd unescaping gives the message back.
    assert "\nFrom the minutes of last week" in rec["body"]
    assert "attachments" not in rec and "truncated" not in rec


def test_html_only_mail_becomes_plain_text() -> None:
    rec = by_id(MAIL)[ORDER].input
    assert rec["from"] == "Bücherstube am Markt <bestellung@buecherstube-freiburg.example>"
    assert rec["subject"] == "Ihre Bestellung Nr. 58213 bei der Bücherstube"
    body = rec["body"]
    assert body.startswith("Vielen Dank für Ihre Bestellung!")
    assert "Hallo Frau Weiß," in body and "Fontane: Der Stechlin (Taschenbuch) 14,00 EUR" in body
    assert "<" not in body and "track.gif" not in body and "padding" not in body


def test_attachments_are_name_type_and_size_never_content() -> None:
    rec = by_id(MAIL)[INVOICE].input
    assert rec["attachments"] == [
        {"type": "application/pdf", "size": 2241, "name": "Rechnung 2024-0117 Köhler.pdf"},
        {"type": "image/jpeg", "size": 3022, "name": "brenner.jpg"},
    ]
    text = json.dumps(rec)
    assert "JVBERi0" not in text and "%PDF" not in text  # the PDF, base64 or decoded
    # cp1252 everywhere: RFC 2047 headers, and an 8-bit body with a euro sign.
    assert rec["from"] == "Jürgen Köhler <j.koehler@koehler-haustechnik.example>"
    assert rec["cc"] == "Buchhaltung Köhler <buchhaltung@koehler-haustechnik.example>"
    assert rec["subject"] == "Rechnung Nr. 2024-0117 – Fälligkeit 31.01."
    assert "über 1.150,00 € für die Reparatur" in rec["body"] and "Grüßen" in rec["body"]
    shown = Email.model_validate(rec).as_text()
    assert "Attachments: Rechnung 2024-0117 Köhler.pdf (application/pdf, 2 KB); brenner.jpg (image/jpeg, 3 KB)" in shown


def test_a_reply_keeps_its_thread() -> None:
    rec = by_id(MAIL)[REPLY].input
    assert rec["in_reply_to"] == AGENDA
    assert rec["cc"] == "Paul Roche <paul.roche@atelier-lumen.fr>"
    assert rec["from"] == "Inès García <ines.garcia@example.net>"  # ISO-8859-1 encoded words
    # format=flowed: a line ending in a space goes on on the next line.
    assert "the printer's quote looks high to me, we paid 2 900 € last year." in rec["body"]
    assert "(A reply to an earlier message in the thread.)" in Email.model_validate(rec).as_text()


def _eml(tmp_path: Path, name: str, raw: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(raw)
    return p


def test_raw_8bit_headers_are_decoded_not_replaced(tmp_path: Path) -> None:
    raw = (
        b"From: Andr\xe9 Dupont <andre@example.fr>\nTo: b@example.org\nSubject: Caf\xe9 cr\xe8me demain ?\n"
        b"Date: Tue, 9 Jan 2024 10:00:00 +0100\n\nOn se voit \xe0 10h.\n"
    )
    (rec,) = records(_eml(tmp_path, "old.eml", raw))
    assert rec.input["subject"] == "Café crème demain ?"
    assert rec.input["from"] == "André Dupont <andre@example.fr>"
    assert rec.input["body"] == "On se voit à 10h."


def test_without_message_id_the_id_is_a_hash_of_the_message(tmp_path: Path) -> None:
    raw = b"From: ana@example.org\nSubject: Friday?\nDate: Fri, 5 Jan 2024 08:00:00 +0000\n\nDentist at 4?\n"
    (a,) = records(_eml(tmp_path, "a.eml", raw))
    (b,) = records(_eml(tmp_path, "b.eml", raw.replace(b"\n", b"\r\n")))
    mbox = _eml(tmp_path, "box.mbox", b"From ana@example.org Fri Jan  5 08:00:00 2024\nStatus: RO\n" + raw + b"\n")
    (c,) = records(mbox)
    assert a.custom_id.startswith("mail-") and a.custom_id == b.custom_id == c.custom_id
    assert a.input == b.input == c.input
    (d,) = records(_eml(tmp_path, "d.eml", raw.replace(b"4?", b"5?")))
    assert d.custom_id != a.custom_id


def test_a_message_twice_in_one_mailbox_is_one_record(tmp_path: Path) -> None:
    one = (MAIL / "reply-thread.eml").read_bytes()
    box = b"".join(b"From x@example.net Mon Jan 15 12:04:40 2024\n" + one + b"\n" for _ in range(2))
    assert [r.custom_id for r in records(_eml(tmp_path, "dup.mbox", box))] == [REPLY]


def test_a_long_body_is_cut_at_a_paragraph_and_says_so(tmp_path: Path) -> None:
    paragraphs = [
        f"Paragraph {i}: " + "the quarterly figures look fine, see the attached table. " * 8 for i in range(400)
    ]
    raw = (
        b"From: ana@example.org\nSubject: Long report\nMessage-ID: <long@example.org>\n\n"
        + "\n\n".join(paragraphs).encode()
    )
    path = _eml(tmp_path, "long.eml", raw)
    for kind, options in ((None, None), ("email.extract", None), ("email.triage", {"max_tokens": 1500})):
        (rec,) = records(path, context_tokens=4096, kind=kind, options=options)
        assert rec.input["truncated"] is True
        body = rec.input["body"]
        kept, note = body.rsplit("\n\n", 1)
        assert note.startswith("[jobctl: the message was cut here to fit the model's context;")
        assert kept.endswith("see the attached table.")  # a whole paragraph, then the note
        k = KINDS[kind or "email.triage"]
        opts = k.options_model.model_validate(options or {})
        request = k.request(Email.model_validate(rec.input), opts, "json_schema")
        assert estimate_tokens(request) + request["max_tokens"] <= 4096
    (whole,) = records(path, context_tokens=200_000)
    assert "truncated" not in whole.input and whole.input["body"].endswith("see the attached table.")


def test_records_are_valid_tasks_of_the_default_and_other_email_kinds() -> None:
    recs = records(FIXTURES / "inbox.mbox")
    for kind in ("email.triage", "email.summarize", "email.extract", "email.draft_reply"):
        tasks = [{"custom_id": r.custom_id, "kind": kind, "input": r.input} for r in recs]
        assert len(parse_objects(tasks, "inbox.mbox", Limits())) == 4


def test_a_kind_that_takes_no_mail_is_refused() -> None:
    with pytest.raises(InputError, match=r"--kind transaction\.categorize does not take mail"):
        records(FIXTURES / "inbox.mbox", kind="transaction.categorize")


def test_a_truncated_mbox_is_a_located_error_with_no_records() -> None:
    path = FIXTURES / "truncated.mbox"
    with pytest.raises(InputError) as e:
        list(read_records(path, detect(path), ImportOptions()))
    (problem,) = e.value.problems
    assert problem.where == f"{path}:87: message 3"
    assert "the file looks cut off" in problem.message


def test_errors_never_quote_the_mail(tmp_path: Path) -> None:
    box = _eml(tmp_path, "bad.mbox", b"Secret plans for the merger\nFrom x Mon Jan 1 00:00:00 2024\nSubject: a\n\nb\n")
    with pytest.raises(InputError) as e:
        list(read_records(box, "mbox", ImportOptions()))
    assert "Secret" not in str(e.value) and f"{box}:1" in str(e.value)


def test_related_images_are_not_attachments_but_forwards_and_list_footers_count(tmp_path: Path) -> None:
    raw = b"""From: news@shop.example
To: me@example.net
Subject: Spring sale
Message-ID: <sale-1@shop.example>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

--outer
Content-Type: multipart/related; boundary="rel"

--rel
Content-Type: text/html; charset=utf-8

<p>All boots <b>-30%</b></p><img src="cid:logo">
--rel
Content-Type: image/png
Content-ID: <logo>
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--rel--
--outer
Content-Type: message/rfc822

From: boss@example.net
Subject: FYI

forwarded text
--outer
Content-Type: text/plain; charset=us-ascii

Unsubscribe: https://lists.example/u
--outer--
"""
    (rec,) = records(_eml(tmp_path, "sale.eml", raw))
    assert rec.input["body"] == "All boots -30%\n\nUnsubscribe: https://lists.example/u"
    assert rec.input["attachments"] == [{"type": "message/rfc822", "size": 51}]
    assert "forwarded text" not in rec.input["body"]


def test_unknown_and_wrong_charsets_still_decode(tmp_path: Path) -> None:
    raw = (
        b"From: =?x-unknown?q?Jos=E9?= <jose@example.es>\nSubject: =?utf-8?q?Caf=C3=A9?=\n"
        b"Content-Type: text/plain; charset=iso-8859-1\n\nPrecio: 5 \x80 \x96 total\n"
    )
    (rec,) = records(_eml(tmp_path, "cs.eml", raw))
    assert rec.input["subject"] == "Café"
    assert "jose@example.es" in rec.input["from"]
    assert rec.input["body"] == "Precio: 5 € – total"  # declared Latin-1, written as Windows-1252
