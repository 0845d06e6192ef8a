"""Bank transaction kinds: categorize (against the user's own categories) and flag."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import Field, create_model

from jobs.kinds.base import Kind, Strict
from jobs.kinds.email import Common

# Used when a categorize task names no categories of its own (imported bank rows, usually).
DEFAULT_CATEGORIES = [
    "groceries",
    "restaurants",
    "transport",
    "housing",
    "utilities",
    "insurance",
    "health",
    "shopping",
    "entertainment",
    "subscriptions",
    "travel",
    "education",
    "income",
    "transfers",
    "cash",
    "fees",
    "taxes",
    "other",
]


class Transaction(Strict):
    date: str = Field(min_length=1, max_length=40)
    description: str = Field(min_length=1, max_length=2000)
    # Negative amounts are money out of the account.
    amount: float
    currency: str = Field(default="USD", min_length=1, max_length=10)
    account: str | None = Field(default=None, max_length=200)
    merchant: str | None = Field(default=None, max_length=300)
    # The bank's own id of the transaction (OFX FITID), kept for joining answers back; not shown
    # to the model.
    id: str | None = Field(default=None, max_length=255)
    # The account balance after this transaction, where the export gives it.
    balance: float | None = None

    def as_text(self) -> str:
        parts = [self.date, self.description, f"{self.amount:.2f} {self.currency}"]
        if self.merchant:
            parts.append(f"merchant: {self.merchant}")
        if self.account:
            parts.append(f"account: {self.account}")
        return " | ".join(parts)


class CategorizeOptions(Common):
    categories: list[str] = Field(default_factory=lambda: list(DEFAULT_CATEGORIES), min_length=1, max_length=200)
    rules: str | None = Field(default=None, max_length=4000)


@lru_cache(maxsize=64)
def categorize_schema(categories: tuple[str, ...]) -> dict[str, Any]:
    model = create_model(
        "TransactionCategory",
        __base__=Strict,
        category=(Literal[categories], ...),  # type: ignore[valid-type,arg-type]
        merchant=(str, Field(max_length=100)),
        confidence=(float, Field(ge=0, le=1)),
    )
    return model.model_json_schema()


class Categorize(Kind):
    name = "transaction.categorize"
    input_model = Transaction
    options_model = CategorizeOptions
    max_tokens = 120
    system = (
        "You categorize the user's bank transactions. Pick exactly one of the user's categories, give the "
        "merchant's plain name (e.g. 'AMZN MKTP US*2K4' -> 'Amazon'), and a confidence from 0 to 1."
    )

    def output_schema(self, data: Any, options: Any) -> dict[str, Any]:
        return categorize_schema(tuple(options.categories))

    def messages(self, data: Any, options: Any) -> list[dict[str, str]]:
        rules = f"\nThe user's rules: {options.rules}" if options.rules else ""
        cats = ", ".join(options.categories)
        return [{"role": "user", "content": f"Categories: {cats}{rules}\n\nTransaction: {data.as_text()}"}]


class FlagInput(Transaction):
    # Earlier transactions of the same account, so recurring charges and duplicates can be seen.
    history: list[Transaction] = Field(default_factory=list, max_length=500)


class Flags(Strict):
    recurring: bool
    subscription: bool
    unusual: bool
    possible_duplicate: bool
    reason: str = Field(max_length=300)


class Flag(Kind):
    name = "transaction.flag"
    input_model = FlagInput
    options_model = Common
    output_model = Flags
    max_tokens = 200
    system = (
        "You check one of the user's bank transactions against their history. Say whether it is recurring, "
        "a subscription, unusual (amount or merchant out of pattern), or a possible duplicate charge."
    )

    def messages(self, data: Any, options: Any) -> list[dict[str, str]]:
        history = "\n".join(t.as_text() for t in data.history) or "(none)"
        return [{"role": "user", "content": f"History:\n{history}\n\nTransaction to check: {data.as_text()}"}]
