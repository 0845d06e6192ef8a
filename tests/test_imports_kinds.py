"""The kinds' models as imports fill them: new optional email fields, transaction ids, default categories."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.kinds import KINDS
from jobs.kinds.email import Email
from jobs.kinds.transaction import DEFAULT_CATEGORIES, Transaction


def test_categorize_has_built_in_categories_when_a_task_gives_none() -> None:
    kind = KINDS["transaction.categorize"]
    opts = kind.options_model.model_validate({})
    assert opts.categories == DEFAULT_CATEGORIES  # type: ignore[attr-defined]
    data = Transaction.model_validate({"date": "2024-01-03", "description": "REWE Markt", "amount": -43.17})
    body = kind.request(data, opts, "json_schema")
    assert "groceries, restaurants, transport" in body["messages"][-1]["content"]
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["category"]["enum"] == DEFAULT_CATEGORIES
    # A task's own categories still win.
    assert kind.options_model.model_validate({"categories": ["food"]}).categories == ["food"]  # type: ignore[attr-defined]


def test_transaction_keeps_bank_id_and_balance_out_of_the_prompt() -> None:
    t = Transaction.model_validate(
        {"date": "2024-01-03", "description": "COFFEE", "amount": -4.75, "id": "202401030001", "balance": 3512.4}
    )
    assert t.as_text() == "2024-01-03 | COFFEE | -4.75 USD"
    with pytest.raises(ValidationError):
        Transaction.model_validate({"date": "2024-01-03", "description": "x", "amount": 1, "id": "x" * 256})


def test_email_takes_the_imported_fields_and_shows_what_helps() -> None:
    e = Email.model_validate(
        {
            "from": "ana@example.org",
            "to": "me@example.net",
            "cc": "bo@example.org",
            "subject": "Re: contract",
            "body": "See attached.",
            "message_id": "m-7731@mail.example.org",
            "in_reply_to": "m-7730@mail.example.org",
            "attachments": [
                {"name": "contract.pdf", "type": "application/pdf", "size": 182_000},
                {"type": "image/png"},
            ],
            "truncated": True,
        }
    )
    text = e.as_text()
    assert "Cc: bo@example.org" in text
    assert "Attachments: contract.pdf (application/pdf, 182 KB); (unnamed) (image/png, 0 bytes)" in text
    assert "(A reply to an earlier message in the thread.)" in text and "was cut" in text
    assert "m-773" not in text  # thread ids are for joining, not the model
    with pytest.raises(ValidationError):
        Email.model_validate({"from": "a", "body": "b", "attachments": [{"name": "x", "content": "JVBERi0x"}]})


def test_old_email_tasks_still_validate_unchanged() -> None:
    e = Email.model_validate({"from": "ana@example.org", "subject": "Friday?", "body": "Dentist at 4?"})
    assert e.as_text() == "From: ana@example.org\nSubject: Friday?\n\nDentist at 4?"
