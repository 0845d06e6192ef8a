"""Dates and amounts as banks write them, with one format decided per column from all its values.

"03/04/2024" is March or April depending on the bank, and "1.150" is a thousand or one: a single
value cannot say, a column can (a 13th day, a "-4,75"). Where even the column cannot, the
language of its header decides (an English file writes month first and a decimal point).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

DAY_FIRST_LANGUAGES = {"de", "fr", "es", "nl", "pt"}
_MONTHS = {
    m: i
    for i, names in enumerate(
        [
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ],
        1,
    )
    for m in names
}
_TIME = re.compile(r"(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:\s?[AaPp][Mm])?(?:\s?(?:Z|[+-]\d{2}:?\d{2}))?)$")


@dataclass(frozen=True)
class DateFormat:
    label: str
    pattern: re.Pattern[str]
    # Which regex group is the day, the month (a number or a name) and the year.
    day: str
    month: str
    year: str = "y"
    day_first: bool | None = None  # None: not ambiguous with another format

    def parse(self, value: str) -> date | None:
        m = self.pattern.fullmatch(value)
        if m is None:
            return None
        text = m.group(self.month)
        month = int(text) if text.isdigit() else _MONTHS.get(text.lower()) or _MONTHS.get(text.lower()[:3], 0)
        year = int(m.group(self.year))
        if len(m.group(self.year)) == 2:
            year += 2000 if year < 70 else 1900
        try:
            return date(year, month, int(m.group(self.day)))
        except ValueError:
            return None


def _f(label: str, regex: str, day: str, month: str, day_first: bool | None = None) -> DateFormat:
    return DateFormat(label, re.compile(regex), day, month, "y", day_first)


_Y = r"(?P<y>\d{4}|\d{2})"
DATE_FORMATS = [
    _f("YYYY-MM-DD", r"(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})", "d", "m"),
    _f("YYYY/MM/DD", r"(?P<y>\d{4})/(?P<m>\d{1,2})/(?P<d>\d{1,2})", "d", "m"),
    _f("YYYYMMDD", r"(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})", "d", "m"),
    _f("DD.MM.YYYY", r"(?P<d>\d{1,2})\.(?P<m>\d{1,2})\." + _Y, "d", "m"),
    _f("DD/MM/YYYY", r"(?P<a>\d{1,2})/(?P<b>\d{1,2})/" + _Y, "a", "b", True),
    _f("MM/DD/YYYY", r"(?P<a>\d{1,2})/(?P<b>\d{1,2})/" + _Y, "b", "a", False),
    _f("DD-MM-YYYY", r"(?P<a>\d{1,2})-(?P<b>\d{1,2})-" + _Y, "a", "b", True),
    _f("MM-DD-YYYY", r"(?P<a>\d{1,2})-(?P<b>\d{1,2})-" + _Y, "b", "a", False),
    _f("DD MMM YYYY", r"(?P<d>\d{1,2})[ -](?P<m>[A-Za-z]{3,9})\.?[ -]" + _Y, "d", "m"),
    _f("MMM DD, YYYY", r"(?P<m>[A-Za-z]{3,9})\.? (?P<d>\d{1,2}),? (?P<y>\d{4})", "d", "m"),
]


def strip_time(value: str) -> str:
    value = value.strip()
    return _TIME.sub("", value) if ":" in value else value


def decide_date_format(values: Iterable[str], language: str | None) -> tuple[DateFormat | None, DateFormat | None]:
    """(the format every value parses in, or None; the format most values parse in, for errors).

    Several formats fit only when no value tells day from month (all days up to 12): then the
    header's language decides, English month first, the others day first."""
    distinct = {strip_time(v) for v in values if v.strip()}
    day_first = language in DAY_FIRST_LANGUAGES if language else True
    scored = []
    for order, fmt in enumerate(DATE_FORMATS):
        shaped = sum(1 for v in distinct if fmt.pattern.fullmatch(v))
        valid = sum(1 for v in distinct if fmt.parse(v) is not None)
        preferred = fmt.day_first is None or fmt.day_first == day_first
        # All valid first; else the format most values are written in (31.02. is a DD.MM. date, if
        # not a real one), so the error is about the odd values out.
        scored.append((valid == len(distinct), shaped, valid, preferred, -order, fmt))
    scored.sort(key=lambda s: s[:5], reverse=True)
    best = scored[0]
    if best[1] == 0:
        return None, None
    return (best[5] if best[0] else None), best[5]


def looks_like_date(value: str) -> bool:
    """Written like a date in some format (a real one or not): what a trailing note is not."""
    v = strip_time(value)
    return any(f.pattern.fullmatch(v) for f in DATE_FORMATS)


# Amounts ----------------------------------------------------------------------------------------

_MONEY_NOISE = re.compile(r"[\s\u00a0\u202f'’]|[A-Z]{3}\b|R\$|[€$£¥]")
_SIGNS = re.compile(r"^(?P<open>\()?(?P<lead>[+-])?(?P<num>[\d.,]+)(?P<trail>-)?(?P<close>\))?(?P<crdr>CR|DR|Cr|Dr)?$")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_TWO_DECIMALS = re.compile(r"[.,]\d{1,2}$")
_GROUPED = re.compile(r"^\d{1,3}([.,])\d{3}(?:\1\d{3})*$")
SYMBOL_CURRENCIES = {"€": "EUR", "£": "GBP", "R$": "BRL", "$": "USD", "¥": "JPY"}


def _core(raw: str) -> str:
    return _MONEY_NOISE.sub("", raw.strip())


def decide_decimal(values: Iterable[str], language: str | None) -> tuple[str, bool]:
    """(the decimal separator of the money columns, whether their values disagree about it).

    A value with both separators, or one followed by one or two digits, says which is decimal;
    "1.150" (three digits after) only hints; no hint at all leaves it to the language."""
    strong = {".": 0, ",": 0}
    weak = {".": 0, ",": 0}
    for raw in values:
        m = _SIGNS.match(_core(raw))
        if m is None:
            continue
        num = m.group("num")
        if "." in num and "," in num:
            strong[max(".,", key=num.rfind)] += 1
        elif _TWO_DECIMALS.search(num):
            strong[num[-3] if num[-3:-2] in (".", ",") else num[-2]] += 1
        else:
            g = _GROUPED.match(num)
            if g:
                weak["," if g.group(1) == "." else "."] += 1
    if strong["."] or strong[","]:
        sep = "." if strong["."] >= strong[","] else ","
        return sep, bool(strong["."] and strong[","])
    if weak["."] or weak[","]:
        return ("." if weak["."] >= weak[","] else ","), False
    return ("," if language in DAY_FIRST_LANGUAGES else "."), False


def parse_amount(raw: str, decimal: str) -> Decimal | None:
    """The amount in a cell, or None if it is not one in this column's number format.

    Takes signs before or after ("-1.150,00", "1.150,00-"), parentheses and CR/DR for negatives,
    currency symbols and codes, and spaces or apostrophes between thousands."""
    m = _SIGNS.match(_core(raw))
    if m is None or bool(m.group("open")) != bool(m.group("close")):
        return None
    num = m.group("num")
    thousands = "," if decimal == "." else "."
    if thousands in num:
        whole = num.split(decimal)[0] if decimal in num else num
        if decimal in num and num.rfind(thousands) > num.rfind(decimal):
            return None  # "1,150.00" in a column that writes "1.150,00"
        if not _GROUPED.match(whole):
            return None
        num = num.replace(thousands, "")
    if num.count(decimal) > 1:
        return None
    num = num.replace(decimal, ".")
    if not _PLAIN_NUMBER.fullmatch(num):
        return None
    try:
        value = Decimal(num)
    except InvalidOperation:  # pragma: no cover - the pattern lets only plain numbers through
        return None
    negative = m.group("open") or m.group("lead") == "-" or m.group("trail") or (m.group("crdr") or "").upper() == "DR"
    return -value if negative else value


def symbol_currency(raw: str) -> str | None:
    for symbol, code in SYMBOL_CURRENCIES.items():
        if symbol in raw:
            return code
    m = re.search(r"\b(EUR|USD|GBP|CHF|BRL|CAD|AUD|JPY|SEK|NOK|DKK|PLN|CZK)\b", raw)
    return m.group(1) if m else None
