"""Results as CSV rows: record fields, flattened answers, safe cells."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

import pytest

from producer.export import FieldsError, safe_cell, table, write_csv


@dataclass
class Done:
    custom_id: str
    kind: str
    input: dict[str, Any] | None
    parsed: Any = None
    error: dict[str, str] | None = None
    content: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


MAIL = {
    "from": "Zoé Martin <zoe@example.fr>",
    "subject": "Réunion lundi",
    "date": "2024-01-15T09:30:12+01:00",
    "body": "…",
}
COFFEE = {"date": "2024-01-03", "description": "Bäckerei Rischart", "amount": -3.8, "currency": "EUR"}


def read(outcomes: list[Any], fields: list[str] | None = None) -> list[dict[str, str]]:
    buf = io.StringIO(newline="")
    n = write_csv(outcomes, buf, fields)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue(), newline="")))
    assert n == len(rows)
    return rows


def test_mail_rows_have_the_record_fields_and_the_answer() -> None:
    triage = {"reason": "asks to confirm", "category": "work", "priority": 4, "needs_reply": True}
    rows = read([Done("m1", "email.triage", MAIL, triage)])
    assert list(rows[0]) == [
        "custom_id",
        "status",
        "error_code",
        "from",
        "subject",
        "date",
        "category",  # the kind's schema order, whatever order the model wrote
        "priority",
        "needs_reply",
        "reason",
    ]
    assert rows[0] == {
        "custom_id": "m1",
        "status": "completed",
        "error_code": "",
        "from": "Zoé Martin <zoe@example.fr>",
        "subject": "Réunion lundi",
        "date": "2024-01-15T09:30:12+01:00",
        "category": "work",
        "priority": "4",
        "needs_reply": "true",
        "reason": "asks to confirm",
    }


def test_transaction_rows_and_failures() -> None:
    rows = read(
        [
            Done(
                "t1",
                "transaction.categorize",
                COFFEE,
                {"category": "restaurants", "merchant": "Rischart", "confidence": 0.9},
            ),
            Done(
                "t2",
                "transaction.categorize",
                {**COFFEE, "amount": -1150.0},
                error={"code": "invalid_output", "message": "m"},
            ),
            Done("t3", "transaction.categorize", None, error={"code": "unreadable", "message": "m"}),
        ]
    )
    assert [(r["custom_id"], r["status"], r["error_code"], r["amount"], r["category"]) for r in rows] == [
        ("t1", "completed", "", "-3.80", "restaurants"),
        ("t2", "failed", "invalid_output", "-1150.00", ""),
        ("t3", "failed", "unreadable", "", ""),
    ]
    assert list(rows[0])[3:7] == ["date", "description", "amount", "currency"]


def test_nested_answers_are_dotted_and_lists_joined_or_json() -> None:
    answer = {
        "action_items": [{"task": "pay invoice", "owner": None, "due": "Friday"}],
        "dates": [],
        "amounts": [],
        "people": [],
        "extra": {"a": {"b": 1}, "tags": ["x", "y"]},
    }
    (row,) = read([Done("x1", "email.extract", MAIL, answer)])
    assert row["action_items"] == '[{"task":"pay invoice","owner":null,"due":"Friday"}]'
    assert row["dates"] == "" and row["extra.a.b"] == "1" and row["extra.tags"] == "x; y"


def test_an_answer_field_named_like_a_record_field_keeps_a_prefix() -> None:
    (row,) = read([Done("x1", "email.extract", MAIL, {"date": "2024-02-01", "what": "deadline"})])
    assert row["date"] == MAIL["date"] and row["answer.date"] == "2024-02-01" and row["what"] == "deadline"


def test_free_text_and_non_object_answers_get_one_column() -> None:
    rows = read([Done("c1", "chat", {"messages": []}, content="Hello there"), Done("c2", "chat", {}, parsed=[1, 2])])
    assert [r["answer"] for r in rows] == ["Hello there", "1; 2"]


def test_fields_choose_and_order_columns() -> None:
    outcomes = [
        Done("t1", "transaction.categorize", COFFEE, {"category": "restaurants", "merchant": "R", "confidence": 1.0})
    ]
    header, rows = table(outcomes, ["amount", "custom_id", "category", "error_message", "input.description"])
    assert header == ["amount", "custom_id", "category", "error_message", "input.description"]
    assert rows == [["-3.80", "t1", "restaurants", "", "Bäckerei Rischart"]]
    with pytest.raises(FieldsError, match=r"no column 'categroy' in these results; did you mean 'category'\?"):
        table(outcomes, ["categroy"])


def test_column_order_is_stable() -> None:
    a = Done("a", "extract", {}, {"z": 1, "m": 2})
    b = Done("b", "extract", {}, {"a": 3, "z": 4})
    assert table([a, b])[0] == table([a, b])[0] == ["custom_id", "status", "error_code", "z", "m", "a"]


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1+1", "' =1+1"),
        ("\r=1+1", "' =1+1"),
        ("-1150.00", "-1150.00"),
        ("+3.5", "+3.5"),
        ("1e5", "1e5"),
        ("a\x1b[2Jb\nc\u202ed", "a [2Jb c d"),
        ("plain", "plain"),
    ],
)
def test_cells_never_become_formulas_or_carry_controls(value: str, cell: str) -> None:
    assert safe_cell(value) == cell


def test_hostile_content_and_keys_are_made_safe_in_the_file() -> None:
    evil = {**MAIL, "subject": "=cmd|' /C calc'!A0", "from": "@evil\r\nInjected,row"}
    buf = io.StringIO(newline="")
    write_csv([Done("m1", "email.extract", evil, {"=key": "-x", "ok": "fine"})], buf)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2  # no injected row
    header, row = next(csv.reader([lines[0]])), next(csv.reader([lines[1]]))
    assert "'=key" in header
    assert "'=cmd|' /C calc'!A0" in row and "'@evil  Injected,row" in row and "'-x" in row


def test_record_columns_come_from_the_input_only() -> None:
    # A mail without a Subject header: the drafted reply's subject must not pass for the mail's.
    no_subject = {k: v for k, v in MAIL.items() if k != "subject"}
    draft = {"subject": "Re: your note", "body": "Thanks, see you Monday."}
    rows = read([Done("m1", "email.draft_reply", no_subject, draft), Done("m2", "email.draft_reply", MAIL, draft)])
    assert [(r["subject"], r["answer.subject"]) for r in rows] == [
        ("", "Re: your note"),
        (MAIL["subject"], "Re: your note"),
    ]
    # Transactions too: a record column the input lacks stays empty, whatever the answer holds.
    (row,) = read([Done("t1", "transaction.categorize", {"date": "2024-01-03", "amount": 1.0}, {"description": "x"})])
    assert row["description"] == "" and row["answer.description"] == "x" and row["currency"] == ""
    _header, cells = table([Done("m1", "email.draft_reply", no_subject, draft)], ["subject", "answer.subject"])
    assert cells == [["", "Re: your note"]]
