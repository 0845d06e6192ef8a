"""Privacy of imports: the plaintext-marker test of tests/test_privacy.py, for mail and bank exports.

Marker strings go everywhere an import reads private text: mail subjects, senders, Message-IDs,
bodies (plain, HTML, format=flowed), attachment names and contents, forwarded messages, inline
images; CSV descriptions, payees, IBANs and preamble lines; OFX names, memos, FITIDs and account
numbers. The files are submitted through `jobctl -vv` and in-process at DEBUG, drained with the
fake server and read back. Then every Redis key and value is scanned (zlib and base64 unwrapped)
and so are the logs: no marker anywhere. What an import must never keep (attachment contents, a
forwarded message's text, a whole account number) is also absent from the decrypted tasks, the
results' inputs and the requests the model server received.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.parse import InputError
from jobs.store import Batch, codec, keys, sealed
from producer.intake import Intake, read_paths
from tests.conftest import RedisProcess
from tests.test_privacy import Scan

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "imports"
TAG = uuid.uuid4().hex[:6].upper()
# Text the model may see (and the results show the owner): kept, encrypted.
SHOWN = [
    "subject",
    "fromname",
    "msgid",
    "body",
    "html",
    "flowed",
    "attname",
    "attname2047",
    "footer",
    "mdsubject",
    "mdbody",
    "emlsubject",
    "emlbody",
    "csvdesc",
    "csvpayee",
    "ofxname",
    "ofxmemo",
    "ofxfitid",
]
# Text no import keeps, not even encrypted: what attachments hold, forwarded mail, inline images,
# the bank's preamble and counterparty IBANs, the whole account number.
NEVER = [
    "attpdf",
    "atttext",
    "attcsv",
    "inline",
    "fwdsubject",
    "fwdbody",
    "preamble",
    "iban",
    "acctid",
    "style",
]
M = {p: f"PRIVIMP{p.upper()}{TAG}" for p in SHOWN + NEVER}


@pytest.fixture(scope="module")
def redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this module's own: the scan must see this module's keys only."""
    proc = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    try:
        yield proc.url
    finally:
        proc.stop()


# -- the private files -----------------------------------------------------------------------------------


def _headers(msg: EmailMessage, subject: str, msgid: str, sender: str = "") -> None:
    msg["From"] = sender or f"Dr. {M['fromname']} Vogel <praxis@example.org>"
    msg["To"] = "me@example.net"
    msg["Subject"] = subject
    msg["Date"] = "Wed, 17 Jan 2024 10:15:03 +0100"
    msg["Message-ID"] = f"<{msgid}@example.org>"


def _with_attachments() -> bytes:
    msg = EmailMessage()
    # Non-ASCII, so the subject is RFC 2047-encoded in the file.
    _headers(msg, f"Befund {M['subject']} – vertraulich", f"{M['msgid']}.1")
    msg.set_content(f"Guten Tag,\n\nanbei der Befund {M['body']}.\n")
    msg.add_attachment(
        b"%PDF-1.4\n" + f"({M['attpdf']}) Tj\n".encode() + b"\x00\x01" * 200 + b"%%EOF\n",
        maintype="application",
        subtype="pdf",
        filename=f"Befund-{M['attname']}.pdf",
    )
    msg.add_attachment(f"notes {M['atttext']}\n", subtype="plain", filename="notes.txt")
    msg.add_attachment(
        f"date,amount\n2024-01-02,{M['attcsv']}\n".encode(),
        maintype="text",
        subtype="csv",
        filename=f"Röntgen-{M['attname2047']}.csv",  # non-ASCII: RFC 2231 in the file
    )
    fwd = EmailMessage()
    _headers(fwd, f"Fwd {M['fwdsubject']}", "fwd.1", "someone@example.org")
    fwd.set_content(f"forwarded text {M['fwdbody']}\n")
    msg.add_attachment(fwd)
    return bytes(msg.as_bytes(policy=default_policy))


def _html_with_inline_image() -> bytes:
    msg = EmailMessage()
    _headers(msg, f"Newsletter {M['html']}", f"{M['msgid']}.2")
    msg.set_content(
        f"<html><head><style>p {{ color: red }} /* {M['style']} */</style></head>"
        f'<body><p>Hello {M["html"]}</p><img src="cid:logo"></body></html>',
        subtype="html",
    )
    msg.add_related(f"GIF89a {M['inline']}".encode(), maintype="image", subtype="gif", cid="<logo>")
    return bytes(msg.as_bytes(policy=default_policy))


def _flowed_with_footer() -> bytes:
    raw = (
        f"From: list@example.org\nTo: me@example.net\nSubject: digest\nMessage-ID: <{M['msgid']}.3@example.org>\n"
        "Date: Wed, 17 Jan 2024 10:15:03 +0100\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b"\n\n'
        "--b\nContent-Type: text/plain; charset=utf-8; format=flowed\n\n"
        f"a flowed line that goes on \nand {M['flowed']}\n"
        f"--b\nContent-Type: text/plain; charset=utf-8\n\nfooter {M['footer']}\n--b--\n"
    )
    return raw.encode()


def write_mail(d: Path) -> list[Path]:
    mbox = d / "inbox.mbox"
    with mbox.open("wb") as f:
        for raw in (_with_attachments(), _html_with_inline_image(), _flowed_with_footer()):
            f.write(b"From praxis@example.org Wed Jan 17 10:15:03 2024\n" + raw.replace(b"\r\n", b"\n") + b"\n")
    maildir = d / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    md = EmailMessage()
    _headers(md, f"Termin {M['mdsubject']}", f"{M['msgid']}.4")
    md.set_content(f"Maildir body {M['mdbody']}\n")
    md.add_attachment(f"more {M['atttext']}".encode(), maintype="application", subtype="octet-stream", filename="x.bin")
    (maildir / "cur" / "1705486503.M8P990.mailhost:2,S").write_bytes(md.as_bytes(policy=default_policy))
    emls = d / "eml"
    emls.mkdir()
    eml = EmailMessage()
    _headers(eml, f"Rechnung {M['emlsubject']}", f"{M['msgid']}.5")
    eml.set_content(f"eml body {M['emlbody']}\n")
    eml.add_attachment(
        base64.b64encode(M["attpdf"].encode()), maintype="application", subtype="pdf", filename="scan.pdf"
    )
    (emls / "rechnung.eml").write_bytes(eml.as_bytes(policy=default_policy))
    return [mbox, maildir, emls]


def write_bank(d: Path) -> list[Path]:
    bank = d / "bank.csv"
    bank.write_bytes(
        (
            f'"Kontonummer:";"DE44 1203 0000 {M["preamble"]} / Girokonto";\r\n\r\n'
            '"Buchungstag";"Wertstellung";"Auftraggeber / Begünstigter";"Verwendungszweck";"Kontonummer";'
            '"Soll (EUR)";"Haben (EUR)";\r\n'
            f'"02.01.2024";"02.01.2024";"{M["csvpayee"]} GmbH";"Abschlag {M["csvdesc"]}";"DE12{M["iban"]}";'
            '"-86,00";"";\r\n'
            '"03.01.2024";"03.01.2024";"REWE";"Kartenzahlung";"";"-12,50";"";\r\n'
        ).encode("cp1252")
    )
    ofx = d / "card.ofx"
    text = (FIXTURES / "creditcard-ofx2.ofx").read_text()
    text = text.replace("<ACCTID>5412750012348812</ACCTID>", f"<ACCTID>{M['acctid']}8812</ACCTID>")
    text = text.replace("<NAME>SNCF Connect</NAME>", f"<NAME>{M['ofxname']}</NAME>")
    text = text.replace("<MEMO>Paris - Lyon 12/02</MEMO>", f"<MEMO>{M['ofxmemo']}</MEMO>")
    text = text.replace("<FITID>CC2024020600021904</FITID>", f"<FITID>{M['ofxfitid']}</FITID>")
    ofx.write_text(text)
    return [bank, ofx]


# -- helpers ---------------------------------------------------------------------------------------------------


def jobctl(env: dict[str, str], *args: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "producer.cli", "-vv", *map(str, args)],
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )


def no_markers(text: str, where: str, names: list[str] | None = None) -> None:
    found = [p for p in names or [*SHOWN, *NEVER] if M[p].lower() in text.lower()]
    assert not found, f"{where} holds the markers of {found}"


def sealed_tasks(conn: redis.Redis, cipher: Any, batch_id: str) -> list[str]:
    """Each task of the batch as stored, decrypted: the JSON a worker reads."""
    out = []
    for m in Batch(batch_id, conn, cipher).members():
        row: list[Any] = conn.hmget(keys.job(m.job_id), "data", "jobctl_batch", "jobctl_fp")
        data, owner, fp = row
        task = sealed.open_payload(cipher, m.job_id, owner.decode(), fp.decode(), codec.decode_data(data))
        out.append(task.to_json().decode())
    return out


# -- tests -------------------------------------------------------------------------------------------------------


def test_imported_text_is_in_no_redis_key_value_or_log(
    client, conn, settings, drain, fake, worker_env, tmp_path, caplog
):
    paths = write_mail(tmp_path) + write_bank(tmp_path)
    env = {**worker_env, "OPENAI_BASE_URL": fake.url}

    # Through the CLI at -vv: submit every export as one batch, drain, read back.
    sub = jobctl(env, "submit", "--json", "--name", "private", *paths)
    assert sub.returncode == 0, sub.stderr.decode()
    batch_id = json.loads(sub.stdout)["batch_id"]
    assert json.loads(sub.stdout)["enqueued"] == 5 + 2 + 3
    worked = jobctl(env, "worker", "--burst", "--json")
    assert worked.returncode == 0, worked.stderr.decode()[-3000:]
    assert json.loads(worked.stdout)["done"] == 10
    assert "DEBUG" in worked.stderr.decode()
    read = {fmt: jobctl(env, "results", batch_id, "--format", fmt) for fmt in ("csv", "jsonl", "table")}
    shown = jobctl(env, "status", batch_id)
    listed = jobctl(env, "status")
    for name, proc in [("submit", sub), ("worker", worked), ("status", shown), ("status list", listed), *read.items()]:
        assert proc.returncode == 0, (name, proc.stderr.decode())
        no_markers(proc.stderr.decode(), f"`jobctl -vv {name}` stderr")
    for name, proc in (("submit", sub), ("worker", worked), ("status", shown), ("status list", listed)):
        no_markers(proc.stdout.decode(), f"`jobctl {name}` stdout")
    # The owner's own results show what the model saw, and never what it did not.
    answers = read["csv"].stdout.decode() + read["jsonl"].stdout.decode()
    for p in ("subject", "emlsubject", "mdsubject", "csvdesc", "ofxname"):
        assert M[p] in answers, p
    no_markers(answers, "the results", NEVER)

    # In-process at DEBUG: read_paths, submit_parsed, drain, results (the same records: duplicates).
    caplog.set_level(logging.DEBUG)
    again = client.submit_parsed(read_paths([str(p) for p in paths], Intake(client.limits())))
    assert again.duplicates == 10
    drain()
    outs = list(client.results(again.batch_id))
    assert len(outs) == 10 and all(o.ok for o in outs)
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    no_markers(caplog.text, "the in-process logs")

    # What the tasks hold, decrypted: what the model sees, never attachments' contents.
    stored = "\n".join(sealed_tasks(conn, settings.cipher(), batch_id))
    for p in SHOWN:
        assert M[p] in stored, f"{p} should reach the model (and be encrypted)"
    no_markers(stored, "the decrypted tasks", NEVER)
    no_markers(json.dumps([o.input for o in outs], ensure_ascii=False), "the results' inputs", NEVER)
    prompts = json.dumps(list(fake.stats.prompts_seen), ensure_ascii=False)
    assert M["body"] in prompts and M["attname"] in prompts  # the name of an attachment is shown, ...
    no_markers(prompts, "the requests to the model server", NEVER)  # ... never what it holds

    # Every key and value of the database, with zlib and base64 unwrapped.
    scan = Scan(conn)
    assert scan.types.keys() >= {"hash", "list", "zset", "stream"}, scan.types
    assert scan.unwrapped["zlib"] >= 10 and scan.unwrapped["base64"] >= 10, scan.unwrapped
    assert not scan.hits([*M.values(), settings.key_text or ""])
    # The scanner does find a marker behind both layers.
    conn.set("probe", base64.b64encode(__import__("zlib").compress(f"x {M['subject']} y".encode())))
    assert Scan(conn).hits([M["subject"]]) == [("probe", M["subject"].lower())]
    conn.delete("probe")


def test_attachment_sizes_are_kept_not_their_bytes(client, tmp_path):
    [mbox, *_] = write_mail(tmp_path)
    parsed = read_paths([str(mbox)], Intake(client.limits()))
    first = next(t for t in parsed.tasks if t.custom_id == f"{M['msgid']}.1@example.org")
    atts = first.input["attachments"]
    assert [a.get("name") for a in atts] == [
        f"Befund-{M['attname']}.pdf",
        "notes.txt",
        f"Röntgen-{M['attname2047']}.csv",
        None,  # the forwarded message: listed by type and size
    ]
    assert [a["type"] for a in atts] == ["application/pdf", "text/plain", "text/csv", "message/rfc822"]
    assert all(set(a) <= {"name", "type", "size"} and a["size"] > 0 for a in atts)
    assert atts[0]["size"] == len(b"%PDF-1.4\n" + f"({M['attpdf']}) Tj\n".encode() + b"\x00\x01" * 200 + b"%%EOF\n")


def _bad_files(d: Path) -> list[tuple[Path, str]]:
    csv_bad = d / "bad.csv"
    csv_bad.write_text(
        f"Buchungstag;Verwendungszweck;Betrag\n02.01.2024;{M['csvdesc']};-10,00\n"
        f"31.02.2024;{M['csvdesc']};{M['csvpayee']}\n"
    )
    mbox_cut = d / "cut.mbox"
    raw = _with_attachments().replace(b"\r\n", b"\n")
    mbox_cut.write_bytes(b"From x@example.org Wed Jan 17 10:15:03 2024\n" + raw[: len(raw) * 2 // 3])
    ofx_bad = d / "bad.ofx"
    text = (FIXTURES / "creditcard-ofx2.ofx").read_text()
    ofx_bad.write_text(text.replace("<TRNAMT>-64.00</TRNAMT>", f"<TRNAMT>{M['ofxmemo']}</TRNAMT>"))
    ofx_broken = d / "broken.ofx"
    ofx_broken.write_text(text.replace("<NAME>SNCF Connect</NAME>", f"<{M['ofxname']}>x</WRONG>"))
    eml_bad = d / "mail"
    eml_bad.mkdir()
    (eml_bad / "note.eml").write_text(f"{M['emlsubject']} is no mail at all\n{M['emlbody']}\n")
    return [(csv_bad, "bad.csv:3"), (mbox_cut, "cut.mbox:1"), (ofx_bad, "transaction 2: TRNAMT"),
            (ofx_broken, "is not a readable OFX"), (eml_bad, "note.eml")]  # fmt: skip


def test_errors_about_private_files_never_quote_them(client, conn, worker_env, tmp_path):
    for path, where in _bad_files(tmp_path):
        with pytest.raises(InputError) as err:
            read_paths([str(path)], Intake(client.limits()))
        assert where in str(err.value)
        no_markers(str(err.value), f"the error for {path.name}")
        proc = jobctl(worker_env, "submit", path)
        assert proc.returncode == 1 and where in proc.stderr.decode(), proc.stderr.decode()
        no_markers(proc.stderr.decode() + proc.stdout.decode(), f"`jobctl -vv submit {path.name}`")
    assert conn.dbsize() == 0


def test_a_conflict_names_ids_not_content(client, conn, worker_env, tmp_path):
    """The same Message-ID with other content in two exports is refused by its id and place only."""
    one, two = tmp_path / "one.eml", tmp_path / "two.eml"
    one.write_bytes(_with_attachments())
    two.write_bytes(_with_attachments().replace(M["body"].encode(), M["mdbody"].encode()))
    proc = jobctl(worker_env, "submit", one, two)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "two.eml" in err
    no_markers(err, "the conflict error", [p for p in SHOWN + NEVER if p != "msgid"])
    assert conn.dbsize() == 0


def test_worker_processes_log_nothing_private(tmp_path):
    """A large mailbox is parsed by forked worker processes: with every logger at DEBUG, neither
    they nor the parent write a marker (run in a process of its own: pytest's threads would keep
    the import in one process)."""
    mbox, *_ = write_mail(tmp_path)
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)\n"
        "logging.getLogger('multiprocessing').setLevel(logging.DEBUG)\n"
        "import multiprocessing; multiprocessing.log_to_stderr(logging.DEBUG)\n"
        "from jobs.imports import pool\n"
        "pool.MIN_BYTES = 0\n"
        "assert pool.workers_for(1) >= 2, 'no worker processes here'\n"
        "from producer.intake import Intake, read_paths\n"
        "from jobs.parse import Limits\n"
        f"parsed = read_paths([{str(mbox)!r}], Intake(Limits()))\n"
        "print(len(parsed))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=120)
    if b"no worker processes here" in proc.stderr:
        pytest.skip("worker processes need Linux and 2 cores")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode().strip() == "3"
    err = proc.stderr.decode()
    assert "DEBUG" in err and "ForkProcess" in err  # the workers did log, at debug level
    no_markers(err, "the logs of an import in worker processes")
