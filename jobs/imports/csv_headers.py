"""Bank CSV header names, by role and language, and how a header row is recognized.

Names are compared normalized: accents dropped, lower case, punctuation as spaces, and a currency
in the name ("Betrag (EUR)", "Amount $") taken off and remembered. Within a role, names are in
order of preference: a booking date beats a value date, a purpose beats a transaction type.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

ROLES = ("date", "amount", "debit", "credit", "direction", "description", "payee", "currency", "balance", "id")

# role -> [(normalized name, languages)]; "*" is shared by several languages.
_NAMES: dict[str, list[tuple[str, str]]] = {
    "date": [
        ("booking date", "en"),
        ("transaction date", "en"),
        ("trans date", "en"),
        ("posting date", "en"),
        ("posted date", "en"),
        ("buchungstag", "de"),
        ("buchungsdatum", "de"),
        ("date operation", "fr"),
        ("date de l operation", "fr"),
        ("date de operation", "fr"),
        ("date comptable", "fr"),
        ("fecha operacion", "es"),
        ("fecha de operacion", "es"),
        ("f operacion", "es"),
        ("fecha contable", "es"),
        ("boekdatum", "nl"),
        ("transactiedatum", "nl"),
        ("data movimento", "pt"),
        ("data do movimento", "pt"),
        ("data lancamento", "pt"),
        ("data de lancamento", "pt"),
        ("data operacao", "pt"),
        ("data da operacao", "pt"),
        ("date", "en fr"),
        ("datum", "de nl"),
        ("fecha", "es"),
        ("data", "pt"),
        ("value date", "en"),
        ("wertstellung", "de"),
        ("valutadatum", "de"),
        ("date valeur", "fr"),
        ("date de valeur", "fr"),
        ("fecha valor", "es"),
        ("f valor", "es"),
        ("rentedatum", "nl"),
        ("data valor", "pt"),
        ("post date", "en"),
    ],
    "amount": [
        ("amount", "en"),
        ("transaction amount", "en"),
        ("amt", "en"),
        ("value", "en"),
        ("betrag", "de"),
        ("umsatz", "de"),
        ("montant", "fr"),
        ("montant de l operation", "fr"),
        ("importe", "es"),
        ("monto", "es"),
        ("cantidad", "es"),
        ("bedrag", "nl"),
        ("transactiebedrag", "nl"),
        ("valor", "pt"),
        ("montante", "pt"),
        ("quantia", "pt"),
    ],
    "debit": [
        ("debit", "en fr"),
        ("debits", "en fr"),
        ("debit amount", "en"),
        ("withdrawal", "en"),
        ("withdrawals", "en"),
        ("money out", "en"),
        ("paid out", "en"),
        ("outflow", "en"),
        ("soll", "de"),
        ("belastung", "de"),
        ("ausgang", "de"),
        ("ausgaben", "de"),
        ("cargo", "es"),
        ("cargos", "es"),
        ("debe", "es"),
        ("debito", "es pt"),
        ("debitos", "pt"),
        ("af", "nl"),
        ("debet", "nl"),
        ("saida", "pt"),
        ("saidas", "pt"),
    ],
    "credit": [
        ("credit", "en fr nl"),
        ("credits", "en fr"),
        ("credit amount", "en"),
        ("deposit", "en"),
        ("deposits", "en"),
        ("money in", "en"),
        ("paid in", "en"),
        ("inflow", "en"),
        ("haben", "de"),
        ("gutschrift", "de"),
        ("eingang", "de"),
        ("einnahmen", "de"),
        ("abono", "es"),
        ("abonos", "es"),
        ("haber", "es"),
        ("ingreso", "es"),
        ("ingresos", "es"),
        ("credito", "es pt"),
        ("creditos", "pt"),
        ("bij", "nl"),
        ("entrada", "pt"),
        ("entradas", "pt"),
    ],
    "direction": [
        ("af bij", "nl"),
        ("soll haben", "de"),
        ("debit credit", "en"),
        ("dr cr", "en"),
        ("cr dr", "en"),
        ("credit debit", "en"),
        ("debit credit indicator", "en"),
    ],
    "description": [
        ("description", "en fr"),
        ("transaction description", "en"),
        ("details", "en fr"),
        ("transaction details", "en"),
        ("memo", "en"),
        ("narrative", "en"),
        ("particulars", "en"),
        ("verwendungszweck", "de"),
        ("beschreibung", "de"),
        ("vorgang", "de"),
        ("buchungsdetails", "de"),
        ("libelle", "fr"),
        ("libelle operation", "fr"),
        ("libelle de l operation", "fr"),
        ("detail", "fr"),
        ("concepto", "es"),
        ("descripcion", "es"),
        ("detalle", "es"),
        ("movimiento", "es"),
        ("observaciones", "es"),
        ("omschrijving", "nl"),
        ("mededelingen", "nl"),
        ("beschrijving", "nl"),
        ("descricao", "pt"),
        ("historico", "pt"),
        ("descritivo", "pt"),
        ("movimento", "pt"),
        ("detalhes", "pt"),
        ("buchungstext", "de"),
        ("text", "de"),
    ],
    "payee": [
        ("payee", "en"),
        ("merchant", "en"),
        ("counterparty", "en"),
        ("beneficiary", "en"),
        ("name", "en"),
        ("auftraggeber empfanger", "de"),
        ("auftraggeber empfaenger", "de"),
        ("auftraggeber begunstigter", "de"),
        ("beguenstigter zahlungspflichtiger", "de"),
        ("begunstigter zahlungspflichtiger", "de"),
        ("zahlungsempfanger", "de"),
        ("name zahlungsbeteiligter", "de"),
        ("empfanger", "de"),
        ("empfaenger", "de"),
        ("auftraggeber", "de"),
        ("tiers", "fr"),
        ("beneficiaire", "fr"),
        ("beneficiario", "es pt"),
        ("ordenante", "es"),
        ("naam omschrijving", "nl"),
        ("naam", "nl"),
        ("tegenpartij", "nl"),
        ("naam tegenpartij", "nl"),
        ("favorecido", "pt"),
    ],
    "currency": [
        ("currency", "en"),
        ("ccy", "en"),
        ("wahrung", "de"),
        ("waehrung", "de"),
        ("devise", "fr"),
        ("monnaie", "fr"),
        ("moneda", "es"),
        ("divisa", "es"),
        ("munt", "nl"),
        ("moeda", "pt"),
    ],
    "balance": [
        ("balance", "en"),
        ("running balance", "en"),
        ("running bal", "en"),
        ("saldo", "de es nl pt"),
        ("kontostand", "de"),
        ("saldo nach buchung", "de"),
        ("solde", "fr"),
        ("saldo na mutatie", "nl"),
        ("saldo disponivel", "pt"),
    ],
    "id": [
        ("transaction id", "en"),
        ("fitid", "en"),
        ("transaktions id", "de"),
        ("transaktionsid", "de"),
        ("identificador", "pt es"),
    ],
}
# name -> (role, rank within the role, languages)
VOCABULARY: dict[str, tuple[str, int, tuple[str, ...]]] = {
    name: (role, rank, tuple(langs.split()))
    for role, names in _NAMES.items()
    for rank, (name, langs) in enumerate(names)
}
_CURRENCY_IN_NAME = re.compile(r"[\s(\[]*(?:in\s+)?(EUR|USD|GBP|CHF|BRL|CAD|AUD|€|\$|£)[)\]]*\s*$", re.IGNORECASE)
_SYMBOLS = {"€": "EUR", "$": "USD", "£": "GBP"}
_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def normalize(header: str) -> str:
    text = unicodedata.normalize("NFKD", header)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower().replace("ß", "ss")
    return _NOT_ALNUM.sub(" ", text).strip()


def split_currency(header: str) -> tuple[str, str | None]:
    """("Betrag", "EUR") for "Betrag (EUR)"; the name normalized."""
    m = _CURRENCY_IN_NAME.search(header)
    if m and m.start() > 0:
        code = m.group(1).upper()
        return normalize(header[: m.start()]), _SYMBOLS.get(code, code)
    return normalize(header), None


@dataclass
class Layout:
    """Which column plays which role (0-based), as read from a header row."""

    columns: dict[str, int] = field(default_factory=dict)
    languages: dict[str, float] = field(default_factory=dict)
    header_currency: str | None = None
    fixed_currency: str | None = None

    @property
    def language(self) -> str | None:
        """The language most of the recognized headers are in (None when only shared names are)."""
        if not self.languages:
            return None
        return max(sorted(self.languages), key=lambda k: self.languages[k])

    def complete(self) -> bool:
        has_date = "date" in self.columns
        has_money = "amount" in self.columns or ("debit" in self.columns or "credit" in self.columns)
        has_text = "description" in self.columns or "payee" in self.columns
        return has_date and has_money and has_text

    def missing(self) -> list[str]:
        out = []
        if "date" not in self.columns:
            out.append("date")
        if not ({"amount", "debit", "credit"} & set(self.columns)):
            out.append("amount")
        if not ({"description", "payee"} & set(self.columns)):
            out.append("description")
        return out


def recognize(cells: list[str]) -> Layout:
    """The roles found in a row of header names, the best-ranked name winning each role."""
    layout = Layout()
    best: dict[str, int] = {}
    for i, cell in enumerate(cells):
        name, currency = split_currency(cell.strip())
        hit = VOCABULARY.get(name)
        if hit is None:
            continue
        role, rank, langs = hit
        if role in best and best[role] <= rank:
            continue
        best[role] = rank
        layout.columns[role] = i
        if currency and role in ("amount", "debit", "credit"):
            layout.header_currency = currency
        weight = 1.0 / len(langs)
        for lang in langs:
            layout.languages[lang] = layout.languages.get(lang, 0.0) + weight
    return layout


def from_mapping(cells: list[str], mapping: dict[str, str]) -> Layout | None:
    """The layout an explicit --columns mapping gives for this row, or None if a named header is
    not in it. Roles the mapping leaves out are still recognized from their names."""
    names = {normalize(c): i for i, c in reversed(list(enumerate(cells)))}
    layout = recognize(cells)
    chosen: dict[str, int] = {}
    fixed = None
    for role, header in mapping.items():
        i = names.get(normalize(header))
        if i is None:
            if role == "currency" and re.fullmatch(r"[A-Za-z]{3}", header.strip()):
                fixed = header.strip().upper()
                continue
            return None
        chosen[role] = i
    # An explicit column takes its role's place; a recognized column it now plays is freed.
    for role, i in chosen.items():
        for other, j in list(layout.columns.items()):
            if j == i and other != role:
                del layout.columns[other]
        layout.columns[role] = i
    if {"amount"} & set(chosen):
        layout.columns.pop("debit", None)
        layout.columns.pop("credit", None)
    elif {"debit", "credit"} & set(chosen):
        layout.columns.pop("amount", None)
    layout.fixed_currency = fixed
    return layout
