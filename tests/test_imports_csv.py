"""Bank CSV imports: encodings, delimiters, preambles, header languages, number and date formats."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from jobs.imports import TRANSACTION, ImportOptions, Record, detect, read_records
from jobs.imports.csv_headers import VOCABULARY, normalize
from jobs.imports.csv_values import decide_date_format, decide_decimal, parse_amount
from jobs.parse import InputError, Limits, parse_objects

CSV = Path(__file__).parent / "fixtures" / "imports" / "csv"
GERMAN = CSV / "dkb-girokonto-2024-01.csv"
US = CSV / "us-checking-2024-01.csv"


def records(path: Path, columns: dict[str, str] | None = None) -> list[Record]:
    return list(read_records(path, detect(path), ImportOptions(columns=columns)))


def rows(path: Path, columns: dict[str, str] | None = None) -> list[tuple[str, float, str, str]]:
    return [
        (r.input["date"], r.input["amount"], r.input["currency"], r.input["description"])
        for r in records(path, columns)
    ]


def problems(path: Path, columns: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(InputError) as e:
        records(path, columns)
    return [str(p) for p in e.value.problems]


def write(tmp_path: Path, text: str, name: str = "bank.csv", encoding: str = "utf-8") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def test_german_export_cp1252_semicolons_preamble_soll_haben() -> None:
    assert detect(GERMAN) == "csv"
    recs = records(GERMAN)
    assert len(recs) == 9
    assert recs[0].origin == f"{GERMAN}:8"  # seven lines of preamble and header skipped
    assert recs[0].family == TRANSACTION
    assert recs[1].input == {
        "date": "2024-01-02",
        "description": "Hausverwaltung Bräuer — Miete Januar Wohnung 3.OG links",
        "amount": -1150.0,
        "currency": "EUR",
    }
    salary = recs[5].input
    assert (salary["date"], salary["amount"]) == ("2024-01-05", 3412.55)
    assert salary["description"].startswith("Müller & Söhne Ingenieurbüro GmbH")


def test_identical_rows_are_two_tasks_with_ids_stable_across_imports() -> None:
    first = records(GERMAN)
    coffees = [r for r in first if "Rischart" in r.input["description"]]
    assert len(coffees) == 2 and coffees[0].input == coffees[1].input
    assert coffees[0].custom_id != coffees[1].custom_id
    assert [r.custom_id for r in records(GERMAN)] == [r.custom_id for r in first]
    assert len({r.custom_id for r in first}) == 9


def test_us_export_month_first_debit_credit_and_balance() -> None:
    recs = records(US)
    assert [(r.input["date"], r.input["amount"]) for r in recs[:4]] == [
        ("2024-01-02", -52.37),
        ("2024-01-03", -118.2),
        ("2024-01-05", 3245.1),
        ("2024-01-08", -1150.0),
    ]
    assert recs[3].input["balance"] == 6187.45 and recs[0].input["currency"] == "USD"


@pytest.mark.parametrize(
    ("name", "first", "count"),
    [
        ("fr-compte-courant.csv", ("2024-01-05", -78.5, "EUR", "PRLV SEPA EDF CLIENTS PARTICULIERS"), 3),
        ("es-cuenta.csv", ("2024-01-02", -45.3, "EUR", "COMPRA TARJ. MERCADONA VALENCIA"), 3),
        (
            "nl-ing-betaalrekening.csv",
            ("2024-01-03", -23.47, "EUR", "Albert Heijn 1427 UTRECHT — Pasvolgnr: 004 03-01-2024 17:42"),
            3,
        ),
        ("pt-conta-ordem.csv", ("2024-01-02", -37.82, "EUR", "COMPRA CONTINENTE LISBOA"), 3),
    ],
)
def test_french_spanish_dutch_portuguese_headers(name: str, first: tuple[Any, ...], count: int) -> None:
    got = rows(CSV / name)
    assert len(got) == count and got[0] == first


def test_french_space_thousands_and_dutch_af_bij_direction() -> None:
    assert rows(CSV / "fr-compte-courant.csv")[2][1] == 2850.0
    assert [r[1] for r in rows(CSV / "nl-ing-betaalrekening.csv")] == [-23.47, -104.0, 2915.33]


def test_records_are_valid_categorize_tasks_with_built_in_categories() -> None:
    recs = records(GERMAN) + records(US) + records(CSV / "nl-ing-betaalrekening.csv")
    tasks = [{"custom_id": r.custom_id, "kind": "transaction.categorize", "input": r.input} for r in recs]
    parsed = parse_objects(tasks, "bank", Limits())
    assert len(parsed) == len(recs)


def test_unknown_headers_list_what_was_found_and_the_columns_line_to_write() -> None:
    (msg,) = problems(CSV / "unknown-headers.csv")
    assert "headers found in line 1: 'When', 'What', 'How much'" in msg
    assert msg.endswith('name them with --columns date=When,amount="How much",description=What')


def test_an_explicit_mapping_reads_any_headers_and_may_fix_the_currency() -> None:
    got = rows(
        CSV / "unknown-headers.csv", {"date": "When", "amount": "How much", "description": "What", "currency": "GBP"}
    )
    assert got == [
        ("2024-01-02", -3.5, "GBP", "Coffee with Sam"),
        ("2024-01-03", -27.9, "GBP", "Train ticket to Leeds"),
    ]


def test_a_mapping_to_a_missing_header_or_unknown_role_is_refused() -> None:
    (msg,) = problems(CSV / "unknown-headers.csv", {"date": "Wann", "amount": "How much", "description": "What"})
    assert "--columns names 'date=Wann', but the header row (line 1) has no such column" in msg
    (msg,) = problems(CSV / "unknown-headers.csv", {"day": "When"})
    assert "unknown role 'day'" in msg


def test_a_mapping_overrides_a_recognized_column(tmp_path: Path) -> None:
    p = write(tmp_path, "Date,Description,Memo,Amount\n2024-03-01,POS 4417,Groceries at Safeway,-12.00\n")
    assert rows(p)[0][3] == "POS 4417"
    assert rows(p, {"description": "Memo"})[0][3] == "Groceries at Safeway"


def test_encodings_bom_utf16_and_tab_delimiter(tmp_path: Path) -> None:
    text = US.read_text()
    utf16 = write(tmp_path, text.replace(",", "\t").replace('"4\t210.55"', "4210.55"), "export.txt", "utf-16")
    assert detect(utf16) == "csv"
    assert len(records(utf16)) == 8
    bom = write(tmp_path, "\ufeff" + text, "bom.csv")
    assert rows(bom) == rows(US)


def test_excel_sep_line_and_trailing_balance_lines(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "sep=;\nDatum;Verwendungszweck;Betrag\n03.01.2024;Bäckerei;-3,80\n04.01.2024;Kiosk;-2,10\n\n"
        "Kontostand am 04.01.2024:;;1.234,56 EUR\n",
    )
    assert [r[1] for r in rows(p)] == [-3.8, -2.1]


def test_ambiguous_dates_are_decided_by_the_header_language(tmp_path: Path) -> None:
    en = write(tmp_path, "Date,Description,Amount\n01/02/2024,A,-1.00\n03/04/2024,B,-2.00\n", "en.csv")
    de = write(tmp_path, "Datum;Beschreibung;Betrag\n01/02/2024;A;-1,00\n03/04/2024;B;-2,00\n", "de.csv")
    assert [r[0] for r in rows(en)] == ["2024-01-02", "2024-03-04"]
    assert [r[0] for r in rows(de)] == ["2024-02-01", "2024-04-03"]
    # One value that tells day from month decides for the whole column.
    uk = write(tmp_path, "Date,Description,Amount\n01/02/2024,A,-1.00\n25/04/2024,B,-2.00\n", "uk.csv")
    assert [r[0] for r in rows(uk)] == ["2024-02-01", "2024-04-25"]


SECRET = "Kanzlei Dr. Vogel Scheidung"


def test_impossible_and_mixed_dates_are_located_errors(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        f"Buchungstag;Verwendungszweck;Betrag\n02.01.2024;{SECRET};-10,00\n31.02.2024;{SECRET};-1,00\n"
        f"2024-01-05;{SECRET};-2,00\n",
    )
    got = problems(p)
    assert got == [
        f"{p}:3: column 'Buchungstag': is not a real date (the column's format is DD.MM.YYYY); fix the row",
        f"{p}:4: column 'Buchungstag': is not a date in the column's format DD.MM.YYYY (the other rows use it); "
        "give the column one date format",
    ]
    assert not any(SECRET in m for m in got)


def test_bad_and_mixed_amounts_are_located_errors(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        f"Date,Description,Amount\n2024-01-02,{SECRET},-10.00\n2024-01-03,{SECRET},ten dollars\n"
        f'2024-01-04,{SECRET},"1.150,00"\n2024-01-05,{SECRET},\n',
    )
    got = problems(p)
    assert got == [
        f"{p}:3: column 'Amount': is not an amount in the column's number format (like -1,150.00); fix the row",
        f"{p}:4: column 'Amount': is not an amount in the column's number format (like -1,150.00); fix the row",
        f"{p}:5: column 'Amount': is empty; every transaction needs an amount",
    ]


def test_header_without_rows_and_rows_of_the_wrong_width(tmp_path: Path) -> None:
    assert (
        "header row but no dated transactions" in problems(write(tmp_path, "Date,Description,Amount\n", "empty.csv"))[0]
    )
    p = write(tmp_path, "Date,Description,Amount\n2024-01-02,A,-1.00\n2024-01-03\n2024-01-04,B,-2.00\n", "w.csv")
    assert problems(p) == [f"{p}:3: has 1 fields where the header has 3; fix the row's quoting"]


@pytest.mark.parametrize(
    ("raw", "decimal", "value"),
    [
        ("-1.150,00", ",", "-1150.00"),
        ("1.150,00-", ",", "-1150.00"),
        ("+3.000,00", ",", "3000.00"),
        ("1 150,00", ",", "1150.00"),
        ("1\u202f150,00 €", ",", "1150.00"),
        ("1,150.00", ".", "1150.00"),
        ("(12.50)", ".", "-12.50"),
        ("$ -12.50", ".", "-12.50"),
        ("1'150.00", ".", "1150.00"),
        ("12.50 DR", ".", "-12.50"),
        ("4,75", ",", "4.75"),
        ("1,150.00", ",", None),
        ("12.50", ",", None),
        ("1.150.00", ".", None),
        ("abc", ".", None),
        ("", ".", None),
    ],
)
def test_amount_formats(raw: str, decimal: str, value: str | None) -> None:
    got = parse_amount(raw, decimal)
    assert got == (Decimal(value) if value is not None else None)


def test_decimal_separator_is_decided_from_the_column() -> None:
    assert decide_decimal(["-1.150,00", "2.450,00"], None) == (",", False)
    assert decide_decimal(["1,150.00", "-4.75"], "de") == (".", False)
    assert decide_decimal(["1.150", "12"], "de") == (",", False)  # thousands only: 1.150 is 1150
    assert decide_decimal(["12", "13"], "fr") == (",", False)
    assert decide_decimal(["12", "13"], "en") == (".", False)
    assert decide_decimal(["1.150,00", "4.75"], None)[1] is True


def test_date_formats_and_times() -> None:
    fmt, _ = decide_date_format(["2024-01-05 13:45:00", "2024-01-06T09:00:00Z"], "en")
    assert fmt is not None and fmt.label == "YYYY-MM-DD"
    fmt, _ = decide_date_format(["15 Jan 2024", "3 Feb 2024"], "en")
    assert fmt is not None and fmt.label == "DD MMM YYYY"
    fmt, likely = decide_date_format(["05.01.2024", "2024-01-06", "07.01.2024"], "de")
    assert fmt is None and likely is not None and likely.label == "DD.MM.YYYY"


def test_header_vocabulary_covers_six_languages_without_clashes() -> None:
    langs = {lang for _role, _rank, ls in VOCABULARY.values() for lang in ls}
    assert langs >= {"en", "de", "fr", "es", "nl", "pt"}
    assert normalize("Auftraggeber / Begünstigter") == "auftraggeber begunstigter"
    assert normalize("Date opération") == "date operation"
