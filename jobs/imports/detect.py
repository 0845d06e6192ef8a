"""Telling a path's format from its content (the name only breaks ties), before reading it."""

from __future__ import annotations

import csv
import os
import re
import stat
from pathlib import Path

from jobs.imports.csv_headers import recognize
from jobs.imports.reading import describe, fail, nul_at, read_head, stat_regular, too_big

TASKS = "tasks"  # jobctl JSON, JSONL and OpenAI batch JSONL: read by jobs.parse
MBOX = "mbox"
MAILDIR = "maildir"
EML_DIR = "eml-dir"
EML = "eml"
CSV = "csv"
OFX = "ofx"
FORMATS = (TASKS, MBOX, MAILDIR, EML_DIR, EML, CSV, OFX)
MAIL_FORMATS = (MBOX, MAILDIR, EML_DIR, EML)
TRANSACTION_FORMATS = (CSV, OFX)

WHAT_WE_READ = (
    "jobctl reads JSON or JSONL task files, OpenAI batch JSONL, mbox files, Maildir folders, "
    "folders of .eml files, single .eml messages, bank CSV exports and OFX/QFX files"
)
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")  # a header name is printable ASCII without ':'
_MAIL_HEADERS = {
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"received",
    b"return-path",
    b"mime-version",
    b"delivered-to",
    b"content-type",
    b"reply-to",
    b"sender",
}
_OFX_START = re.compile(rb"^\s*(OFXHEADER\s*:|<\?xml[^>]*\?>\s*<\?OFX|<OFX>)", re.IGNORECASE)


def detect(path: Path, max_file_bytes: int | None = None) -> str:
    """The format of a file or folder: one of FORMATS, or a located InputError saying why none.

    Files that are not regular (FIFOs, devices, sockets) are refused without being opened, and
    files over `max_file_bytes` (when given) before being read; only the first 64 KiB are read.
    """
    source = str(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if stat.S_ISDIR(mode):
        return _detect_folder(path, source)
    st = stat_regular(path, source)
    if max_file_bytes is not None and st.st_size > max_file_bytes:
        raise too_big(source, st.st_size, max_file_bytes)
    head = read_head(path, source)
    if not head.strip():
        if path.suffix.lower() in (".json", ".jsonl", ""):
            return TASKS  # jobs.parse says what an empty task file should hold
        raise fail(source, "the file is empty; export it again")
    return sniff(head, path, source)


def sniff(head: bytes, path: Path, source: str) -> str:
    """The format of a file from its first bytes."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        head = head.decode("utf-16", "ignore").encode("utf-8")  # a CSV saved as "Unicode text"
        if looks_like_csv(head):
            return CSV
    nul = nul_at(head, source, 8192)
    if nul:
        if path.suffix.lower() in (".json", ".jsonl"):
            return TASKS  # jobs.parse refuses it in its own words
        raise fail(source, f"the file looks binary (it contains NUL bytes), not text; {WHAT_WE_READ}", nul)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"[", b"{"):
        return TASKS
    if _OFX_START.match(text):
        return OFX
    if text.startswith(b"From ") and looks_like_message(text.split(b"\n", 1)[-1]):
        return MBOX
    if looks_like_message(text):
        return EML
    if looks_like_csv(head):
        return CSV
    if path.suffix.lower() in (".json", ".jsonl"):
        return TASKS  # jobs.parse reports where the JSON goes wrong
    raise fail(source, f"cannot tell what this file is; {WHAT_WE_READ}")


def looks_like_message(head: bytes) -> bool:
    """Whether bytes start like an RFC 5322 message: header lines (folded ones too) up to a blank
    line or the end of what was read, at least one of them a header every mail has."""
    known = False
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    for i, line in enumerate(lines):
        if not line:
            return known and i > 0
        if line[:1] in (b" ", b"\t"):
            if i == 0:
                return False
            continue
        if not _HEADER_LINE.match(line):
            # The last line may be cut off by the head's end.
            return known and i == len(lines) - 1
        known = known or line.split(b":", 1)[0].strip().lower() in _MAIL_HEADERS
    return known


def looks_like_csv(head: bytes) -> bool:
    """Whether some delimiter splits the lines of a text into a table of two or more columns."""
    text = head.decode("utf-8", "replace")
    rows = text.splitlines()[:-1] if len(head) >= 65536 else text.splitlines()
    rows = [r for r in rows if r.strip()]
    if len(rows) == 1:  # a header alone: a CSV if its names are a bank export's
        return any(recognize(next(csv.reader(rows, delimiter=d))).complete() for d in (";", ",", "\t", "|"))
    if len(rows) < 2:
        return False
    for delim in (";", ",", "\t", "|"):
        try:
            widths = [len(r) for r in csv.reader(rows[-50:], delimiter=delim)]
        except csv.Error:
            continue
        common = max(set(widths), key=widths.count)
        if common >= 2 and widths.count(common) >= max(2, len(widths) // 2):
            return True
    return False


def _detect_folder(path: Path, source: str) -> str:
    if (path / "cur").is_dir() or (path / "new").is_dir():
        return MAILDIR
    try:
        entries = list(os.scandir(path))
    except OSError as e:
        raise fail(source, f"cannot be read ({e.strerror}); check its permissions") from e
    if not entries:
        raise fail(source, "the folder is empty; give a Maildir (with cur/ and new/) or a folder of .eml files")
    for _dirpath, _dirs, files in os.walk(path, followlinks=False):
        if any(f.lower().endswith(".eml") for f in files):
            return EML_DIR
    kinds = sorted({describe(os.lstat(e.path).st_mode) if not e.is_file() else "file" for e in entries})
    raise fail(
        source,
        f"the folder holds no .eml files and is not a Maildir (no cur/ or new/ in it; found: {', '.join(kinds)}); "
        "give a Maildir, a folder of .eml files, or a file",
    )
