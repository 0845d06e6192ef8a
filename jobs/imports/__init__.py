"""Importing what people have: mailboxes (mbox, Maildir, .eml) and bank exports (CSV, OFX/QFX).

    fmt = detect(path)                 # "tasks", "mbox", "maildir", "eml-dir", "eml", "csv", "ofx"
    if fmt != "tasks":                 # task files stay with jobs.parse
        for record in read_records(path, fmt, ImportOptions(context_tokens=8192)):
            ...                        # record.custom_id, .family, .input, .origin
    # stdin: fmt = sniff(raw[:65536], Path("-"), "<stdin>"); read_bytes(raw, "<stdin>", fmt, opts)

Records are streamed. Bad input raises jobs.parse.InputError, located (file, line or message,
column), possibly after some records were yielded: consume the whole iterator before enqueueing
anything. Errors name fields and headers, never the content of a message or a row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from jobs.imports.detect import (
    CSV,
    EML,
    EML_DIR,
    FORMATS,
    MAIL_FORMATS,
    MAILDIR,
    MBOX,
    OFX,
    TASKS,
    TRANSACTION_FORMATS,
    detect,
    sniff,
)
from jobs.imports.reading import fail, too_big
from jobs.imports.records import DEFAULT_KINDS, EMAIL, TRANSACTION, ImportOptions, Record
from jobs.kinds import KINDS
from jobs.kinds.email import Email
from jobs.kinds.transaction import Transaction

__all__ = [
    "DEFAULT_KINDS",
    "EMAIL",
    "FORMATS",
    "MAIL_FORMATS",
    "TASKS",
    "TRANSACTION",
    "TRANSACTION_FORMATS",
    "ImportOptions",
    "Record",
    "detect",
    "family_of",
    "read_bytes",
    "read_records",
    "sniff",
]


def family_of(fmt: str) -> str | None:
    """ "email" or "transaction" for an import format, None for "tasks"."""
    if fmt in MAIL_FORMATS:
        return EMAIL
    if fmt in TRANSACTION_FORMATS:
        return TRANSACTION
    return None


def read_records(path: Path, fmt: str, opts: ImportOptions) -> Iterator[Record]:
    """The records of an import, one at a time. `fmt` is what detect() returned (not "tasks")."""
    source = str(path)
    family = family_of(fmt)
    if family is None:
        raise ValueError(f"{fmt!r} is not an import format; read task files with jobs.parse")
    _check_kind(opts.kind, family, source)
    # Imported lazily: a CLI that submits a JSON file should not pay for lxml and ofxtools.
    if fmt == MBOX:
        from jobs.imports.mailboxes import read_mbox

        return read_mbox(path, source, opts)
    if fmt == MAILDIR:
        from jobs.imports.mailboxes import read_maildir

        return read_maildir(path, source, opts)
    if fmt == EML_DIR:
        from jobs.imports.mailboxes import read_eml_dir

        return read_eml_dir(path, source, opts)
    if fmt == EML:
        from jobs.imports.mailboxes import read_eml

        return read_eml(path, source, opts)
    if fmt == CSV:
        from jobs.imports.bank_csv import read_csv

        return read_csv(path, source, opts)
    from jobs.imports.ofx import read_ofx

    assert fmt == OFX
    return read_ofx(path, source, opts)


def read_bytes(raw: bytes, source: str, fmt: str, opts: ImportOptions) -> Iterator[Record]:
    """The records of an import given as bytes (stdin): an mbox, one message, a CSV or an OFX file;
    `fmt` is what sniff() said. Folders (Maildir, .eml files) have no bytes of their own."""
    family = family_of(fmt)
    if family is None or fmt in (MAILDIR, EML_DIR):
        raise ValueError(f"{fmt!r} cannot be read from bytes")
    _check_kind(opts.kind, family, source)
    if len(raw) > opts.max_file_bytes:
        raise too_big(source, len(raw), opts.max_file_bytes, "the input")
    if fmt == MBOX:
        from jobs.imports.mailboxes import mbox_records

        return mbox_records(raw, source, opts)
    if fmt == EML:
        from jobs.imports.mailboxes import eml_records

        return eml_records(raw, source, opts)
    if fmt == CSV:
        from jobs.imports.bank_csv import csv_records

        return csv_records(raw, source, opts)
    from jobs.imports.ofx import ofx_records

    return ofx_records(raw, source)


def _check_kind(kind: str | None, family: str, source: str) -> None:
    """A --kind whose input is not this family's (a bank file as email.triage) is refused here;
    an unknown kind is left to the caller, which knows the kinds' names and spelling hints."""
    if kind is None or kind not in KINDS:
        return
    model = KINDS[kind].input_model
    fits = issubclass(model, Email) if family == EMAIL else issubclass(model, Transaction)
    if not fits:
        names = ", ".join(
            k for k, v in KINDS.items() if issubclass(v.input_model, Email if family == EMAIL else Transaction)
        )
        what = "mail" if family == EMAIL else "bank transactions"
        raise fail(source, f"--kind {kind} does not take {what}; use one of: {names}")
