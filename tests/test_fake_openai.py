"""Tests for the fault-injecting fake OpenAI server (tests/fake_openai.py)."""

from __future__ import annotations

import http.client
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from tests.fake_openai import FakeOpenAI, Fault, FaultPlan, Reply, _parse_vllm_argv, instance_for

REPO = Path(__file__).resolve().parents[1]
MSGS: Any = [{"role": "user", "content": "say something " * 10}]


@pytest.fixture
def srv() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(faults=FaultPlan(hang_seconds=0.5)) as s:
        yield s


def client(s: FakeOpenAI, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=s.url, api_key=key, max_retries=0, timeout=10)


def raw(
    s: FakeOpenAI, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp, resp.read()
    finally:
        conn.close()


def chat_body(**extra: Any) -> bytes:
    return json.dumps({"model": "m", "messages": MSGS, **extra}).encode()


# --------------------------------------------------------------------------- schemas


class Address(BaseModel):
    street: str
    zip_code: int | None = None


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]
    address: Address
    previous: list[Address] = []
    manager: Person | None = None


SCHEMAS: list[dict[str, Any]] = [
    Person.model_json_schema(),
    {
        "type": "object",
        "properties": {
            "kind": {"enum": ["b", "a"]},
            "v": {"const": 3},
            "n": {"type": "integer", "minimum": 5, "maximum": 9},
            "x": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "neg": {"type": "integer", "exclusiveMaximum": -3, "multipleOf": 4},
            "s": {"type": "string", "minLength": 3, "maxLength": 5},
            "d": {"type": "string", "format": "date"},
            "dt": {"type": "string", "format": "date-time"},
            "e": {"type": "string", "format": "email"},
            "arr": {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 3},
            "opt": {"type": ["string", "null"]},
            "nul": {"type": "null"},
            "one": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string"}]},
            "all": {
                "allOf": [
                    {"$ref": "#/definitions/Base"},
                    {"type": "object", "properties": {"y": {"type": "integer"}}, "required": ["y"]},
                ]
            },
            "ref": {"$ref": "#/definitions/Base"},
        },
        "required": ["kind"],
        "additionalProperties": False,
        "definitions": {"Base": {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]}},
    },
    {"type": "array", "items": {"type": "integer", "minimum": 10}, "minItems": 1},
    {"type": "string", "minLength": 4},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_instance_for_is_valid_and_deterministic(schema: dict[str, Any]) -> None:
    inst = instance_for(schema)
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    jsonschema.Draft202012Validator(schema, format_checker=checker).validate(inst)
    assert instance_for(schema) == inst


def test_instance_for_fills_all_properties_and_draft4_exclusive() -> None:
    inst = instance_for(SCHEMAS[1])
    assert set(inst) == set(SCHEMAS[1]["properties"])
    assert inst["kind"] == "b" and inst["d"] == "2026-01-01" and inst["n"] == 5
    assert len(inst["arr"]) == 2
    draft4 = {"type": "integer", "minimum": 0, "exclusiveMinimum": True}
    jsonschema.Draft4Validator(draft4).validate(instance_for(draft4))


# ------------------------------------------------------------------------------ chat


def test_chat_json_schema_via_openai(srv: FakeOpenAI) -> None:
    schema = Person.model_json_schema()
    resp = client(srv).chat.completions.create(
        model="my-model",
        messages=MSGS,
        response_format={"type": "json_schema", "json_schema": {"name": "Person", "schema": schema}},
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "stop" and resp.model == "my-model"
    assert choice.message.content is not None
    Person.model_validate_json(choice.message.content)
    jsonschema.validate(json.loads(choice.message.content), schema)
    assert resp.usage is not None and resp.usage.prompt_tokens > 1
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert srv.stats.requests == 1 and srv.stats.completed == 1
    assert srv.stats.prompts_seen[-1]["model"] == "my-model"


def test_content_modes_and_max_tokens(srv: FakeOpenAI) -> None:
    c = client(srv)

    def content(**kw: Any) -> tuple[str | None, str]:
        r = c.chat.completions.create(model="m", messages=MSGS, **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason

    assert content() == ("ok", "stop")
    assert content(response_format={"type": "json_object"}) == ("{}", "stop")
    schema = {"type": "object", "properties": {"a": {"type": "string", "minLength": 40}}}
    full, _ = content(response_format={"type": "json_object", "schema": schema})
    assert full == json.dumps({"a": "a" * 40})
    short, finish = content(response_format={"type": "json_object", "schema": schema}, max_tokens=2)
    assert finish == "length" and short == full[:8]


def test_bad_requests(srv: FakeOpenAI) -> None:
    assert raw(srv, "POST", "/v1/chat/completions", b"{nope")[0] == 400
    status, _, body = raw(srv, "POST", "/v1/chat/completions", chat_body(stream=True))
    assert status == 400 and "streaming" in json.loads(body)["error"]["message"]
    assert raw(srv, "GET", "/nope")[0] == 404
    assert raw(srv, "GET", "/v1/models")[0] == 200


# ---------------------------------------------------------------------------- faults


def test_each_fault_as_seen_by_openai_client(srv: FakeOpenAI) -> None:
    c = client(srv)

    def ask(timeout: float = 10) -> ChatCompletion:
        return c.chat.completions.create(model="m", messages=MSGS, timeout=timeout)

    srv.script(Fault.HTTP_500)
    with pytest.raises(openai.InternalServerError):
        ask()
    srv.script(Fault.HTTP_429)
    with pytest.raises(openai.RateLimitError) as rate:
        ask()
    assert rate.value.response.headers["retry-after"] == "0"
    srv.script(Fault.HTTP_503)
    with pytest.raises(openai.InternalServerError) as busy:
        ask()
    assert busy.value.status_code == 503 and busy.value.response.headers["retry-after"] == "0"
    srv.script(Fault.CLOSE)
    with pytest.raises(openai.APIConnectionError):
        ask()
    srv.script(Fault.HANG, Fault.HANG)
    with pytest.raises(openai.APITimeoutError):
        ask(timeout=0.1)
    t0 = time.monotonic()
    assert ask().choices[0].message.content == "ok"
    assert time.monotonic() - t0 >= 0.45
    srv.script(Fault.INVALID_JSON)
    bad = ask().choices[0].message.content
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad or "")
    srv.script(Fault.LENGTH)
    assert ask().choices[0].finish_reason == "length"
    srv.script(Fault.GARBAGE_BODY)
    assert not isinstance(ask(), ChatCompletion)  # openai hands back the raw text
    srv.script(Fault.GARBAGE_BODY)
    status, resp, body = raw(srv, "POST", "/v1/chat/completions", chat_body())
    assert (status, resp.getheader("content-type"), body) == (200, "text/html", b"<html>oops")
    assert srv.stats.faults_injected == {**dict.fromkeys(Fault, 1), Fault.HANG: 2, Fault.GARBAGE_BODY: 2}


def test_scripted_replies_consumed_in_order(srv: FakeOpenAI) -> None:
    srv.script(Reply("first"), Fault.HTTP_500, Reply("third", finish_reason="length"))
    c = client(srv)
    got: list[tuple[str | None, str]] = []
    for _ in range(4):
        try:
            r = c.chat.completions.create(model="m", messages=MSGS)
            got.append((r.choices[0].message.content, r.choices[0].finish_reason))
        except openai.InternalServerError:
            got.append(("500", ""))
    assert got == [("first", "stop"), ("500", ""), ("third", "length"), ("ok", "stop")]


def test_random_faults_follow_seed() -> None:
    plan = FaultPlan(rate=0.3, kinds=(Fault.HTTP_500, Fault.HTTP_429), seed=7)
    rng = random.Random(7)
    expected = [int(rng.choice(plan.kinds).value) if rng.random() < 0.3 else 200 for _ in range(60)]
    with FakeOpenAI(faults=plan) as s:
        seen = [raw(s, "POST", "/v1/chat/completions", chat_body())[0] for _ in range(60)]
        assert seen == expected
        assert s.stats.faults_injected[Fault.HTTP_500] == expected.count(500)
        assert s.stats.completed == expected.count(200)


# ------------------------------------------------------------------- auth, lifecycle


def test_api_key_enforced() -> None:
    with FakeOpenAI(api_key="sekrit", model="served") as s:
        with pytest.raises(openai.AuthenticationError):
            client(s, "wrong").chat.completions.create(model="m", messages=MSGS)
        assert raw(s, "GET", "/v1/models")[0] == 401
        assert raw(s, "GET", "/health")[0] == 200
        assert [m.id for m in client(s, "sekrit").models.list()] == ["served"]
        r = client(s, "sekrit").chat.completions.create(model="m", messages=MSGS)
        assert r.choices[0].message.content == "ok"


def test_startup_delay_health() -> None:
    with FakeOpenAI(startup_delay=0.3) as s:
        assert raw(s, "GET", "/health")[0] == 503
        time.sleep(0.35)
        assert raw(s, "GET", "/health")[0] == 200


def test_sleep_wake_and_calls_order() -> None:
    with FakeOpenAI(sleep_delay=0.2, wake_delay=0.1) as s:
        t0 = time.monotonic()
        assert raw(s, "POST", "/sleep?level=1")[0] == 200
        assert time.monotonic() - t0 >= 0.19 and s.sleeping
        assert json.loads(raw(s, "GET", "/is_sleeping")[2]) == {"is_sleeping": True}
        with pytest.raises(openai.InternalServerError) as err:
            client(s).chat.completions.create(model="m", messages=MSGS)
        assert err.value.status_code == 503
        assert raw(s, "POST", "/wake_up")[0] == 200
        assert raw(s, "POST", "/reset_prefix_cache")[0] == 200
        assert json.loads(raw(s, "GET", "/is_sleeping?x=1")[2]) == {"is_sleeping": False}
        assert client(s).chat.completions.create(model="m", messages=MSGS).choices
        assert s.calls == [
            ("POST", "/sleep?level=1"),
            ("GET", "/is_sleeping"),
            ("POST", "/wake_up"),
            ("POST", "/reset_prefix_cache"),
            ("GET", "/is_sleeping"),
        ]


# ------------------------------------------------------------- concurrency, shutdown


def test_max_in_flight_with_latency() -> None:
    with FakeOpenAI(latency=0.2) as s:
        c = client(s)
        t0 = time.monotonic()
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda _: c.chat.completions.create(model="m", messages=MSGS), range(32)))
        assert all(r.choices[0].message.content == "ok" for r in results)
        assert s.stats.max_in_flight >= 20
        assert s.stats.in_flight == 0 and s.stats.completed == 32
        assert time.monotonic() - t0 < 3


def test_stop_with_in_flight_requests_fails_clients_fast() -> None:
    s = FakeOpenAI(latency=30).start()
    c = openai.OpenAI(base_url=s.url, api_key="x", max_retries=0, timeout=30)
    pool = ThreadPoolExecutor(8)
    futures = [pool.submit(c.chat.completions.create, model="m", messages=MSGS) for _ in range(8)]
    deadline = time.monotonic() + 5
    while s.stats.in_flight < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.stats.in_flight == 8
    t0 = time.monotonic()
    s.stop()
    for f in futures:
        with pytest.raises(openai.APIConnectionError):
            f.result(timeout=5)
    assert time.monotonic() - t0 < 5
    pool.shutdown()
    with pytest.raises(openai.APIConnectionError):
        c.chat.completions.create(model="m", messages=MSGS)


# ------------------------------------------------------------------------------- CLI


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fake_openai", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def listening_port(proc: subprocess.Popen[str], timeout: float = 10) -> int:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "fake server did not print its listening line"
    line = proc.stdout.readline().strip()
    assert line.startswith("fake-openai listening on http://127.0.0.1:"), line
    return int(line.rsplit(":", 1)[1])


def terminate(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=5)  # also closes the pipes
    finally:
        proc.kill()
    return proc.returncode


def test_cli_listens_and_exits_cleanly_on_sigterm() -> None:
    proc = spawn("--port", "0", "--model", "cli-model", "--faults", "500,close")
    port = listening_port(proc)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/v1/models")
    assert json.loads(conn.getresponse().read())["data"][0]["id"] == "cli-model"
    conn.close()
    assert terminate(proc) == 0


def test_cli_exit_after_start_simulates_crash() -> None:
    proc = spawn("--port", "0", "--exit-after-start", "0.2", "--exit-code", "3")
    listening_port(proc)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 3
    assert "fatal: simulated engine crash" in err


def test_vllm_compat_mode() -> None:
    argv = [
        "vllm-compat", "serve", "org/model", "--host", "127.0.0.1", "--port", "0",
        "--enable-sleep-mode", "--gpu-memory-utilization", "0.85",
        "--structured-outputs-config", '{"backend": "xgrammar"}',
        "--api-key", "k", "--served-model-name", "served", "--max-model-len=4096",
    ]  # fmt: skip
    proc = spawn(*argv, env={"FAKE_STARTUP_DELAY": "0.5"})
    port = listening_port(proc)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/health")
    first = conn.getresponse()
    assert (first.status, first.read()) == (503, b"")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        conn.request("GET", "/health")
        health = conn.getresponse()
        health.read()
        if health.status == 200:
            break
        time.sleep(0.05)
    assert health.status == 200
    conn.request("GET", "/v1/models", headers={"Authorization": "Bearer k"})
    assert json.loads(conn.getresponse().read())["data"][0]["id"] == "served"
    conn.close()
    assert terminate(proc) == 0

    crash = spawn("vllm-compat", "serve", "m", "--port", "0", env={"FAKE_EXIT_AFTER_START": "0.1"})
    listening_port(crash)
    _, err = crash.communicate(timeout=10)
    assert crash.returncode == 1 and "simulated engine crash" in err


def test_parse_vllm_argv() -> None:
    model, opts = _parse_vllm_argv(
        ["serve", "org/m", "--enable-sleep-mode", "--port", "9000", "--dtype=half", "--seed", "-1"]
    )
    assert model == "org/m"
    assert opts == {"--enable-sleep-mode": "", "--port": "9000", "--dtype": "half", "--seed": "-1"}
