"""Long base64 runs set aside before a message is parsed, and put back where they are needed.

An attachment is most of a mailbox's bytes, and the email parser reads its base64 one 76-character
line at a time: with the decoding of attachments only to learn their size, that was half an
import's time. So each long run of base64 lines that opens a part whose headers say base64 is set
aside before parsing, a token line in its place. The parser still reads every header and the whole
MIME structure. A part whose text is read gets its runs back before it is decoded (SetAside.restore);
an attachment's size is worked out from the length of its runs, which are never decoded.

Where the headers before a run only seemed to say base64 (a body that quotes them), a token would
land in text: SetAside.all_in_base64_parts notices, and the message is parsed again, whole.
"""

from __future__ import annotations

import re
from email.message import Message

TOKEN = "JOBCTLSETASIDE"  # then 6 digits: 20 base64 characters, which decode on their own
TOKEN_RE = re.compile(TOKEN + r"(\d{6})")
TOKEN_DECODED = (len(TOKEN) + 6) * 3 // 4
_BASE64_CTE = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*base64[ \t]*$")
MIN_RUN_LINES = 16
_HEADER_WINDOW = 16384


class SetAside:
    """The base64 runs taken out of one message before parsing: token i stands for runs[i]."""

    def __init__(self) -> None:
        self.runs: list[bytes] = []

    def token(self, raw_run: bytes) -> bytes:
        self.runs.append(raw_run)
        return f"{TOKEN}{len(self.runs) - 1:06d}".encode()

    def restore(self, text: str) -> str:
        return TOKEN_RE.sub(lambda m: self.runs[int(m.group(1))].decode("ascii"), text)

    def decoded_extra(self, text: str, decoded: bool = True) -> int:
        """The decoded bytes the tokens in a base64 payload stand for, less their own; or, for base64
        too broken to decode (which the email package then returns as it is), the characters."""
        total = 0
        for m in TOKEN_RE.finditer(text):
            run = self.runs[int(m.group(1))]
            chars = len(run) - run.count(b"\n")
            total += chars * 3 // 4 - TOKEN_DECODED if decoded else chars - len(m.group(0))
        return total

    def raw_extra(self, data: bytes) -> int:
        """The bytes the tokens in a serialized message stand for, less their own."""
        return sum(len(self.runs[int(m.group(1))]) - len(m.group(0)) for m in TOKEN_RE.finditer(data.decode("latin-1")))

    def all_in_base64_parts(self, msg: Message) -> bool:
        """Whether every token landed in the payload of a base64 part, as the headers before it said.
        A body that only quotes such headers would get a token into its text: then the message is
        parsed again, whole."""
        found = 0
        for part in msg.walk():
            if part.is_multipart():
                continue
            payload = part.get_payload()
            if isinstance(payload, str) and TOKEN in payload:
                if str(part.get("content-transfer-encoding", "")).strip().lower() != "base64":
                    return False
                found += payload.count(TOKEN)
        return found == len(self.runs)


def set_aside(raw: bytes) -> tuple[bytes, SetAside | None]:
    if len(raw) < 4096 or TOKEN.encode() in raw:
        return raw, None
    aside = SetAside()
    out: list[bytes] = []
    pos = 0
    # Measured with bytes methods (find, slices, translate): a regex walking a run took as long
    # as parsing it.
    blank = raw.find(b"\n\n")
    while blank >= 0:
        end = _run_end(raw, blank + 2)
        if end is None:
            blank = raw.find(b"\n\n", blank + 2)
            continue
        start = blank + 2
        out += [raw[pos:start], aside.token(raw[start:end])]
        pos = end  # the run's last newline stays, after the token
        blank = raw.find(b"\n\n", end)
    if not aside.runs:
        return raw, None
    out.append(raw[pos:])
    return b"".join(out), aside


def _run_end(raw: bytes, start: int) -> int | None:
    """Where a run of base64 lines that starts a part at `start` ends (before its last newline), if
    there is one worth setting aside: lines of one width, a multiple of 4 (the run then decodes on
    its own), under headers that say base64. The last line (padding, or cut short) stays out."""
    width = raw.find(b"\n", start, start + 101) - start
    if width < 40 or width % 4:
        return None
    window = max(0, start - 2 - _HEADER_WINDOW)
    head_from = max(raw.rfind(b"\n\n", window, start - 2), raw.rfind(b"\n--", window, start - 2), window)
    if not _BASE64_CTE.search(raw, head_from, start - 1):
        return None
    ends = raw[start + width :: width + 1]  # where each line of the run should end
    lines = len(ends) - len(ends.lstrip(b"\n"))
    region = raw[start : start + lines * (width + 1)]
    rest = region.translate(None, _BASE64_ALPHABET)  # newlines, and whatever is not base64
    stray = rest.replace(b"\n", b"")
    if stray:  # the run stops at the line of the first character that is not base64
        lines = min(region.find(bytes([c])) for c in set(stray)) // (width + 1)
        region = region[: lines * (width + 1)]
        rest = region.translate(None, _BASE64_ALPHABET)
    end = start + len(region)
    if len(rest) != lines:  # a shorter line inside: the slow, exact way
        run = _lines_of(width).match(raw, start)
        end = run.end() if run else start
    if end - start < MIN_RUN_LINES * (width + 1):
        return None
    return end - 1


_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_LINES_OF: dict[int, re.Pattern[bytes]] = {}


def _lines_of(width: int) -> re.Pattern[bytes]:
    pattern = _LINES_OF.get(width)
    if pattern is None:
        pattern = _LINES_OF[width] = re.compile(rb"(?:[A-Za-z0-9+/]{%d}\n)+" % width)
    return pattern
