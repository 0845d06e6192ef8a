"""Mail containers: an mbox file, a Maildir, a folder of .eml files, one .eml. Each is read one
message at a time, so a large mailbox never sits in memory whole.

The mbox is split here rather than with mailbox.mbox, which opens the file for writing, scans it
whole for a table of contents before the first message, and knows no line numbers to report.
The split follows mboxrd: a "From " line after a blank line (or one that looks like a From_ line
with its date) starts a message, and ">From " lines lose one ">".
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator
from email import errors as email_errors
from email.message import EmailMessage
from pathlib import Path
from typing import Any, BinaryIO

from jobs.imports import pool
from jobs.imports.detect import looks_like_message
from jobs.imports.mail import BodyBudget, HeaderCache, parse, to_input
from jobs.imports.reading import fail, folder_files, nul_at, open_bounded, read_bounded, where_in
from jobs.imports.records import EMAIL, IdKeeper, ImportOptions, Record
from jobs.parse import InputError, Problem

_BLOCK = 1 << 20
_FROM_LINE = re.compile(rb"From \S+ +(Mon|Tue|Wed|Thu|Fri|Sat|Sun) ")
# mboxrd: a body line "From ..." was written as ">From ...", and ">From" as ">>From".
_ESCAPED_FROM = re.compile(rb"^>(>*From )", re.MULTILINE)
_CUT_DEFECTS = (
    email_errors.CloseBoundaryNotFoundDefect,
    email_errors.StartBoundaryNotFoundDefect,
    email_errors.InvalidBase64PaddingDefect,
    email_errors.InvalidBase64LengthDefect,
)
CUT_OFF = "ends in the middle of the message ({why}); the file looks cut off: export or copy it again"


def read_mbox(path: Path, source: str, opts: ImportOptions) -> Iterator[Record]:
    with open_bounded(path, source, opts.max_file_bytes) as f:
        size = os.stat(path).st_size  # opened: a regular file of at most the limit
        yield from _records(_mbox_messages(f, source), source, opts, size)


def mbox_records(raw: bytes, source: str, opts: ImportOptions) -> Iterator[Record]:
    """The records of an mbox's bytes (stdin)."""
    return _records(_mbox_messages(io.BytesIO(raw), source), source, opts, len(raw))


def eml_records(raw: bytes, source: str, opts: ImportOptions) -> Iterator[Record]:
    """The record of one message's bytes (stdin)."""
    _check_message(raw, source)
    return _records([(source, raw, False)], source, opts, 0)


def read_maildir(path: Path, source: str, opts: ImportOptions) -> Iterator[Record]:
    files = folder_files(path, source, ("cur", "new"), None, opts.max_file_bytes)
    if not files:
        raise fail(source, "the Maildir has no messages in cur/ or new/")
    yield from _records(_files(path, source, files, opts), source, opts, _total_size(files))


def read_eml_dir(path: Path, source: str, opts: ImportOptions) -> Iterator[Record]:
    files = folder_files(path, source, None, ".eml", opts.max_file_bytes)
    if not files:
        raise fail(source, "the folder has no .eml files")
    yield from _records(_files(path, source, files, opts), source, opts, _total_size(files))


def read_eml(path: Path, source: str, opts: ImportOptions) -> Iterator[Record]:
    raw = read_bounded(path, source, opts.max_file_bytes)
    _check_message(raw, source)
    yield from _records([(source, raw, False)], source, opts, 0)


def _total_size(files: list[Path]) -> int:
    try:
        return sum(os.stat(p).st_size for p in files)
    except OSError:
        return 0  # reported, located, when the file is read


def _files(folder: Path, source: str, files: list[Path], opts: ImportOptions) -> Iterator[tuple[str, bytes, bool]]:
    for p in files:
        where = where_in(folder, source, p)
        raw = read_bounded(p, where, opts.max_file_bytes)
        _check_message(raw, where)
        yield where, raw, False


def _check_message(raw: bytes, where: str) -> None:
    nul = nul_at(raw, where)
    if nul:
        raise fail(
            where, "looks binary (it contains NUL bytes), not an email message; remove it or export it again", nul
        )
    if not looks_like_message(raw[:65536].lstrip(b"\r\n")):
        raise fail(where, "does not start with mail headers (From:, Date:, Subject:...); it is not an email message")


def _mbox_messages(f: BinaryIO, source: str) -> Iterator[tuple[str, bytes, bool]]:
    """(origin, message bytes, is the last one) for each message of an mbox, by its From_ line.

    The file is read in blocks cut at line ends and searched with bytes methods: a Python loop
    over each of a mailbox's million lines took longer than parsing the messages."""
    pending: list[bytes] = []  # the current message's bytes from earlier blocks
    start = 0  # the line of the current message's From_ line (0: none yet)
    line = 1  # the line that `block` starts on
    before = b"\n\n"  # the bytes just before `block`: the file starts as if after a blank line
    tail = b""
    while True:
        chunk = f.read(_BLOCK)
        block = tail + chunk
        cut = block.rfind(b"\n") + 1 if chunk else len(block)
        if chunk and cut == 0:
            tail = block  # a line longer than a block: read on
            continue
        block, tail = block[:cut], block[cut:]
        if not block:
            break
        pos = 0
        counted, at_line = 0, line  # lines are counted on from the last From_ line, not from the top
        for at in _from_lines(block):
            ctx = (before + block[:at])[-4:] if at < 4 else block[at - 4 : at]
            if not (ctx.endswith((b"\n\n", b"\n\r\n")) or _FROM_LINE.match(block, at)):
                continue  # "From " inside a body, not escaped by the writer
            if start:
                pending.append(block[pos:at])
                yield f"{source}:{start}", _message_bytes(pending), False
            else:
                _only_blank_lines(block, pos, at, line, source)
            at_line += block.count(b"\n", counted, at)
            counted, start = at, at_line
            eol = block.find(b"\n", at) + 1
            pending, pos = [], eol
        if start:
            pending.append(block[pos:])
        else:
            _only_blank_lines(block, pos, len(block), line, source)
        before = (before + block[-4:])[-4:]
        line += block.count(b"\n")
    if not start:
        raise fail(source, "the mbox has no messages")
    yield f"{source}:{start}", _message_bytes(pending), True


def _from_lines(block: bytes) -> Iterator[int]:
    """The offsets of the lines of a block that start with "From " (bytes.find: a multiline
    regex would test every byte)."""
    if block.startswith(b"From "):
        yield 0
    at = block.find(b"\nFrom ")
    while at >= 0:
        yield at + 1
        at = block.find(b"\nFrom ", at + 1)


def _only_blank_lines(block: bytes, pos: int, end: int, line: int, source: str) -> None:
    """Before the first From_ line: blank lines only, else this is no mbox."""
    seg = block[pos:end]
    if seg.strip():
        first = pos + len(seg) - len(seg.lstrip())
        bad = line + block.count(b"\n", 0, first)
        raise fail(source, "is not an mbox: its first message does not start with a 'From ' line", f"{source}:{bad}")


def _message_bytes(parts: list[bytes]) -> bytes:
    raw = b"".join(parts)
    # The blank line before the next From_ line belongs to the mbox, not to the message.
    if raw.endswith(b"\n\n"):
        raw = raw[:-1]
    elif raw.endswith(b"\r\n\r\n"):
        raw = raw[:-2]
    if b">From " in raw:
        raw = _ESCAPED_FROM.sub(rb"\1", raw)
    return raw


def _records(
    messages: Iterable[tuple[str, bytes, bool]], source: str, opts: ImportOptions, size: int
) -> Iterator[Record]:
    """The records of the messages, in order. A large mailbox is parsed by worker processes (parsing
    is most of an import's time, and CPU-bound Python), while this process splits it and keeps
    the ids; the same records either way."""
    numbered = ((origin, raw, last, n) for n, (origin, raw, last) in enumerate(messages, 1))
    workers = pool.workers_for(size)
    if workers:
        chunks = pool.ordered_map(_read_chunk, _chunks(numbered), workers, _start_reader, (source, opts))
        read: Iterator[Read] = (item for chunk in chunks for item in chunk)
    else:
        reader = Reader(source, opts)
        read = (reader.read(*m) for m in numbered)
    ids = IdKeeper()
    try:
        for origin, cid, fields in read:
            if fields is None:  # an unreadable message: (where, what is wrong, None)
                raise InputError(source, [Problem(origin, cid)])
            final = ids.mail_id(cid, fields)
            if final is not None:
                yield Record(custom_id=final, family=EMAIL, input=fields, origin=origin)
    finally:
        if workers:
            chunks.close()  # the workers stop now, not when the error that ended the import is let go


# (origin, custom_id, input), or for a message that cannot be read (where, message, None).
Read = tuple[str, str, dict[str, Any] | None]
CHUNK_BYTES = 1 << 19
CHUNK_MESSAGES = 200


class Reader:
    """Reads one message at a time into (origin, custom_id, input), with what the messages of one
    import share: the body budget and the decoded headers."""

    def __init__(self, source: str, opts: ImportOptions):
        self.source = source
        self.budget = BodyBudget(opts)
        self.headers: HeaderCache = {}

    def read(self, origin: str, raw: bytes, last: bool, n: int) -> Read:
        where = f"{origin}: message {n}"
        try:
            msg = parse(raw)
            cid, fields = to_input(msg, self.budget, self.headers)
        except InputError as e:
            return where, "; ".join(p.message for p in e.problems), None
        except Exception as e:  # the parser recovers from nearly anything; say which message it did not
            return where, f"cannot be read as an email ({type(e).__name__}); remove it", None
        if last:
            cut = _cut_off(msg, raw)
            if cut:
                return where, CUT_OFF.format(why=cut), None
        return origin, cid, fields


def _chunks(numbered: Iterable[tuple[str, bytes, bool, int]]) -> Iterator[list[tuple[str, bytes, bool, int]]]:
    chunk: list[tuple[str, bytes, bool, int]] = []
    size = 0
    for m in numbered:
        chunk.append(m)
        size += len(m[1])
        if size >= CHUNK_BYTES or len(chunk) >= CHUNK_MESSAGES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


_READER: Reader | None = None  # a worker process's


def _start_reader(source: str, opts: ImportOptions) -> None:
    global _READER
    _READER = Reader(source, opts)


def _read_chunk(chunk: list[tuple[str, bytes, bool, int]]) -> list[Read]:
    assert _READER is not None
    out = []
    for m in chunk:
        out.append(_READER.read(*m))
        if out[-1][2] is None:
            break  # the import stops at this message
    return out


def _cut_off(msg: EmailMessage, raw: bytes) -> str | None:
    """Why the last message of an mbox looks cut short (a copy or download that stopped), if it
    does: headers with no body after them, a MIME part without its closing boundary, base64 cut
    mid-group, or a last line without its newline."""
    if not raw.endswith(b"\n"):
        return "its last line has no line ending"
    if b"\n\n" not in raw.replace(b"\r\n", b"\n"):
        return "its headers are not followed by a body"
    for part in msg.walk():
        if any(isinstance(d, _CUT_DEFECTS) for d in part.defects):
            return "a MIME part has no closing boundary or its attachment data is cut"
    return None
