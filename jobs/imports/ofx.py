"""OFX and QFX statements (1.x SGML and 2.x XML), parsed by ofxtools.

Transactions are read from ofxtools' element tree rather than its typed model: the model turns
DTPOSTED into UTC, which moves a European bank's midnight bookings to the day before, and it
refuses whole files over one optional element a bank got wrong.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

from ofxtools.Parser import OFXTree

from jobs.imports.reading import fail, read_bounded
from jobs.imports.records import TRANSACTION, IdKeeper, ImportOptions, Record, cap, digest, natural_id
from jobs.parse import MAX_REPORTED, InputError, Problem

# ofxtools logs every tag's text at DEBUG: transaction data must not reach a log.
logging.getLogger("ofxtools").setLevel(logging.WARNING)

# Statement elements: bank (STMTRS) and credit card (CCSTMTRS) statements.
_STATEMENTS = ("STMTRS", "CCSTMTRS")
_ACCOUNT_TYPES = {
    "CHECKING": "checking",
    "SAVINGS": "savings",
    "MONEYMRKT": "money market",
    "CREDITLINE": "credit line",
}


def read_ofx(path: Path, source: str, opts: ImportOptions) -> Iterator[Record]:
    return ofx_records(read_bounded(path, source, opts.max_file_bytes), source)


def ofx_records(raw: bytes, source: str) -> Iterator[Record]:
    """The records of an OFX/QFX file's bytes (checked before the first is yielded)."""
    tree = OFXTree()
    try:
        tree.parse(io.BytesIO(raw))
    except Exception as e:
        # ofxtools' messages quote the markup they choke on: the type is enough to say, the
        # content is not ours to print.
        raise fail(
            source,
            f"is not a readable OFX/QFX file ({type(e).__name__} in its header or tags); "
            "export it again from your bank",
        ) from e
    if not raw.rstrip().upper().endswith(b"</OFX>"):
        # ofxtools closes what a cut-off file left open; the last transactions would be lost unseen.
        raise fail(source, "the file ends before its closing </OFX> tag; it looks cut off: export it again")
    root = tree.getroot()
    if root is None:
        raise fail(source, "is not a readable OFX/QFX file (no <OFX> element); export it again from your bank")
    statements = [s for tag in _STATEMENTS for s in root.iter(tag)]
    transactions = [(s, t) for s in statements for t in s.iter("STMTTRN")]
    if not transactions:
        what = "no statement (STMTRS or CCSTMTRS)" if not statements else "a statement without transactions (STMTTRN)"
        raise fail(source, f"the OFX file has {what}; export a date range that has transactions")
    yield from _records(transactions, source)


def _records(transactions: list[tuple[Element, Element]], source: str) -> Iterator[Record]:
    ids = IdKeeper()
    problems: list[Problem] = []
    total = 0
    records = []
    for n, (stmt, trn) in enumerate(transactions, 1):
        where = f"{source}: transaction {n}"
        try:
            records.append(_record(stmt, trn, where, ids))
        except _Bad as e:
            total += 1
            if len(problems) < MAX_REPORTED:
                problems.append(Problem(f"{where}: {e.field}", e.message))
    if problems:
        raise InputError(source, problems, total=total)
    yield from records


class _Bad(Exception):
    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message


def _text(el: Element | None, path: str) -> str:
    found = el.find(path) if el is not None else None
    return (found.text or "").strip() if found is not None else ""


def _record(stmt: Element, trn: Element, where: str, ids: IdKeeper) -> Record:
    posted = _text(trn, "DTPOSTED")
    if len(posted) < 8 or not posted[:8].isdigit():
        raise _Bad("DTPOSTED", "is missing or not an OFX date (YYYYMMDD...)")
    day = f"{posted[:4]}-{posted[4:6]}-{posted[6:8]}"
    if not ("01" <= posted[4:6] <= "12" and "01" <= posted[6:8] <= "31"):
        raise _Bad("DTPOSTED", "is not a real date")
    amount = _amount(_text(trn, "TRNAMT"))
    currency = _text(trn, "CURRENCY/CURSYM") or _text(trn, "ORIGCURRENCY/CURSYM") or _text(stmt, "CURDEF") or "USD"
    name = _text(trn, "NAME") or _text(trn, "PAYEE/NAME")
    memo = _text(trn, "MEMO")
    description = " — ".join(dict.fromkeys(t for t in (name, memo) if t)) or _text(trn, "TRNTYPE") or "(no description)"
    data: dict[str, Any] = {
        "date": day,
        "description": cap(" ".join(description.split()), 2000),
        "amount": float(amount),
        "currency": cap(currency.upper(), 10),
    }
    account = _account(stmt)
    if account:
        data["account"] = account
    fitid = natural_id(_text(trn, "FITID"))
    if fitid:
        data["id"] = fitid
        # FITIDs are unique per account only: the account (hashed, never in clear in an id)
        # keeps a checking and a card statement of one bank from sharing ids.
        acct = _text(stmt, "BANKACCTFROM/ACCTID") or _text(stmt, "CCACCTFROM/ACCTID")
        scope = "@" + digest(_text(stmt, "BANKACCTFROM/BANKID"), acct)[:8] if acct else ""
        n = ids.occurrence(fitid + scope)
        custom_id = fitid + scope + (f"#{n}" if n > 1 else "")
    else:
        key = digest(day, str(amount), data["currency"], data["description"], account or "")
        custom_id = "txn-" + digest(key, str(ids.occurrence(key)))
    return Record(custom_id=custom_id, family=TRANSACTION, input=data, origin=where)


def _amount(text: str) -> Decimal:
    # OFX writes a decimal point; some European banks write a comma.
    try:
        value = Decimal(text.replace(",", "."))
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise _Bad("TRNAMT", "is missing or not a number")
    return value


def _account(stmt: Element) -> str | None:
    """The account as the model may see it: its type and last four digits, never the whole number."""
    acct = _text(stmt, "BANKACCTFROM/ACCTID")
    kind = _ACCOUNT_TYPES.get(_text(stmt, "BANKACCTFROM/ACCTTYPE"), "bank account")
    if not acct:
        acct = _text(stmt, "CCACCTFROM/ACCTID")
        kind = "credit card"
    if not acct:
        return None
    return f"{kind} …{acct[-4:]}"
