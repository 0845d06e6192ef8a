"""What an import produces (Record), what it is told (ImportOptions), and the stable ids of records.

Ids come from the record itself, never from its place in a file, so the same message or bank row
imported twice (a nightly cron over overlapping exports) is the same task both times.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from jobs import constants as c

EMAIL = "email"
TRANSACTION = "transaction"
# The kind a record of each family becomes when the batch names none.
DEFAULT_KINDS = {EMAIL: "email.triage", TRANSACTION: "transaction.categorize"}
# Long enough for any real Message-ID or FITID, short of the custom_id limit with room for a suffix.
MAX_NATURAL_ID = 200


@dataclass
class Record:
    """One imported item: a message or a bank transaction.

    `input` fits the input model of the family's kinds (jobs.kinds.email.Email,
    jobs.kinds.transaction.Transaction). `origin` says where it came from, for error messages:
    "inbox.mbox:1234" (the line of its From_ line), "bank.csv:17", "maildir/cur/1705.M1:2,S".
    """

    custom_id: str
    family: str
    input: dict[str, Any]
    origin: str


@dataclass(frozen=True)
class ImportOptions:
    """How to read an import.

    columns: an explicit CSV column mapping, role -> header name (`--columns date=Datum,...`);
        roles: date, amount, debit, credit, direction, description, payee, currency, balance, id.
        `currency` may also be a fixed ISO code (`currency=BRL`) when the file has no such column.
    context_tokens: the model context a task must fit; long mail bodies are cut to fit it.
    max_file_bytes: files (and folders, all their files together) over this are refused unread.
    kind: the kind the records will become (None: the family's default); it sets the prompt
        and max_tokens that a mail body's budget leaves room for.
    options: the batch's task options (`--options`), e.g. max_tokens or categories, for the same budget.
    """

    columns: dict[str, str] | None = None
    context_tokens: int = c.DEFAULT_CONTEXT_TOKENS
    max_file_bytes: int = c.DEFAULT_MAX_FILE_BYTES
    kind: str | None = None
    options: dict[str, Any] | None = None


def digest(*parts: str) -> str:
    """A short, stable hash of some text parts (hex, 96 bits: no collision in any real mailbox)."""
    # Each part then a unit separator, hashed in one call.
    return hashlib.sha256("".join(p + "\x1f" for p in parts).encode("utf-8", "surrogatepass")).hexdigest()[:24]


def content_digest(data: dict[str, Any]) -> str:
    return digest(json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":")))


def natural_id(value: str | None) -> str | None:
    """An id taken from the data (Message-ID, FITID) if it can be a custom_id as it is, else None."""
    if not value:
        return None
    value = value.strip()
    if not value or len(value) > MAX_NATURAL_ID:
        return None
    if value.isascii() and value.isprintable():
        return value  # most ids: no ASCII character is a format or separator character
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value):
        return None
    return value


@dataclass
class IdKeeper:
    """Makes custom_ids unique within one import without depending on order where it can.

    Transactions: identical rows are told apart by their occurrence (the 2nd identical coffee of a
    day is "#2"), so re-importing the file, or an overlapping export, gives the same ids.
    Mail: the same message twice in one mailbox is kept once; two different messages sharing a
    Message-ID (a broken mailer) get a content hash after the second one's id.
    """

    seen: dict[str, int] = field(default_factory=dict)
    mails: dict[str, dict[str, Any]] = field(default_factory=dict)

    def occurrence(self, key: str) -> int:
        n = self.seen.get(key, 0) + 1
        self.seen[key] = n
        return n

    def mail_id(self, natural: str, fields: dict[str, Any]) -> str | None:
        """The id for a message (its input `fields`), or None when this exact message was already imported."""
        first = self.mails.get(natural)
        if first is None:
            self.mails[natural] = fields
            return natural
        if first == fields:
            return None
        alt = f"{natural}#{content_digest(fields)[:12]}"
        if alt in self.mails:
            return None
        self.mails[alt] = fields
        return alt


def cap(text: str, limit: int) -> str:
    """Text cut to `limit` characters, with an ellipsis where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
