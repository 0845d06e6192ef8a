"""Bank CSV exports: encoding, delimiter, preamble, header names, number and date formats.

Read in two passes over the decoded text: the first finds the table and collects each column's
values to decide its formats, the second turns rows into records. Every problem is reported with
its line and column header, never with the cell's content.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from jobs.imports import csv_headers as h
from jobs.imports.csv_values import (
    DATE_FORMATS,
    DateFormat,
    decide_date_format,
    decide_decimal,
    looks_like_date,
    parse_amount,
    strip_time,
    symbol_currency,
)
from jobs.imports.reading import fail, nul_at, read_bounded
from jobs.imports.records import TRANSACTION, IdKeeper, ImportOptions, Record, cap, digest, natural_id
from jobs.parse import MAX_REPORTED, InputError, Problem

DELIMITERS = (";", ",", "\t", "|")
# The header row is looked for in the first lines only: preambles are a few lines of account data.
HEADER_SEARCH_ROWS = 40
DEFAULT_CURRENCY = {"en": "USD", "de": "EUR", "fr": "EUR", "es": "EUR", "nl": "EUR", "pt": "EUR"}
_DEBIT_WORDS = {"af", "d", "dr", "debit", "debet", "s", "soll", "debito", "out", "-"}
_CREDIT_WORDS = {"bij", "c", "cr", "credit", "h", "haben", "credito", "in", "+"}
MONEY_ROLES = ("amount", "debit", "credit", "balance")
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xf4][\x80-\xbf]+")


@dataclass
class Table:
    delimiter: str
    header_row: int  # 0-based index among the csv records
    header: list[str]
    layout: h.Layout


def read_csv(path: Path, source: str, opts: ImportOptions) -> Iterator[Record]:
    return csv_records(read_bounded(path, source, opts.max_file_bytes), source, opts)


def csv_records(raw: bytes, source: str, opts: ImportOptions) -> Iterator[Record]:
    """The records of a bank CSV's bytes."""
    text = decode(raw, source)
    delimiter, text = _excel_sep_line(text)
    table = find_table(text, source, opts.columns, delimiter)
    yield from _records(text, table, source)


def decode(raw: bytes, source: str) -> str:
    """The text of a CSV: UTF-16 or UTF-8 by their byte-order marks, else UTF-8 if it is valid,
    else Windows-1252 (what German and French Excel save), line by line where the two are mixed."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as e:
            raise fail(source, "the file starts like UTF-16 but is not valid UTF-16; save it as UTF-8") from e
    nul = nul_at(raw, source)
    if nul:
        raise fail(source, "the file looks binary (it contains NUL bytes), not a CSV export", nul)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if not _UTF8_SEQUENCE.search(raw):
        return _decode_line(raw)
    # Some lines UTF-8, some not (rows appended by another program): each line on its own.
    return "".join(_decode_line(line) for line in raw.splitlines(keepends=True))


def _decode_line(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        try:
            return line.decode("cp1252")
        except UnicodeDecodeError:
            return line.decode("latin-1")


def _excel_sep_line(text: str) -> tuple[str | None, str]:
    # Excel writes "sep=;" as a first line to say the delimiter; it is not part of the table.
    first, _, rest = text.partition("\n")
    if first.strip().lower().startswith("sep=") and len(first.strip()) == 5:
        return first.strip()[4], rest
    return None, text


def _reader(text: str, delimiter: str) -> Iterator[list[str]]:
    return csv.reader(_lines(text), delimiter=delimiter, skipinitialspace=True)


def _lines(text: str) -> Iterator[str]:
    """The lines of a text with their ends, one at a time: an io.StringIO would copy the whole
    text into four bytes a character, for each of the passes."""
    pos = 0
    while True:
        end = text.find("\n", pos)
        if end < 0:
            if pos < len(text):
                yield text[pos:]
            return
        yield text[pos : end + 1]
        pos = end + 1


def _sample(text: str, delimiter: str, n: int) -> list[list[str]]:
    rows = []
    try:
        for row in _reader(text, delimiter):
            rows.append(row)
            if len(rows) >= n:
                break
    except csv.Error:
        pass
    return rows


def find_table(text: str, source: str, mapping: dict[str, str] | None, delimiter: str | None) -> Table:
    """The delimiter and header row: the first row (within the first lines, after any preamble)
    whose names give a date, an amount and a description, for the delimiter giving most roles."""
    if mapping:
        unknown = sorted(set(mapping) - set(h.ROLES))
        if unknown:
            raise fail(source, f"--columns names an unknown role {unknown[0]!r}; the roles are: {', '.join(h.ROLES)}")
    best: Table | None = None
    for delim in (delimiter,) if delimiter else DELIMITERS:
        for i, row in enumerate(_sample(text, delim, HEADER_SEARCH_ROWS)):
            if len(row) < 2:
                continue
            layout = h.from_mapping(row, mapping) if mapping else h.recognize(row)
            if layout is None or not layout.complete():
                continue
            if best is None or len(layout.columns) > len(best.layout.columns):
                best = Table(delim, i, row, layout)
            break
    if best is None:
        raise _unrecognized(text, source, mapping, delimiter)
    return best


def _records(text: str, table: Table, source: str) -> Iterator[Record]:
    cols = table.layout.columns
    width = len(table.header)
    needed = max(cols.values()) + 1
    # Pass 1: where the data ends (banks append balance lines below the table), and every value
    # of the date and money columns, to decide their formats from the whole column.
    last = -1
    # Each distinct value with the line it first appears on (values repeat: dates a lot).
    dates: dict[str, int] = {}
    money: dict[str, int] = {}
    date_like: dict[str, bool] = {}
    money_cols = [cols[r] for r in MONEY_ROLES if r in cols]
    for i, row in _data_rows(text, table, source):
        if not "".join(row).strip() or not _shaped(row, width, needed):
            continue
        d = row[cols["date"]].strip()
        if d not in date_like:
            date_like[d] = looks_like_date(d)
            dates[d] = i
        if date_like[d]:
            last = i
        for c in money_cols:
            if c < len(row) and row[c].strip() and row[c] not in money:
                money[row[c]] = i
    if last < 0:
        raise fail(source, "the CSV has a header row but no dated transactions under it")
    # Rows after the last dated one are the bank's notes and balances below the table.
    date_values = [d for d, i in dates.items() if i <= last]
    money_values = [m for m, i in money.items() if i <= last]
    lang = table.layout.language
    date_format, likely = decide_date_format(date_values, lang)
    decimal, _mixed = decide_decimal(money_values, lang)  # a value of the other format is reported by its row
    symbols = {sym for raw in money_values[:200] if (sym := symbol_currency(raw))}
    layout = table.layout
    currency = (
        layout.fixed_currency
        or layout.header_currency
        or (symbols.pop() if len(symbols) == 1 else None)
        or DEFAULT_CURRENCY.get(lang or "", "USD")
    )
    # Pass 2.
    rows = _RowReader(table, source, date_format or likely, date_format is None, decimal, currency)
    for i, row in _data_rows(text, table, source):
        if i > last:
            break
        record = rows.read(row, i)
        if record is not None and not rows.problems:
            yield record
    if rows.problems:
        raise InputError(source, rows.problems[:MAX_REPORTED], total=rows.total)


def _data_rows(text: str, table: Table, source: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each row under the header."""
    reader = _reader(text, table.delimiter)
    line = 0
    try:
        for index, row in enumerate(reader):
            start, line = line + 1, reader.line_num  # type: ignore[attr-defined]
            if index > table.header_row:
                yield start, row
    except csv.Error as e:
        raise fail(source, f"the CSV is malformed ({e}); export it again", f"{source}:{line + 1}") from e


def _shaped(row: list[str], width: int, needed: int) -> bool:
    """A row of the table (not a trailing balance line): as many cells as the header, or more
    that are empty, or fewer that are still enough for the columns used."""
    if len(row) == width:
        return True
    if len(row) > width:
        return not any(c.strip() for c in row[width:])
    return len(row) >= needed and len(row) >= width - 1


class _RowReader:
    def __init__(
        self, table: Table, source: str, date_format: DateFormat | None, dates_mixed: bool, decimal: str, currency: str
    ):
        self.cols = table.layout.columns
        self.header = table.header
        self.width = len(table.header)
        self.needed = max(self.cols.values()) + 1
        self.source = source
        self.date_format = date_format
        self.dates_mixed = dates_mixed
        self.decimal = decimal
        self.currency = currency
        self.ids = IdKeeper()
        self.problems: list[Problem] = []
        self.total = 0
        self._date_cache: dict[str, str | None] = {}

    def problem(self, line: int, role: str | None, message: str) -> None:
        self.total += 1
        if len(self.problems) < MAX_REPORTED:
            where = f"{self.source}:{line}"
            if role is not None:
                where += f": column {self.header[self.cols[role]].strip()!r}"
            self.problems.append(Problem(where, message))

    def cell(self, row: list[str], role: str) -> str:
        i = self.cols.get(role)
        return row[i].strip() if i is not None and i < len(row) else ""

    def read(self, row: list[str], line: int) -> Record | None:
        if not "".join(row).strip():
            return None
        if not _shaped(row, self.width, self.needed):
            self.problem(line, None, f"has {len(row)} fields where the header has {self.width}; fix the row's quoting")
            return None
        raw_date = self.cell(row, "date")
        amount = self.amount(row, line)
        if not raw_date:
            if amount is None and not any(self.cell(row, r) for r in MONEY_ROLES):
                return None  # a subtotal or note row inside the table
            self.problem(line, "date", "is empty; every transaction needs a date")
            return None
        day = self.date(raw_date, line)
        if day is None or amount is None:
            return None
        description = " — ".join(
            dict.fromkeys(t for t in (self.cell(row, "payee"), self.cell(row, "description")) if t)
        )
        currency = self.cell(row, "currency").upper() or self.currency
        data: dict[str, object] = {
            "date": day,
            "description": cap(" ".join(description.split()), 2000) or "(no description)",
            "amount": float(amount),
            "currency": cap(currency, 10),
        }
        balance_text = self.cell(row, "balance")
        balance = parse_amount(balance_text, self.decimal) if balance_text else None
        if balance_text and balance is None:
            self.problem(line, "balance", self._not_amount())
            return None
        if balance is not None:
            data["balance"] = float(balance)
        bank_id = natural_id(self.cell(row, "id"))
        if bank_id:
            data["id"] = bank_id
            n = self.ids.occurrence("id\x1f" + bank_id)
            custom_id = bank_id if n == 1 else f"{bank_id}#{n}"
        else:
            key = digest(day, str(amount), currency, str(data["description"]), str(balance))
            n = self.ids.occurrence(key)
            custom_id = "txn-" + digest(key, str(n))
        return Record(custom_id=custom_id, family=TRANSACTION, input=data, origin=f"{self.source}:{line}")

    def date(self, raw: str, line: int) -> str | None:
        if raw in self._date_cache:
            iso = self._date_cache[raw]
        else:
            day = self.date_format.parse(strip_time(raw)) if self.date_format else None
            iso = self._date_cache[raw] = day.isoformat() if day else None
        if iso is None:
            label = self.date_format.label if self.date_format else None
            if label is None:
                msg = "is not a date in any format jobctl knows (like 31.01.2024, 01/31/2024 or 2024-01-31)"
            elif self.date_format and self.date_format.pattern.fullmatch(strip_time(raw)):
                msg = f"is not a real date (the column's format is {label}); fix the row"
            else:
                msg = (
                    f"is not a date in the column's format {label} (the other rows use it); "
                    "give the column one date format"
                )
            self.problem(line, "date", msg)
        return iso

    def amount(self, row: list[str], line: int) -> Decimal | None:
        if "amount" in self.cols:
            text = self.cell(row, "amount")
            if not text:
                self.problem(line, "amount", "is empty; every transaction needs an amount")
                return None
            value = parse_amount(text, self.decimal)
            if value is None:
                self.problem(line, "amount", self._not_amount())
                return None
            return self._direction(row, line, value)
        total = Decimal(0)
        seen = False
        for role, sign in (("debit", -1), ("credit", 1)):
            text = self.cell(row, role)
            if not text:
                continue
            value = parse_amount(text, self.decimal)
            if value is None:
                self.problem(line, role, self._not_amount())
                return None
            total += sign * abs(value)
            seen = True
        if not seen:
            role = "debit" if "debit" in self.cols else "credit"
            self.problem(line, role, "is empty, and so is the other money column; every transaction needs an amount")
            return None
        return total

    def _direction(self, row: list[str], line: int, value: Decimal) -> Decimal | None:
        if "direction" not in self.cols:
            return value
        word = h.normalize(self.cell(row, "direction")) or self.cell(row, "direction")
        if word in _DEBIT_WORDS:
            return -abs(value)
        if word in _CREDIT_WORDS:
            return abs(value)
        self.problem(line, "direction", "is neither a debit nor a credit marker (like Af/Bij, S/H, DR/CR)")
        return None

    def _not_amount(self) -> str:
        example = "-1.150,00" if self.decimal == "," else "-1,150.00"
        return f"is not an amount in the column's number format (like {example}); fix the row"


def _unrecognized(text: str, source: str, mapping: dict[str, str] | None, delimiter: str | None) -> InputError:
    """The error for a table whose columns are not known: the headers found, and the --columns
    line to write, with the columns whose values look like dates, amounts and text filled in."""
    delim, index, rows = _widest_table(text, delimiter)
    if not rows:
        return fail(source, "no table found: the file has no lines with two or more delimited fields")
    header = rows[0]
    line = _line_of_row(text, delim, index)
    found = ", ".join(repr(c.strip()) for c in header if c.strip()) or "(none)"
    suggestion = _suggest(header, rows[1:], mapping)
    line_hint = f"--columns {','.join(f'{role}={_quote(name)}' for role, name in suggestion.items())}"
    if mapping:
        named = {h.normalize(c) for c in header}
        missing = [f"{role}={name}" for role, name in mapping.items() if h.normalize(name) not in named]
        if missing and not (mapping.get("currency") and len(missing) == 1 and len(mapping["currency"]) == 3):
            return fail(
                source,
                f"--columns names {missing[0]!r}, but the header row (line {line}) has no such column "
                f"(headers found: {found}); for example: {line_hint}",
            )
    layout = h.from_mapping(header, mapping) if mapping else h.recognize(header)
    missing = (layout.missing() if layout else None) or ["date", "amount", "description"]
    needs = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
    return fail(
        source,
        f"cannot tell which columns hold the {needs} (headers found in line {line}: {found}); "
        f"name them with {line_hint}",
    )


def _widest_table(text: str, delimiter: str | None) -> tuple[str, int, list[list[str]]]:
    """The delimiter and rows of the longest run of rows with the same number (2 or more) of fields."""
    best: tuple[int, str, int, list[list[str]]] = (0, ",", 0, [])
    for delim in (delimiter,) if delimiter else DELIMITERS:
        rows = _sample(text, delim, 200)
        i = 0
        while i < len(rows):
            j = i
            while j < len(rows) and len(rows[j]) == len(rows[i]):
                j += 1
            if len(rows[i]) >= 2 and (j - i) * len(rows[i]) > best[0]:
                best = ((j - i) * len(rows[i]), delim, i, rows[i:j])
            i = j
    return best[1], best[2], best[3]


def _line_of_row(text: str, delim: str, index: int) -> int:
    reader = _reader(text, delim)
    line = 0
    for i, _row in enumerate(reader):
        if i == index:
            return line + 1
        line = reader.line_num  # type: ignore[attr-defined]
    return line + 1


def _suggest(header: list[str], rows: list[list[str]], mapping: dict[str, str] | None) -> dict[str, str]:
    """A column for each needed role: recognized by name, else by what its values look like."""
    layout = h.recognize(header)
    chosen = {
        role: header[i].strip() for role, i in layout.columns.items() if role in ("date", "amount", "description")
    }
    for role, name in (mapping or {}).items():
        chosen.setdefault(role, name)
    scores: dict[str, list[tuple[float, int]]] = {"date": [], "amount": [], "description": []}
    for i, _name in enumerate(header):
        values = [r[i].strip() for r in rows[:100] if i < len(r) and r[i].strip()]
        if not values:
            continue
        n = len(values)
        is_date = sum(1 for v in values if any(f.parse(strip_time(v)) for f in DATE_FORMATS)) / n
        is_amount = sum(1 for v in values if parse_amount(v, ",") is not None or parse_amount(v, ".") is not None)
        avg_len = sum(len(v) for v in values) / n
        scores["date"].append((is_date, -i))
        if is_date < 0.5:
            scores["amount"].append((is_amount / n, -i))
            if is_amount / n < 0.5:
                scores["description"].append((avg_len, -i))
    used = {h.normalize(v) for v in chosen.values()}
    out: dict[str, str] = {}
    for role in ("date", "amount", "description"):
        if role in chosen:
            out[role] = chosen[role]
            continue
        for score, neg_i in sorted(scores[role], reverse=True):
            name = header[-neg_i].strip()
            if score > 0 and name and h.normalize(name) not in used:
                out[role] = name
                used.add(h.normalize(name))
                break
        else:
            out[role] = f"<{role} column>"
    return out


def _quote(name: str) -> str:
    return f'"{name}"' if any(ch in name for ch in ',= "') else name
