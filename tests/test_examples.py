"""The example task files parse, hold what they should, and stay small enough for a tiny local model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from jobs.kinds import KINDS
from jobs.kinds.base import estimate_tokens
from jobs.parse import Limits, parse_bytes
from jobs.tasks import Task

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# The local model runs with an 8192-token context; the examples keep well under it.
LIMITS = Limits(context_tokens=2048)

EXPECTED = {
    "inbox.json": 10,
    "transactions.json": 10,
    "batch.jsonl": 3,
}


def load(name: str) -> list[Task]:
    path = EXAMPLES / name
    return parse_bytes(path.read_bytes(), str(path), LIMITS)


def needed_tokens(task: Task) -> int:
    kind = KINDS[task.kind]
    data = kind.input_model.model_validate(task.input)
    options = kind.options_model.model_validate(task.options)
    body = kind.request(data, options, LIMITS.style)
    return estimate_tokens(body) + int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_parses_with_expected_count(name: str) -> None:
    tasks = load(name)
    assert len(tasks) == EXPECTED[name]
    ids = [t.custom_id for t in tasks]
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_fits_small_context(name: str) -> None:
    for task in load(name):
        need = needed_tokens(task)
        assert need <= LIMITS.context_tokens, f"{task.custom_id} needs about {need} tokens"


def test_custom_ids_unique_across_examples() -> None:
    ids = [t.custom_id for name in EXPECTED for t in load(name)]
    assert len(set(ids)) == len(ids)


def test_inbox_shape() -> None:
    raw = json.loads((EXAMPLES / "inbox.json").read_text())
    assert set(raw) == {"tasks"}
    tasks = load("inbox.json")
    kinds = Counter(t.kind for t in tasks)
    assert set(kinds) == {"email.triage", "email.summarize", "email.extract", "email.draft_reply"}
    assert kinds["email.triage"] == max(kinds.values())
    assert sum(1 for t in tasks if t.kind == "email.triage" and "categories" in t.options) >= 2
    for t in tasks:
        assert t.custom_id.startswith("inbox-"), t.custom_id
        if t.kind == "email.draft_reply":
            assert {"tone", "sign_as"} <= set(t.options), t.custom_id
    bodies = {t.input["body"] for t in tasks}
    assert len(bodies) >= 7
    for body in bodies:
        assert 40 <= len(body.split()) <= 120, body[:60]


def test_transactions_shape() -> None:
    raw = json.loads((EXAMPLES / "transactions.json").read_text())
    assert isinstance(raw, list)
    tasks = load("transactions.json")
    categorize = [t for t in tasks if t.kind == "transaction.categorize"]
    flag = [t for t in tasks if t.kind == "transaction.flag"]
    assert (len(categorize), len(flag)) == (7, 3)
    assert len({tuple(t.options["categories"]) for t in categorize}) == 1
    amounts = [t.input["amount"] for t in categorize]
    assert sum(1 for a in amounts if a > 0) == 1
    assert sum(1 for a in amounts if a < 0) == 6
    for t in flag:
        assert 3 <= len(t.input["history"]) <= 6, t.custom_id


def test_batch_lines_are_openai_format() -> None:
    lines = [json.loads(line) for line in (EXAMPLES / "batch.jsonl").read_text().splitlines() if line.strip()]
    assert len(lines) == EXPECTED["batch.jsonl"]
    for line in lines:
        assert set(line) == {"custom_id", "method", "url", "body"}
        assert (line["method"], line["url"]) == ("POST", "/v1/chat/completions")
        assert line["body"]["max_tokens"] == 120
    assert all(t.kind == "chat" for t in load("batch.jsonl"))
