"""Email kinds: triage, summarize, extract, draft_reply."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import Field, create_model

from jobs.kinds.base import Kind, Strict

DEFAULT_CATEGORIES = ["personal", "work", "finance", "shopping", "newsletter", "travel", "spam", "other"]


class Attachment(Strict):
    """An attachment as the model sees it: never its content."""

    name: str | None = Field(default=None, max_length=300)
    type: str = Field(default="application/octet-stream", max_length=200)
    size: int = Field(default=0, ge=0)

    def as_text(self) -> str:
        return f"{self.name or '(unnamed)'} ({self.type}, {_size(self.size)})"


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} bytes"
    if n < 1_000_000:
        return f"{n / 1000:.0f} KB"
    return f"{n / 1_000_000:.1f} MB"


class Email(Strict):
    from_: str = Field(alias="from", min_length=1, max_length=500)
    to: str | None = Field(default=None, max_length=2000)
    cc: str | None = Field(default=None, max_length=2000)
    subject: str = Field(default="", max_length=2000)
    date: str | None = Field(default=None, max_length=100)
    body: str = Field(max_length=200_000)
    # Imported mail keeps its thread ids (for joining answers back to a mailbox); the model gets
    # neither, only whether the message is a reply.
    message_id: str | None = Field(default=None, max_length=1000)
    in_reply_to: str | None = Field(default=None, max_length=1000)
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)
    # The body was cut to fit the model's context (the body itself ends with a note saying so).
    truncated: bool = False

    def as_text(self) -> str:
        head = [f"From: {self.from_}"]
        if self.to:
            head.append(f"To: {self.to}")
        if self.cc:
            head.append(f"Cc: {self.cc}")
        if self.date:
            head.append(f"Date: {self.date}")
        head.append(f"Subject: {self.subject}")
        if self.in_reply_to:
            head.append("(A reply to an earlier message in the thread.)")
        if self.attachments:
            head.append("Attachments: " + "; ".join(a.as_text() for a in self.attachments))
        if self.truncated:
            head.append("(The body is long and was cut; only its beginning is shown.)")
        return "\n".join(head) + "\n\n" + self.body


class Common(Strict):
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float | None = Field(default=None, ge=0, le=2)


class TriageOptions(Common):
    categories: list[str] = Field(default_factory=lambda: list(DEFAULT_CATEGORIES), min_length=1, max_length=100)
    about_me: str | None = Field(default=None, max_length=2000)


class Triage(Kind):
    name = "email.triage"
    input_model = Email
    options_model = TriageOptions
    max_tokens = 200
    system = (
        "You triage the user's email. Pick the one category that fits best, a priority from 1 (ignore) "
        "to 5 (urgent), whether the user needs to reply, and a one-sentence reason."
    )

    def output_schema(self, data: Any, options: Any) -> dict[str, Any]:
        return triage_schema(tuple(options.categories))

    def messages(self, data: Any, options: Any) -> list[dict[str, str]]:
        about = f"About the user: {options.about_me}\n\n" if options.about_me else ""
        return [{"role": "user", "content": f"{about}Triage this email.\n\n{data.as_text()}"}]


@lru_cache(maxsize=64)
def triage_schema(categories: tuple[str, ...]) -> dict[str, Any]:
    # Built per category list, and cached: a 10,000-task submit must not build 10,000 models.
    model = create_model(
        "EmailTriage",
        __base__=Strict,
        category=(Literal[categories], ...),  # type: ignore[valid-type,arg-type]
        priority=(int, Field(ge=1, le=5)),
        needs_reply=(bool, ...),
        reason=(str, Field(max_length=200)),
    )
    return model.model_json_schema()


class Summary(Strict):
    summary: str = Field(max_length=1200)
    key_points: list[str] = Field(max_length=5)


class SummarizeOptions(Common):
    max_words: int = Field(default=80, ge=10, le=1000)


class Summarize(Kind):
    name = "email.summarize"
    input_model = Email
    options_model = SummarizeOptions
    output_model = Summary
    max_tokens = 400
    system = "You summarize the user's email plainly and briefly, keeping names, dates and amounts."

    def messages(self, data: Any, options: Any) -> list[dict[str, str]]:
        return [
            {
                "role": "user",
                "content": f"Summarize this email in at most {options.max_words} words, "
                f"with up to 5 key points.\n\n{data.as_text()}",
            }
        ]


class ActionItem(Strict):
    task: str = Field(max_length=300)
    owner: str | None = Field(default=None, max_length=200)
    due: str | None = Field(default=None, max_length=100)


class DateMention(Strict):
    date: str = Field(max_length=100)
    what: str = Field(max_length=300)


class Amount(Strict):
    amount: float
    currency: str = Field(max_length=10)
    what: str = Field(max_length=300)


class Person(Strict):
    name: str = Field(max_length=200)
    email: str | None = Field(default=None, max_length=300)
    role: str | None = Field(default=None, max_length=200)


class Extraction(Strict):
    action_items: list[ActionItem] = Field(max_length=20)
    dates: list[DateMention] = Field(max_length=20)
    amounts: list[Amount] = Field(max_length=20)
    people: list[Person] = Field(max_length=20)


class Extract(Kind):
    name = "email.extract"
    input_model = Email
    options_model = Common
    output_model = Extraction
    max_tokens = 800
    system = "You pull facts out of the user's email: action items, dates, money amounts and people. Invent nothing."

    def messages(self, data: Any, options: Any) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Extract the facts from this email.\n\n{data.as_text()}"}]


class Draft(Strict):
    subject: str = Field(max_length=300)
    body: str = Field(max_length=4000)


class DraftOptions(Common):
    tone: str = Field(default="friendly and brief", max_length=200)
    sign_as: str | None = Field(default=None, max_length=200)
    instructions: str | None = Field(default=None, max_length=4000)


class DraftReply(Kind):
    name = "email.draft_reply"
    input_model = Email
    options_model = DraftOptions
    output_model = Draft
    max_tokens = 700
    system = "You draft replies to the user's email, for the user to edit and send."

    def messages(self, data: Any, options: Any) -> list[dict[str, str]]:
        asks = [f"Draft a reply to this email. Tone: {options.tone}."]
        if options.sign_as:
            asks.append(f"Sign it as {options.sign_as}.")
        if options.instructions:
            asks.append(f"The reply should: {options.instructions}")
        return [{"role": "user", "content": " ".join(asks) + f"\n\n{data.as_text()}"}]
