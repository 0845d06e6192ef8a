"""OFX/QFX imports: 1.x SGML and 2.x XML statements, ids from FITIDs."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.imports import ImportOptions, Record, detect, read_records
from jobs.kinds.transaction import Transaction
from jobs.parse import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "imports"
SGML = FIXTURES / "checking-ofx1.qfx"
XML = FIXTURES / "creditcard-ofx2.ofx"


def records(path: Path) -> list[Record]:
    return list(read_records(path, detect(path), ImportOptions()))


def test_ofx1_sgml_checking_statement() -> None:
    assert detect(SGML) == "ofx"
    recs = records(SGML)
    assert len(recs) == 5
    assert recs[0].input == {
        "date": "2024-01-03",
        "description": "BLUE BOTTLE COFFEE #12 — POS PURCHASE CARD 4417",
        "amount": -4.75,
        "currency": "USD",
        "account": "checking …7892",
        "id": "202401030001",
    }
    assert recs[3].input["amount"] == -1150.0 and recs[2].input["amount"] == 2450.0
    assert recs[0].origin == f"{SGML}: transaction 1"


def test_ofx2_xml_credit_card_keeps_the_bank_s_own_date() -> None:
    assert detect(XML) == "ofx"
    recs = records(XML)
    # 20240202000000 [+1:CET] is the 2nd in Paris, though the 1st in UTC.
    assert [(r.input["date"], r.input["amount"], r.input["currency"]) for r in recs] == [
        ("2024-02-02", -23.9, "EUR"),
        ("2024-02-06", -64.0, "EUR"),
        ("2024-02-10", 15.99, "EUR"),
    ]
    assert recs[0].input["account"] == "credit card …8812"


def test_ids_are_fitids_scoped_to_their_account_and_stable() -> None:
    recs = records(SGML)
    ids = [r.custom_id for r in recs]
    assert ids == [r.custom_id for r in records(SGML)]
    assert len(set(ids)) == 5
    assert all(cid.startswith(r.input["id"] + "@") for cid, r in zip(ids, recs, strict=True))
    # Two identical coffees, two FITIDs, two tasks; the account number itself is in no id.
    assert recs[0].input["description"] == recs[1].input["description"]
    assert not any("0004417892" in cid for cid in ids)


def test_the_model_sees_the_transaction_not_its_ids() -> None:
    shown = Transaction.model_validate(records(SGML)[0].input).as_text()
    assert "202401030001" not in shown and "BLUE BOTTLE COFFEE" in shown


def test_an_ofx_without_transactions_is_refused(tmp_path: Path) -> None:
    text = SGML.read_text()
    start, end = text.index("<STMTTRN>"), text.rindex("</STMTTRN>") + len("</STMTTRN>")
    empty = tmp_path / "empty.ofx"
    empty.write_text(text[:start] + text[end:])
    with pytest.raises(InputError, match="a statement without transactions"):
        records(empty)


def test_broken_ofx_is_refused_without_quoting_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.qfx"
    bad.write_text(XML.read_text().replace("<NAME>SNCF Connect</NAME>", "<SECRETPAYEE>Dr Vogel</WRONG>"))
    with pytest.raises(InputError) as e:
        records(bad)
    assert "is not a readable OFX/QFX file" in str(e.value)
    assert "Vogel" not in str(e.value) and "SECRETPAYEE" not in str(e.value)


def test_a_cut_off_ofx_is_refused(tmp_path: Path) -> None:
    cut = tmp_path / "cut.qfx"
    text = SGML.read_text()
    cut.write_text(text[: text.index("<NAME>PARKVIEW")])
    with pytest.raises(InputError, match="ends before its closing </OFX> tag; it looks cut off"):
        records(cut)


def test_a_bad_amount_is_located(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ofx"
    bad.write_text(XML.read_text().replace("<TRNAMT>-64.00</TRNAMT>", "<TRNAMT>n/a</TRNAMT>"))
    with pytest.raises(InputError) as e:
        records(bad)
    assert [str(p) for p in e.value.problems] == [f"{bad}: transaction 2: TRNAMT: is missing or not a number"]
