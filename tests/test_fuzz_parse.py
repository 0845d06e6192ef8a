"""Property tests of the task file parser: whatever the bytes, the answer is a list of tasks or an
InputError with located problems, never another exception; and a submit is all or nothing."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jobs.parse import InputError, Limits, parse_bytes
from jobs.tasks import Task
from tests.conftest import triage_task

VALID: list[dict[str, Any]] = [
    triage_task(1),
    {
        "custom_id": "tx-1",
        "kind": "transaction.categorize",
        "input": {"date": "2024-05-01", "description": "AMZN MKTP US*2K4", "amount": -12.5},
        "options": {"categories": ["shopping", "groceries"]},
    },
    {
        "custom_id": "ex-1",
        "kind": "extract",
        "input": {
            "text": "Ana paid 12 EUR on May 3",
            "schema": {"type": "object", "properties": {"who": {"type": "string"}, "amount": {"type": "number"}}},
        },
    },
]
BATCH_LINE = {
    "custom_id": "req-1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "x", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20},
}

# Small limits, so size and context checks are reached by small examples too.
LIMITS = [Limits(), Limits(max_file_bytes=4096, max_task_bytes=600, context_tokens=300)]
FAST = settings(max_examples=150, deadline=None)


def layouts(tasks: list[Any]) -> list[bytes]:
    """The same tasks as a JSON list, as {"tasks": [...]}, and as JSONL."""
    return [
        json.dumps(tasks, indent=1).encode(),
        json.dumps({"tasks": tasks}).encode(),
        "\n".join(json.dumps(t) for t in tasks).encode(),
    ]


def check(raw: bytes, limits: Limits | None = None) -> list[Task] | InputError:  # the tasks, or the error
    """parse_bytes's answer: tasks, or an InputError whose problems are all located. Anything else fails."""
    try:
        parsed = parse_bytes(raw, "fuzz.json", limits)
    except InputError as e:
        assert e.problems, "an InputError must list its problems"
        assert e.total >= len(e.problems) >= 1
        for p in e.problems:
            assert p.where.startswith("fuzz.json"), p
            assert p.message
        assert "fuzz.json" in str(e) and "nothing was submitted" in str(e)
        return e
    tasks = parsed.tasks
    assert isinstance(tasks, list) and parsed.total > 0
    assert all(isinstance(t, Task) for t in tasks)
    ids = [t.custom_id for t in tasks]
    assert len(set(ids)) == len(ids)
    for t in tasks:
        # What was accepted can be stored, keyed and sent: strict JSON (no NaN) that encodes as UTF-8.
        assert Task.from_json(t.to_json()).custom_id == t.custom_id
        json.dumps({"input": t.input, "options": t.options}, allow_nan=False, ensure_ascii=False).encode()
        t.custom_id.encode("utf-8")
    return tasks


# -- strategies -------------------------------------------------------------------------------------

KEYS = [
    "custom_id",
    "kind",
    "input",
    "options",
    "tasks",
    "body",
    "url",
    "method",
    "messages",
    "role",
    "content",
    "from",
    "body",
    "subject",
    "amount",
    "date",
    "description",
    "categories",
    "schema",
    "text",
    "type",
    "properties",
    "max_tokens",
    "response_format",
    "json_schema",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: json.dumps writes them, and the parser must refuse them
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "email.triage",
            "chat",
            "extract",
            "transaction.flag",
            "POST",
            "/v1/chat/completions",
            "user",
            "object",
            "a@b.org",
            "mail-1",
            "\ud800",
            "x" * 300,
        ]
    )
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=30,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


@st.composite
def structurally_mutated(draw: st.DrawFn) -> bytes:
    """A valid file with some values dropped or swapped for values of another type."""
    tasks: Any = copy.deepcopy([*VALID, BATCH_LINE])
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(paths(tasks)[1:]))
        parent = tasks
        for step in where[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["drop", "retype", "duplicate"]))
        if op == "drop":
            del parent[where[-1]]
        elif op == "retype":
            parent[where[-1]] = draw(JSON)
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[where[-1]]))
        if not isinstance(tasks, list) or not tasks:
            break
    layout = draw(st.integers(0, 2))
    return layouts(tasks if isinstance(tasks, list) else [tasks])[layout]


@st.composite
def one_field_changed(draw: st.DrawFn) -> bytes:
    """One valid task with a single value replaced by a value of another type (or dropped)."""
    task: Any = copy.deepcopy(draw(st.sampled_from([*VALID, BATCH_LINE])))
    where = draw(st.sampled_from(paths(task)[1:]))
    parent = task
    for step in where[:-1]:
        parent = parent[step]
    if draw(st.booleans()):
        del parent[where[-1]]
    else:
        parent[where[-1]] = draw(SCALARS | JSON)
    return layouts([task, VALID[0]])[draw(st.integers(0, 2))]


@st.composite
def byte_mutated(draw: st.DrawFn) -> bytes:
    """A valid file with random bytes flipped, inserted and deleted."""
    raw = bytearray(draw(st.sampled_from(layouts(VALID) + layouts([BATCH_LINE, {**BATCH_LINE, "custom_id": "r2"}]))))
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b"{", b"]", b",", b'"', b"\\u"]))
        elif pos < len(raw) and op == "flip":
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif pos < len(raw):
            del raw[pos : pos + draw(st.integers(1, 3))]
    return bytes(raw)


# -- properties -------------------------------------------------------------------------------------


def test_the_valid_files_parse_in_every_layout():
    for raw in layouts(VALID):
        tasks = check(raw)
        assert not isinstance(tasks, InputError) and [t.custom_id for t in tasks] == ["mail-1", "tx-1", "ex-1"]


@FAST
@given(raw=st.binary(max_size=600), small=st.booleans())
@example(raw=b"[" * 3000, small=False)
@example(raw=b'{"tasks": ' + b"{" * 3000, small=False)
@example(raw=b"[1" + b"0" * 5000 + b"]", small=False)
@example(raw=b"\xef\xbb\xbf[]", small=False)
@example(raw=b"\xff\xfe[\x00]\x00", small=True)
def test_arbitrary_bytes(raw, small):
    check(raw, LIMITS[small])


@FAST
@given(value=JSON, form=st.sampled_from(["plain", "tasks", "jsonl", "list"]), small=st.booleans())
def test_arbitrary_json_values(value, form, small):
    if form == "tasks":
        value = {"tasks": value}
    if form == "list":
        value = [value]
    if form == "jsonl" and isinstance(value, list):
        raw = "\n".join(json.dumps(v) for v in value).encode()
    else:
        raw = json.dumps(value).encode()
    check(raw, LIMITS[small])


@FAST
@given(raw=byte_mutated(), small=st.booleans())
def test_byte_mutations_of_valid_files(raw, small):
    check(raw, LIMITS[small])


@FAST
@given(raw=structurally_mutated(), small=st.booleans())
def test_structural_mutations_of_valid_files(raw, small):
    check(raw, LIMITS[small])


@FAST
@given(raw=one_field_changed(), small=st.booleans())
@example(raw=json.dumps([{**VALID[1], "input": {**VALID[1]["input"], "amount": float("nan")}}]).encode(), small=False)
@example(raw=json.dumps([{**VALID[0], "custom_id": "mail-\ud800"}]).encode(), small=False)
@example(
    raw=json.dumps(
        [{**BATCH_LINE, "body": {**BATCH_LINE["body"], "response_format": {"type": "json_schema", "json_schema": 5}}}]
    ).encode(),
    small=False,
)
def test_one_field_changed(raw, small):
    check(raw, LIMITS[small])


INVALID = [
    {**triage_task("bad"), "kind": "email.triag"},
    {"custom_id": "bad", "kind": "email.triage"},
    {**triage_task("bad"), "options": []},
    {**triage_task("bad"), "custom_id": "x" * 300},
    {"custom_id": "bad", "kind": "extract", "input": {"text": "x", "schema": {"type": "strng"}}},
    {**BATCH_LINE, "url": "v1/chat/completions"},
    triage_task("bad", body="long " * 10_000),
    {**triage_task("bad"), "input": {"from": "a@b", "body": float("nan")}},
    "not a task",
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_valid=st.integers(0, 12), at=st.integers(0, 12), bad=st.sampled_from(INVALID))
def test_submit_is_all_or_nothing(client, conn, n_valid, at, bad):
    conn.flushdb()
    tasks: list[Any] = [triage_task(i) for i in range(n_valid)]
    tasks.insert(min(at, n_valid), copy.deepcopy(bad))
    with pytest.raises(InputError) as info:
        client.submit(tasks)
    assert f"tasks[{min(at, n_valid)}]" in str(info.value)
    assert client.queue_depth() == 0
    assert conn.keys("rq:job:*") == [] and conn.dbsize() == 0
