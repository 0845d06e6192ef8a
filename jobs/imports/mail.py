"""One email message (its bytes) to one record: the headers a reader needs, the text body, and
attachments as name, type and size only.

The record depends only on the message itself, not on the container it came in: line endings are
normalized first, and only the fields below are read, so an mbox's From_ line and Status headers,
a Maildir's flags and a CRLF export all give the same record as the .eml.
"""

from __future__ import annotations

import re
import unicodedata
from email import policy
from email.errors import InvalidBase64LengthDefect
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import EmailPolicy
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

import html_text

from jobs.imports.base64_runs import TOKEN, SetAside, set_aside
from jobs.imports.records import EMAIL, ImportOptions, cap, content_digest, natural_id
from jobs.kinds import KINDS
from jobs.kinds.base import estimate_tokens
from jobs.kinds.email import Email


class _Policy(EmailPolicy):
    """policy.default, less its header objects for the MIME structure headers.

    The modern policy parses a header into an object each time it is read, and the parser and
    get_body() read Content-Type many times per part: that took 90% of an import's time. Those
    headers stay strings here (the Message methods read them as such, as under compat32); the
    headers a reader sees (From, To, Subject...) are decoded by _Headers below.

    They are stripped too: Message.get_payload() compares the transfer encoding as it is, so
    "base64 " (white space at the end, which RFC 2045 allows) was left undecoded, while
    jobs.imports.base64_runs set its runs aside as base64."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if name.lower() in _STRUCTURE_HEADERS:
            return ("".join(_FOLD.split(value)) if "\n" in value or "\r" in value else value).strip()
        return super().header_fetch_parse(name, value)


class _Message(EmailMessage):
    """A parsed message or part. The root of a message parsed with base64 runs set aside carries them.

    The parser and the body's lookup ask each part for its content type over and over (15 times a
    message, each a scan of its headers): a part remembers it. Headers are only ever added while
    the part is parsed, so the answer is kept with the header count (and default type) it was for."""

    set_aside: SetAside | None = None
    _content_type: tuple[int, str, str] = (-1, "", "")

    def get_content_type(self) -> str:
        # Message's own attributes, read directly: this runs 15 times a message.
        count, default, known = self._content_type
        if count != len(self._headers) or default != self._default_type:  # type: ignore[attr-defined]
            known = super().get_content_type()
            self._content_type = (len(self._headers), self._default_type, known)  # type: ignore[attr-defined]
        return known

    def is_attachment(self) -> bool:
        # EmailMessage's reads the header object's .content_disposition; under _Policy the header
        # is a string, so any part with a Content-Disposition (a scanner's PDF, an inline photo,
        # Apple Mail's inline text) raised AttributeError. get_body() asks this of every part too.
        return self.get_content_disposition() == "attachment"


_STRUCTURE_HEADERS = {"content-type", "content-disposition", "content-transfer-encoding", "content-id"}
_PARSER = BytesParser(policy=_Policy(message_factory=_Message))
# Charsets that mail clients declare while sending Windows-1252 (curly quotes, euro sign): decoding
# as cp1252 is what browsers and mail readers do too, and is the same for every byte they agree on.
_AS_CP1252 = {"us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1", "iso8859-1", "windows-1252", "cp1252"}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b\u202a-\u202e\u2066-\u2069\ufeff]")
_SPACES = re.compile(r"\s+")
_BLANK_RUNS = re.compile(r"\n{3,}")
# Every ASCII character _CONTROL keeps.
_ASCII_KEPT = bytes(c for c in range(128) if not _CONTROL.match(chr(c)))
_FOLD = re.compile(r"\r\n|\n|\r")
MAX_ATTACHMENTS = 100
MAX_BODY_CHARS = next(m.max_length for m in Email.model_fields["body"].metadata if hasattr(m, "max_length"))
TRUNCATION_NOTE = (
    "[jobctl: the message was cut here to fit the model's context; {shown:,} of {total:,} characters are shown]"
)


def parse(raw: bytes, runs_aside: bool = True) -> EmailMessage:
    """A message parsed with the modern policy, from bytes whose line endings are made "\\n".

    With `runs_aside`, long base64 runs are kept out of the parser (jobs.imports.base64_runs); the
    record read from the message is the same either way."""
    raw = raw.replace(b"\r\n", b"\n")
    if runs_aside:
        lighter, aside = set_aside(raw)
        if aside is not None:
            msg = _PARSER.parsebytes(lighter)
            assert isinstance(msg, _Message)
            if aside.all_in_base64_parts(msg):
                msg.set_aside = aside
                return msg
    msg = _PARSER.parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    return msg


class BodyBudget:
    """How many bytes of body fit in a task: the context, less the kind's answer (max_tokens) and
    the prompt around the body (system text, schema, headers), as jobs.kinds.base estimates them."""

    def __init__(self, opts: ImportOptions):
        kind = KINDS.get(opts.kind or "")
        if kind is None or kind.input_model is not Email:
            kind = KINDS["email.triage"]
        self.kind = kind
        try:
            self.options = kind.options_model.model_validate(opts.options or {})
        except Exception:  # the batch's options are reported where they are validated; budget with defaults
            self.options = kind.options_model.model_validate({})
        self.context = opts.context_tokens
        self.answer = getattr(self.options, "max_tokens", None) or kind.max_tokens
        # The prompt of a message with no headers and no body: system text, schema, instructions.
        empty = Email.model_validate({"from": "-", "body": ""})
        self.base = estimate_tokens(self.kind.request(empty, self.options, "json_schema"))

    def fit(self, fields: dict[str, Any]) -> tuple[str, bool]:
        body: str = fields["body"]
        limit = MAX_BODY_CHARS
        # Most mail fits with room to spare: an upper bound (4 bytes a character, generous room
        # for header labels) saves building the request to check.
        chars = len(body) + 300 + sum(len(v) for k, v in fields.items() if k != "body" and isinstance(v, str))
        chars += sum(len(a.get("name") or "") + len(a["type"]) + 40 for a in fields.get("attachments", ()))
        if len(body) <= limit and self.base + chars * 4 // 3 + self.answer < self.context:
            return body, False
        size = len(body.encode())
        data = Email.model_validate({**fields, "body": "", "truncated": True})
        overhead = estimate_tokens(self.kind.request(data, self.options, "json_schema"))
        room = (self.context - self.answer - overhead) * 3 - 3  # estimate_tokens floors; keep a token spare
        if size <= room and len(body) <= limit:
            return body, False
        note = TRUNCATION_NOTE.format(shown=10**9, total=10**9)
        kept = cut_at_paragraph(body, max(room - len(note.encode()) - 2, 0), limit - len(note) - 2)
        note = TRUNCATION_NOTE.format(shown=len(kept), total=len(body))
        return (f"{kept}\n\n{note}" if kept else note), True


def cut_at_paragraph(text: str, max_bytes: int, max_chars: int) -> str:
    """The longest start of `text` within `max_bytes` (UTF-8) and `max_chars` that ends at a
    paragraph break, else at a line break, else at a space, as long as that keeps at least half
    of what fits."""
    head = text.encode()[:max_bytes].decode("utf-8", "ignore")[:max_chars]
    if len(head) == len(text):
        return text
    for sep in ("\n\n", "\n", " "):
        at = head.rfind(sep)
        if at >= len(head) // 2:
            return head[:at].rstrip()
    return head.rstrip()


def message_fields(msg: EmailMessage, cache: HeaderCache | None = None) -> dict[str, Any]:
    """The Email input of a message, body not yet fitted to the context. `cache`: decoded headers,
    shared by the messages of one import."""
    headers = _Headers(msg, cache)
    body, attachments = body_and_attachments(msg)
    fields: dict[str, Any] = {
        "from": cap(headers.text("from") or headers.text("sender") or "(no From header)", 500),
        "to": cap_list(headers.text("to"), 2000),
        "cc": cap_list(headers.text("cc"), 2000),
        "subject": cap(headers.text("subject") or "", 2000),
        "date": _iso_date(headers.text("date")),
        "message_id": _msg_id(headers.text("message-id")),
        "in_reply_to": _msg_id(headers.text("in-reply-to")),
        "body": body,
        "attachments": attachments,
    }
    return {k: v for k, v in fields.items() if v not in (None, [])}


def to_input(msg: EmailMessage, budget: BodyBudget, cache: HeaderCache | None = None) -> tuple[str, dict[str, Any]]:
    """(the record's natural custom_id or a content hash, its Email input)."""
    fields = message_fields(msg, cache)
    body, truncated = budget.fit(fields)
    fields["body"] = body
    if truncated:
        fields["truncated"] = True
    natural = natural_id(fields.get("message_id"))
    return natural or "mail-" + content_digest({**fields, "family": EMAIL}), fields


class _Headers:
    """Header values decoded: RFC 2047 words, and raw 8-bit headers (sent without encoding, common
    from old clients) as UTF-8, else Windows-1252, instead of U+FFFD.

    Decoding goes through email.header and email.utils, which are many times faster than the
    policy's header objects; policy.default decodes what they cannot (unknown charsets,
    address lists they cannot split)."""

    def __init__(self, msg: Message, cache: HeaderCache | None = None):
        self.raw: dict[str, str] = {}
        for name, value in msg.raw_items():
            self.raw.setdefault(name.lower(), value)
        self.cache = cache

    def text(self, name: str) -> str | None:
        value = self.raw.get(name)
        if value is None:
            return None
        value = str(value)
        if value.isascii() and "=?" not in value and value.replace("\n", "").replace("\t", "").isprintable():
            # Plain ASCII, nothing to decode (Message-ID, Date, most addresses): unfolded (a folded
            # line goes on with a space or tab) and spaces collapsed, as _header_text would.
            return " ".join(value.split()) or None
        if self.cache is None or len(value) > 1000:
            return _header_text(name, value)
        # Senders and recipients come back message after message in one mailbox: decoded once each.
        key = (name, value)
        if key not in self.cache:
            if len(self.cache) >= 10_000:
                self.cache.clear()
            self.cache[key] = _header_text(name, value)
        return self.cache[key]


HeaderCache = dict[tuple[str, str], str | None]


def _header_text(name: str, value: str) -> str | None:
    """A header's value as text: unfolded, decoded, without control characters."""
    value = "".join(_FOLD.split(value))
    if _SURROGATE.search(value):
        b = value.encode("ascii", "surrogateescape")
        try:
            value = b.decode("utf-8")
        except UnicodeDecodeError:
            value = b.decode("cp1252", "replace")
    if "=?" in value:
        try:
            value = _addresses(value) if name in _ADDRESS_HEADERS else _decode_words(value)
        except Exception:  # a charset Python does not know, a list it cannot split
            try:
                value = str(policy.default.header_factory(name, value))
            except Exception:
                pass  # kept as it was sent
    value = _SPACES.sub(" ", _CONTROL.sub("", value)).strip()
    return value or None


_SURROGATE = re.compile("[\udc80-\udcff]")
_ADDRESS_HEADERS = {"from", "to", "cc", "sender", "reply-to"}
_NEEDS_QUOTES = re.compile(r'[()<>\[\]:;@\\,."]')


def _decode_words(value: str) -> str:
    return str(make_header(decode_header(value)))


def _addresses(value: str) -> str:
    pairs = getaddresses([value])
    if not pairs or any(not addr for _name, addr in pairs):
        raise ValueError("an address list that getaddresses cannot split")
    out = []
    for name, addr in pairs:
        name = _decode_words(name) if "=?" in name else name
        if name and _NEEDS_QUOTES.search(name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out.append(f"{name} <{addr}>" if name else addr)
    return ", ".join(out)


def cap_list(value: str | None, limit: int) -> str | None:
    """An address list cut at an address boundary, saying how many were left out."""
    if value is None or len(value) <= limit:
        return value
    head = value[: limit - 30]
    at = head.rfind(",")
    head = head[:at] if at > 0 else head
    left = value.count(",") - head.count(",")
    return f"{head}, … ({left} more)"


def _iso_date(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).isoformat()
    except (TypeError, ValueError, IndexError):
        return cap(value, 100)


def _msg_id(value: str | None) -> str | None:
    """A Message-ID without its angle brackets and folding; In-Reply-To may list several, the
    first is the parent."""
    if not value:
        return None
    m = re.search(r"<([^<>]+)>", value)
    ident = (m.group(1) if m else value.split()[0]).replace(" ", "")
    return cap(ident, 990) or None


def body_and_attachments(msg: EmailMessage) -> tuple[str, list[dict[str, Any]]]:
    """The text of the message (plain text, else HTML made text) and its other parts as
    {name, type, size}. Parts that are another rendering of the body (the HTML alternative, the
    images an HTML body shows inline) are neither."""
    aside = getattr(msg, "set_aside", None)
    top = _first_body_part(msg)
    body_part = top.get_body(preferencelist=("plain", "html")) if top is not None else None
    text = part_text(body_part, aside) if body_part is not None else ""
    if top is not None and not text.strip() and body_part is not None and body_part.get_content_type() == "text/plain":
        html = top.get_body(preferencelist=("html",))
        if html is not None:
            body_part, text = html, part_text(html, aside)
    extra: list[str] = []
    attachments: list[dict[str, Any]] = []
    _scan(msg, body_part, False, extra, attachments, aside)
    text = "\n\n".join(t for t in [text, *extra] if t.strip())
    return tidy(text), attachments[:MAX_ATTACHMENTS]


def _first_body_part(part: Any) -> Any:
    """The part that holds the message's text: in a mixed multipart, its first part that is text
    (or an alternative or related multipart) and not an attachment. get_body() alone prefers any
    plain text part anywhere, so a mailing list's plain footer would win over an HTML message's
    body. A phone puts the photo first, inline: the text after it is still the body."""
    ctype = part.get_content_type()
    if ctype == "message/rfc822" or part.is_attachment():
        return None
    if not part.is_multipart():
        return part if ctype in ("text/plain", "text/html") else None
    if ctype not in ("multipart/alternative", "multipart/related"):
        for sub in part.iter_parts():
            found = _first_body_part(sub)
            if found is not None:
                return found
        return None
    return part


def _scan(
    part: Any, body: Any, in_related: bool, extra: list[str], out: list[dict[str, Any]], aside: SetAside | None
) -> bool:
    """Walk the parts; True when `body` lies inside this one."""
    if part is body:
        return True
    ctype = part.get_content_type()
    if ctype == "message/rfc822":  # a forwarded message: listed, not opened
        out.append(_attachment(part, ctype, aside))
        return False
    if part.is_multipart():
        found = False
        children = part.get_payload()
        related = ctype == "multipart/related"
        # An alternative holding the body is other renderings of it: nothing in it is an attachment.
        if ctype == "multipart/alternative" and any(_holds(ch, body) for ch in children):
            return True
        for ch in children:
            found = _scan(ch, body, related, extra, out, aside) or found
        return found
    disposition = part.get_content_disposition()
    name = part.get_filename()
    if in_related and part.get("content-id") and disposition != "attachment":
        return False  # an inline image of an HTML body
    if ctype == "text/plain" and not name and disposition != "attachment":
        extra.append(part_text(part, aside))  # e.g. a mailing list's footer in its own part
        return False
    out.append(_attachment(part, ctype, aside))
    return False


def _holds(part: Any, body: Any) -> bool:
    if part is body:
        return True
    if part.is_multipart() and part.get_content_type() != "message/rfc822":
        return any(_holds(ch, body) for ch in part.get_payload())
    return False


def _attachment(part: Any, ctype: str, aside: SetAside | None) -> dict[str, Any]:
    try:
        name = part.get_filename()
    except Exception:
        name = None
    size = 0
    try:
        if ctype == "message/rfc822":
            data = part.get_payload(0).as_bytes()
            size = len(data) + (aside.raw_extra(data) if aside else 0)
        else:
            # Decoded for its size (and for the defects that tell a cut-off file), its runs left out.
            payload = part.get_payload(decode=True)
            size = len(payload) if payload else 0
            if aside and size:
                broken = any(isinstance(d, InvalidBase64LengthDefect) for d in part.defects)
                size += aside.decoded_extra(part.get_payload(), decoded=not broken)
    except Exception:  # a malformed part still gets listed, with size 0
        pass
    item: dict[str, Any] = {"type": cap(_SURROGATES.sub("\ufffd", ctype), 200), "size": size}
    if name:
        name = _SURROGATES.sub("\ufffd", str(name))
        item["name"] = cap(_SPACES.sub(" ", _CONTROL.sub("", name)).strip(), 300)
    return item


# A header's raw bytes that are not ASCII reach us as lone surrogates (the parser's surrogateescape):
# no task field may hold one (it cannot be encoded, so the task would fail validation).
_SURROGATES = re.compile("[\ud800-\udfff]")


def part_text(part: Any, aside: SetAside | None = None) -> str:
    """A text part decoded (declared charset, else UTF-8, else Windows-1252); HTML made plain text."""
    try:
        if aside is not None:
            raw = part.get_payload()
            if isinstance(raw, str) and TOKEN in raw:
                part.set_payload(aside.restore(raw))  # its runs back, before decoding
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if not payload:
        return ""
    params: dict[str, Any] = {}
    for k, v in (part.get_params() or [])[1:]:  # read once: each read parses the header again
        params.setdefault(k.lower(), v)
    text = _decode(payload, _charset(params.get("charset")))
    if str(params.get("format", "")).lower() == "flowed":
        text = unflow(text, str(params.get("delsp", "")).lower() == "yes")
    if part.get_content_type() == "text/html":
        text = html_to_text(text)
    return text


def _charset(value: Any) -> str:
    """A charset parameter as Message.get_content_charset() reads it (RFC 2231 form too), lowercased."""
    if isinstance(value, tuple):  # (charset, language, value)
        try:
            value = value[2].encode("raw-unicode-escape").decode(value[0] or "us-ascii")
        except (LookupError, UnicodeError):
            value = value[2]
    if not isinstance(value, str) or not value.isascii():
        return ""
    return value.lower()


def _decode(payload: bytes, charset: str) -> str:
    if charset and charset not in _AS_CP1252:
        try:
            return payload.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("cp1252", "replace")


def html_to_text(html: str) -> str:
    """HTML as plain text with paragraphs and line breaks, scripts, styles and markup gone
    (html-text: compact, where layout-keeping converters pad tables with spaces the model pays for)."""
    try:
        return str(html_text.extract_text(html))
    except Exception:  # lxml refuses some documents (e.g. only a comment); nothing readable there
        return ""


def unflow(text: str, delsp: bool) -> str:
    """RFC 3676 format=flowed: lines ending in a space continue on the next line."""
    out: list[str] = []
    cur = ""
    for line in text.split("\n"):
        if line.startswith(" "):
            line = line[1:]  # space-stuffing
        if line.endswith(" ") and line != "-- ":
            cur += line[:-1] if delsp else line
        else:
            out.append(cur + line)
            cur = ""
    if cur:
        out.append(cur)
    return "\n".join(out)


def tidy(text: str) -> str:
    """Line endings, trailing spaces and runs of blank lines made the same everywhere."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    # Each step runs only where there is something to change: most bodies need few of them.
    if _CONTROL.search(text) if not text.isascii() else text.encode().translate(None, _ASCII_KEPT):
        text = _CONTROL.sub("", text)
    if " \n" in text or "\t\n" in text:
        text = "\n".join(line.rstrip(" \t") for line in text.split("\n"))
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()
