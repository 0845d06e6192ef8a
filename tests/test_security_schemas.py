"""Finding 5 (and 15, parsing side): user schemas and odd answers.

A user's `extract` schema or `chat` json_schema is run by the worker against model answers. It
must never make the worker fetch anything (http, file), stall, or backtrack for seconds; an odd
answer (huge, deeply nested, a 5,000-digit integer, not text) ends as OutputInvalid.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.kinds.base import OutputInvalid, parse_json_output
from jobs.parse import InputError, parse_bytes

# -- helpers ----------------------------------------------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = json.dumps({"type": "integer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def schema_server() -> Iterator[tuple[str, list[str]]]:
    """An http server that serves a schema and records every request it gets."""
    hits: list[str] = []
    handler = type("H", (_Recorder,), {"hits": hits})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def extract_file(schema: Any) -> bytes:
    task = {"custom_id": "ex-1", "kind": "extract", "input": {"text": "Ana paid 12 EUR", "schema": schema}}
    return ("[\n" + json.dumps(task) + "\n]\n").encode()


def chat_file(schema: Any) -> bytes:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    task = {"custom_id": "c-1", "kind": "chat", "input": body}
    return ("[\n" + json.dumps(task) + "\n]\n").encode()


def refused(raw: bytes, *expected: str) -> str:
    with pytest.raises(InputError) as info:
        parse_bytes(raw, "f.json")
    msg = str(info.value)
    for part in expected:
        assert part in msg, f"{part!r} not in:\n{msg}"
    return msg


def in_thread(fn: Any, wait: float) -> tuple[bool, Any]:
    """Run fn in a daemon thread; (finished in time, its result or exception)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(wait)
    return (not t.is_alive()), (out[0] if out else None)


def obj(prop: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"v": prop}}


# -- remote and file references --------------------------------------------------------------------


def test_an_http_ref_is_never_fetched_while_validating(schema_server):
    url, hits = schema_server
    schema = obj({"$ref": f"{url}/int.json"})
    with pytest.raises(OutputInvalid, match=r"at properties/v/\$ref"):
        parse_json_output('{"v": 5}', schema)
    assert hits == []


def test_a_file_ref_is_never_read_while_validating(tmp_path: Path):
    target = tmp_path / "int.json"
    target.write_text('{"type": "integer"}')
    schema = obj({"$ref": target.as_uri()})
    # If the file were read, "x" would fail the integer schema; if not, the ref is refused.
    with pytest.raises(OutputInvalid) as info:
        parse_json_output('{"v": "x"}', schema)
    assert "at properties/v/$ref" in str(info.value)  # refused, not a type error from the file
    with pytest.raises(OutputInvalid, match=r"at properties/v/\$ref"):
        parse_json_output('{"v": 5}', {**obj({"$ref": "file:///etc/hostname"})})


def test_the_validator_registry_never_retrieves_even_without_the_check(schema_server):
    # The second layer: should a reference get past check_safe, the registry refuses to fetch it.
    from referencing.exceptions import Unresolvable

    from jobs.kinds.schema_safety import NO_RETRIEVAL, SafeValidator

    url, hits = schema_server
    v = SafeValidator(obj({"$ref": f"{url}/int.json"}), registry=NO_RETRIEVAL)
    with pytest.raises(Unresolvable):
        v.is_valid({"v": 5})
    assert hits == []


def test_a_ref_to_a_server_that_never_answers_does_not_stall(silent_server):
    schema = obj({"$ref": f"{silent_server}/never.json"})
    finished, result = in_thread(lambda: parse_json_output('{"v": 1}', schema), wait=3.0)
    assert finished, "validation stalled on a remote $ref"
    assert isinstance(result, OutputInvalid)


def test_a_relative_ref_under_a_remote_id_is_not_fetched(schema_server):
    url, hits = schema_server
    schema = {"$id": f"{url}/root.json", "type": "object", "properties": {"v": {"$ref": "int.json"}}}
    with pytest.raises(OutputInvalid):
        parse_json_output('{"v": 5}', schema)
    assert hits == []


@pytest.mark.parametrize("make", [extract_file, chat_file])
@pytest.mark.parametrize(
    ("schema", "where", "what"),
    [
        (obj({"$ref": "http://127.0.0.1:9/x.json"}), "properties/v/$ref", "only local references"),
        (obj({"$ref": "file:///etc/hostname"}), "properties/v/$ref", "only local references"),
        (obj({"$ref": "other.json#/a"}), "properties/v/$ref", "only local references"),
        (obj({"$dynamicRef": "http://127.0.0.1:9/x.json"}), "properties/v/$dynamicRef", "only local references"),
        # A $ref can point anywhere in the document, even into `const` data, so none may be remote.
        ({"type": "object", "$defs": {"a": {"const": {"$ref": "https://e.x/s"}}}}, "$defs/a/const/$ref", "local"),
        ({"$schema": "http://127.0.0.1:9/meta", "type": "object"}, "$schema", "2020-12"),
        ({"type": "object", "$defs": {"a": {"$id": "http://127.0.0.1:9/a", "type": "string"}}}, "$defs/a/$id", "$id"),
    ],
)
def test_submit_refuses_non_local_references(make, schema, where, what):
    refused(make(schema), "f.json:2: tasks[0]", where, what)


def test_submit_accepts_local_references():
    schema = {
        "$id": "https://example.com/person.schema.json",
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {"amount": {"type": "number"}},
        "properties": {"a": {"$ref": "#/$defs/amount"}, "b": {"$ref": "#"}},
    }
    (task,) = parse_bytes(extract_file(schema), "f.json").tasks
    assert task.kind == "extract"
    assert parse_json_output('{"a": 1.5}', schema) == {"a": 1.5}
    with pytest.raises(OutputInvalid, match="at a: type"):
        parse_json_output('{"a": "x"}', schema)


# -- patterns ----------------------------------------------------------------------------------------


def test_a_backtracking_pattern_answers_fast():
    # ^(a+)+$ on "aaa...!" doubles its time per character with a backtracking engine: seconds at 25.
    schema = obj({"type": "string", "pattern": "^(a+)+$"})
    answer = json.dumps({"v": "a" * 25 + "!"})
    t0 = time.monotonic()
    with pytest.raises(OutputInvalid, match="pattern"):
        parse_json_output(answer, schema)
    assert time.monotonic() - t0 < 0.3
    assert parse_json_output(json.dumps({"v": "a" * 25}), schema) == {"v": "a" * 25}


def test_backtracking_pattern_properties_answer_fast():
    schema = {"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}}, "additionalProperties": False}
    answer = json.dumps({"a" * 25 + "!": 1})
    t0 = time.monotonic()
    with pytest.raises(OutputInvalid):
        parse_json_output(answer, schema)
    assert time.monotonic() - t0 < 0.3
    with pytest.raises(OutputInvalid):
        parse_json_output(json.dumps({"a" * 25: "not an integer"}), schema)
    assert parse_json_output(json.dumps({"aaa": 1}), schema) == {"aaa": 1}


@pytest.mark.parametrize("make", [extract_file, chat_file])
@pytest.mark.parametrize(
    ("schema", "where"),
    [
        (obj({"type": "string", "pattern": "^(a)\\1$"}), "properties/v/pattern"),
        (obj({"type": "string", "pattern": "^(?=a)a$"}), "properties/v/pattern"),
        ({"type": "object", "patternProperties": {"(x)\\1": {}}}, "patternProperties"),
        (obj({"type": "string", "pattern": "a{1000}{1000}"}), "properties/v/pattern"),
    ],
)
def test_submit_refuses_patterns_the_linear_engine_cannot_run(make, schema, where):
    msg = refused(make(schema), "f.json:2: tasks[0]", where, "pattern")
    assert "backreferences" in msg or "too large" in msg or "not supported" in msg


def test_unevaluated_properties_with_pattern_properties_is_refused():
    schema = {"type": "object", "patternProperties": {"^x": {}}, "unevaluatedProperties": False}
    refused(extract_file(schema), "unevaluatedProperties", "additionalProperties")


def test_a_pattern_refused_at_validation_ends_as_output_invalid():
    # Tasks queued before this check existed reach the worker unchecked: still no backtracking engine.
    schema = obj({"type": "string", "pattern": "^(a)\\1$"})
    with pytest.raises(OutputInvalid, match="pattern"):
        parse_json_output('{"v": "aa"}', schema)


# -- odd answers (finding 15, parsing side) ----------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"v": ' + "[" * 5_000 + "]" * 5_000 + "}",
        '{"v": ' + "9" * 5_000 + "}",
        '{"v": "' + "x" * 9_000_000 + '"}',
        ["a", "content", "list"],
        {"text": "a dict"},
        5,
    ],
    ids=["100k-brackets", "5k-nested-value", "5000-digits", "9MB", "content-list", "content-dict", "content-int"],
)
def test_odd_answers_end_as_output_invalid(content):
    schema = {"type": "object", "properties": {"v": {"const": [[1]]}}, "uniqueItems": True}
    with pytest.raises(OutputInvalid):
        parse_json_output(content, schema)


def test_deep_answer_against_a_recursive_schema_is_output_invalid():
    schema = {"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"}
    # Within the JSON decoder's reach, but deep enough that validating it recurses past the limit.
    content = "[" * 900 + "]" * 900
    with pytest.raises(OutputInvalid):
        parse_json_output(content, schema)


def test_validate_in_thread_times_out_as_output_invalid(monkeypatch):
    from jobs.kinds import base

    def slow(content: Any, schema: Any) -> Any:
        time.sleep(2)
        return "late"

    monkeypatch.setattr(base, "parse_json_output", slow)

    async def main() -> float:
        t0 = time.monotonic()
        with pytest.raises(OutputInvalid, match="time limit"):
            await base.validate_in_thread('{"v": 1}', {"type": "object"}, timeout=0.2)
        return time.monotonic() - t0

    assert asyncio.run(main()) < 1.0


def test_validate_in_thread_keeps_the_event_loop_free():
    from jobs.kinds.base import validate_in_thread

    schema = obj({"type": "string", "pattern": "^[a-z]+$"})

    async def main() -> Any:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(tick())
        value = await validate_in_thread(json.dumps({"v": "abc"}), schema, timeout=5)
        none = await validate_in_thread("free text", None, timeout=5)
        t.cancel()
        return value, none, ticks

    value, none, ticks = asyncio.run(main())
    assert value == {"v": "abc"} and none is None and ticks > 0


def test_validate_in_thread_works_in_a_forked_child():
    import os

    from jobs.kinds.base import validate_in_thread

    schema = obj({"type": "integer"})
    assert asyncio.run(validate_in_thread('{"v": 1}', schema, timeout=5)) == {"v": 1}  # the parent's pool is up
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        try:
            ok = asyncio.run(validate_in_thread('{"v": 2}', schema, timeout=5)) == {"v": 2}
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
