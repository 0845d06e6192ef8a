"""Bad input: every problem is reported with its place (file, line or tasks[i], field) and a hint
on how to fix it, the exit is non-zero, and nothing at all reaches Redis."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jobs.config import all_env_vars
from jobs.crypto import BadKeyError, DecryptError, MissingKeyError, generate_key
from jobs.errors import JobctlError
from jobs.parse import InputError
from producer.cli import cli
from producer.client import Client
from tests.conftest import triage_task

# -- helpers ----------------------------------------------------------------------------------------


def tx_task(i: int | str, **input_over: Any) -> dict[str, Any]:
    return {
        "custom_id": f"tx-{i}",
        "kind": "transaction.categorize",
        "input": {"date": "2024-05-01", "description": "AMZN MKTP US*2K4", "amount": -12.5, **input_over},
        "options": {"categories": ["shopping", "groceries", "travel"]},
    }


def extract_task(schema: Any) -> dict[str, Any]:
    return {"custom_id": "ex-1", "kind": "extract", "input": {"text": "Ana paid 12 EUR", "schema": schema}}


def batch_line(custom_id: str = "req-1", **over: Any) -> dict[str, Any]:
    line = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "x", "messages": [{"role": "user", "content": "hello"}]},
    }
    line.update(over)
    return line


def as_file(tasks: list[Any]) -> bytes:
    """A task list laid out one task per line after the opening bracket: tasks[i] is on line i + 2."""
    return ("[\n" + ",\n".join(json.dumps(t) for t in tasks) + "\n]\n").encode()


def as_jsonl(lines: list[Any]) -> bytes:
    return ("\n".join(json.dumps(x) for x in lines) + "\n").encode()


def assert_nothing_enqueued(client: Client, conn: Any, before: set[bytes] | None = None) -> None:
    assert client.queue_depth() == 0
    assert conn.keys("rq:job:*") == []
    assert conn.keys("jobctl:batch:*") == []
    # The db is flushed per test: a refused submit leaves no key of any kind behind.
    assert set(conn.keys("*")) == (before or set())


def assert_refused(client: Client, conn: Any, raw: bytes, source: str, *expected: str) -> InputError:
    with pytest.raises(InputError) as info:
        client.submit_bytes(raw, source)
    msg = str(info.value)
    for part in expected:
        assert part in msg, f"{part!r} not in:\n{msg}"
    assert "nothing was submitted" in msg
    assert_nothing_enqueued(client, conn)
    return info.value


def cli_env(settings: Any, **over: str | None) -> dict[str, str | None]:
    """The CLI's environment: every jobctl variable unset, then the test's Redis, key, queue and home."""
    env: dict[str, str | None] = dict.fromkeys(all_env_vars())
    env.update(
        {
            "REDIS_URL": settings.redis_url,
            "JOBCTL_KEY": settings.key_text,
            "JOBCTL_QUEUE": settings.queue,
            "JOBCTL_HOME": str(settings.home),
        }
    )
    env.update(over)
    return env


def run_cli(settings: Any, *args: str, input: bytes | None = None, **env: str | None) -> Any:
    result = CliRunner().invoke(cli, list(args), env=cli_env(settings, **env), input=input)
    # A refusal is a clean ClickException (exit 1), never a traceback.
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    return result


def write(tmp_path: Path, name: str, raw: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


# -- the file itself --------------------------------------------------------------------------------


def test_malformed_json_array_names_line_and_column(client, conn):
    raw = (
        b'[\n  {"custom_id": "a", "kind": "email.triage",\n   "input": {"from": "a@b", "body": "x"}},\n'
        b'  {"custom_id": "b" "kind": "email.triage"}\n]\n'
    )
    e = assert_refused(
        client, conn, raw, "inbox.json", "inbox.json:4:21", "malformed JSON in tasks[1]", "Expecting ',' delimiter"
    )
    assert len(e.problems) == 1


def test_malformed_jsonl_line(client, conn):
    raw = as_jsonl([batch_line("r1")]) + b'{"custom_id": "r2", "method": "POST",\n' + as_jsonl([batch_line("r3")])
    assert_refused(client, conn, raw, "batch.jsonl", "batch.jsonl:2:", "malformed JSON line")


@pytest.mark.parametrize("raw", [b"", b"   \n\t\r\n  \n"], ids=["empty", "whitespace"])
def test_empty_and_whitespace_files(client, conn, raw):
    assert_refused(
        client,
        conn,
        raw,
        "empty.json",
        "empty.json",
        "the file is empty",
        "give a JSON list of tasks or OpenAI batch JSONL",
    )


def test_binary_garbage(client, conn):
    rng = random.Random(7)
    raw = b"\n".join(bytes(rng.randrange(256) for _ in range(40)) for _ in range(20)) + b"\x00\x00\x01\xff"
    assert_refused(client, conn, raw, "dump.bin", "dump.bin:", "looks binary", "give a JSON or JSONL text file")


def test_latin1_file_names_line_and_column(client, conn):
    raw = '[\n  {"custom_id": "caf\u00e9", "kind": "email.triage", "input": {}}\n]'.encode("latin-1")
    assert_refused(
        client, conn, raw, "latin.json", "latin.json:2:21", "not valid UTF-8 (byte 0xe9)", "save it as UTF-8"
    )


def test_utf16_with_bom(client, conn):
    raw = json.dumps([triage_task(1)]).encode("utf-16")
    assert raw[:2] in (b"\xff\xfe", b"\xfe\xff")
    assert_refused(client, conn, raw, "wide.json", "wide.json:1:1", "UTF-16", "save it as UTF-8")


@pytest.mark.parametrize("raw", [b"42", b'"a string"', b"null", b"true"])
def test_top_level_scalar(client, conn, raw):
    assert_refused(
        client,
        conn,
        b"\n" + raw,
        "scalar.json",
        "scalar.json:2",
        'expected a JSON list of tasks, an object with "tasks", or JSONL lines',
    )


def test_tasks_not_a_list(client, conn):
    assert_refused(
        client, conn, b'{"tasks": 5}', "wrap.json", "wrap.json: tasks", "must be a list of tasks", "not a number"
    )


def test_wrapped_tasks_are_located_by_line(client, conn):
    raw = (
        b'{"tasks": [\n'
        + json.dumps(triage_task(1)).encode()
        + b",\n"
        + json.dumps({**triage_task(2), "kind": "email.sumarize"}).encode()
        + b"\n]}\n"
    )
    assert_refused(
        client, conn, raw, "wrap.json", "wrap.json:3: tasks[1] ('mail-2'): kind", "did you mean 'email.summarize'?"
    )


def test_json_nested_too_deep(client, conn):
    # Deeper than the JSON decoder's recursion limit: was a RecursionError traceback.
    raw = b"[\n" + b"[" * 5000 + b"]" * 5000 + b"\n]"
    assert_refused(
        client, conn, raw, "deep.json", "deep.json:2:", "tasks[0]", "nested more than 64 levels deep", "flatten it"
    )
    # Shallower, but deeper than anything a task needs (the schema checker would recurse on it).
    content: Any = "x"
    for _ in range(80):
        content = [content]
    task = {"custom_id": "c1", "kind": "chat", "input": {"messages": [{"role": "user", "content": content}]}}
    assert_refused(
        client,
        conn,
        as_file([task]),
        "deep.json",
        "deep.json:2: tasks[0] ('c1'): input.messages.0.content",
        "nested more than 64 levels deep",
    )


def test_number_with_too_many_digits(client, conn):
    # Python refuses to convert integers over 4300 digits: was a ValueError traceback.
    raw = b'[\n{"custom_id": "t", "kind": "transaction.categorize", "input": {"amount": 1' + b"0" * 5000 + b"}}\n]"
    assert_refused(
        client, conn, raw, "big.json", "big.json:2:", "tasks[0]", "more than 4300 digits", "write it as a string"
    )


def test_nan_and_unpaired_surrogates(client, conn):
    raw = as_file([tx_task(1)]).replace(b"-12.5", b"NaN")
    assert_refused(
        client,
        conn,
        raw,
        "nan.json",
        "nan.json:2: tasks[0] ('tx-1'): input.amount",
        "NaN or infinite",
        "give a finite number",
    )
    # A lone surrogate escape: was a UnicodeEncodeError traceback at submit (the job id hashes the custom_id).
    raw = as_file([triage_task(1)]).replace(b'"mail-1"', b'"mail-\\ud800"')
    assert_refused(client, conn, raw, "sur.json", "sur.json:2: tasks[0]", "custom_id", "unpaired UTF-16 surrogate")


# -- one task ---------------------------------------------------------------------------------------


def test_unknown_kind_suggests_the_closest(client, conn):
    raw = as_file([triage_task(1), {**triage_task(2), "kind": "email.triag"}])
    assert_refused(
        client,
        conn,
        raw,
        "f.json",
        "f.json:3: tasks[1] ('mail-2'): kind",
        "unknown kind 'email.triag'",
        "did you mean 'email.triage'?",
    )


def test_missing_custom_id(client, conn):
    task = triage_task(2)
    del task["custom_id"]
    assert_refused(
        client,
        conn,
        as_file([triage_task(1), task]),
        "f.json",
        "f.json:3: tasks[1]: custom_id",
        "missing field 'custom_id'",
        "give each task a unique custom_id",
    )


def test_missing_input(client, conn):
    task = triage_task(1)
    del task["input"]
    assert_refused(
        client,
        conn,
        as_file([task]),
        "f.json",
        "f.json:2: tasks[0] ('mail-1'): input",
        "missing field 'input'",
        "add the task's input object",
    )


def test_unknown_top_level_task_field(client, conn):
    task = {**triage_task(1), "priority": 5}
    assert_refused(
        client,
        conn,
        as_file([task]),
        "f.json",
        "f.json:2: tasks[0] ('mail-1'): priority",
        "unknown field",
        "a task has custom_id, kind, input and options",
    )


def test_unknown_field_inside_input(client, conn):
    task = triage_task(1)
    task["input"]["subjct"] = "typo"
    assert_refused(
        client,
        conn,
        as_file([task]),
        "f.json",
        "tasks[0] ('mail-1'): input.subjct",
        "unknown field",
        "did you mean 'subject'?",
    )


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (tx_task(1, amount="12 dollars"), ["input.amount", "valid number", "unable to parse string"]),
        ({**triage_task(1), "options": {"max_tokens": "high"}}, ["options.max_tokens", "valid integer"]),
        ({**triage_task(1), "options": {"temperature": 7}}, ["options.temperature", "less than or equal to 2"]),
        ({**triage_task(1), "options": ["urgent"]}, ["options", "must be an object, not a list"]),
        ({**triage_task(1), "input": "just a string"}, ["input", "valid dictionary", "(got a string)"]),
        ({**triage_task(1), "custom_id": 17}, ["custom_id", "must be a string, not a number"]),
    ],
    ids=["amount-string", "max-tokens-string", "temperature-range", "options-list", "input-string", "id-number"],
)
def test_wrong_types(client, conn, task, expected):
    assert_refused(client, conn, as_file([task]), "f.json", "f.json:2: tasks[0]", *expected)


def test_duplicate_custom_id_names_both_places(client, conn):
    raw = as_file([triage_task(1), triage_task(2), triage_task(3), triage_task(1, body="other")])
    assert_refused(
        client,
        conn,
        raw,
        "f.json",
        "f.json:5: tasks[3]",
        "duplicate custom_id 'mail-1'",
        "first at f.json:2: tasks[0]",
        "give each task its own custom_id",
    )


def test_custom_id_too_long(client, conn):
    task = {**triage_task(1), "custom_id": "m" * 300}
    assert_refused(
        client,
        conn,
        as_file([task]),
        "f.json",
        "f.json:2: tasks[0]",
        "custom_id",
        "300 characters, over the limit of 256",
        "shorten it",
    )


def test_custom_id_with_control_characters(client, conn):
    task = {**triage_task(1), "custom_id": "mail\n1\t"}
    assert_refused(
        client,
        conn,
        as_file([task]),
        "f.json",
        "f.json:2: tasks[0]",
        "custom_id",
        "must not contain control characters",
        "remove them",
    )


def test_extract_with_an_invalid_schema(client, conn):
    task = extract_task({"type": "object", "properties": {"a": {"type": "strng"}}})
    assert_refused(
        client,
        conn,
        as_file([task]),
        "f.json",
        "f.json:2: tasks[0] ('ex-1'): input.schema",
        "not a valid JSON schema at properties/a/type",
        "'strng'",
    )


def test_extract_with_a_non_object_schema(client, conn):
    task = extract_task({"type": "array", "items": {"type": "string"}})
    assert_refused(
        client,
        conn,
        as_file([task]),
        "f.json",
        "f.json:2: tasks[0] ('ex-1'): input.schema",
        "top level must be an object",
        '"type": "object"',
    )


def test_task_larger_than_the_model_context(client, conn):
    task = triage_task(1, body="Please read this long thread. " * 1500)
    assert client.settings.context_tokens == 8192
    assert_refused(
        client,
        conn,
        as_file([triage_task(0), task]),
        "f.json",
        "f.json:3: tasks[1] ('mail-1')",
        "tokens",
        "model's context of 8,192",
        "shorten the input",
    )


def test_task_over_the_max_task_bytes(settings, conn):
    small = Client(settings.with_(max_task_bytes=2000), connection=conn)
    task = triage_task(1, body="x" * 3000)
    assert_refused(
        small,
        conn,
        as_file([task]),
        "f.json",
        "f.json:2: tasks[0] ('mail-1')",
        "over the 2,000-byte limit",
        "JOBCTL_MAX_TASK_BYTES",
    )


def test_several_problems_are_all_listed(client, conn):
    bad_kind = {**triage_task(2), "kind": "email.triag"}
    no_input = triage_task(4)
    del no_input["input"]
    bad_amount = tx_task(5, amount="lots")
    raw = as_file([triage_task(1), bad_kind, triage_task(3), no_input, bad_amount, triage_task(6)])
    e = assert_refused(
        client,
        conn,
        raw,
        "f.json",
        "3 problems",
        "tasks[1] ('mail-2'): kind",
        "tasks[3] ('mail-4'): input",
        "tasks[4] ('tx-5'): input.amount",
    )
    assert [p.where.split(":")[1] for p in e.problems] == ["3", "5", "6"]


# -- OpenAI batch JSONL -----------------------------------------------------------------------------


def test_batch_line_for_an_endpoint_not_served_gets_its_own_error(client, conn):
    """Like `vllm run-batch`: the embeddings line gets an error line of its own, the rest runs."""
    raw = as_jsonl([batch_line("r1"), batch_line("r2", url="/v1/embeddings")])
    sub = client.submit_bytes(raw, "b.jsonl")
    assert (sub.total, sub.rejected, client.queue_depth()) == (2, 1, 1)
    [refused] = [o for o in client.results(sub.batch_id) if o.custom_id == "r2"]
    assert refused.error == {
        "code": "unsupported_endpoint",
        "message": "'/v1/embeddings' is not served; jobctl runs /v1/chat/completions",
    }


def test_batch_line_with_a_malformed_url_stops_the_submit(client, conn):
    raw = as_jsonl([batch_line("r1"), batch_line("r2", url="embeddings")])
    assert_refused(client, conn, raw, "b.jsonl", "b.jsonl:2 ('r2'): url", '"/v1/chat/completions"')


def test_batch_line_with_wrong_method(client, conn):
    raw = as_jsonl([batch_line("r1", method="GET")])
    assert_refused(client, conn, raw, "b.jsonl", "b.jsonl:1 ('r1'): method", 'must be "POST"', "'GET'")


def test_batch_line_without_messages(client, conn):
    raw = as_jsonl([batch_line("r1"), batch_line("r2", body={"model": "x", "max_tokens": 10})])
    assert_refused(client, conn, raw, "b.jsonl", "b.jsonl:2 ('r2'): body.messages", "missing required field")


def test_batch_line_with_a_malformed_response_format(client, conn):
    # json_schema not an object: the chat kind's validator raised AttributeError, which escaped as a traceback.
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": 5},
    }
    raw = as_jsonl([batch_line("r1", body=body)])
    assert_refused(client, conn, raw, "b.jsonl", "b.jsonl:1 ('r1'): body.response_format", "must be an object")


# -- size limits ------------------------------------------------------------------------------------


def sparse_file(path: Path, size: int) -> Path:
    """A real file of `size` bytes that costs nothing to write: a JSON list opened, then a hole."""
    with path.open("wb") as f:
        f.write(b"[\n")
        f.seek(size - 2)
        f.write(b"]\n")
    return path


@pytest.fixture
def no_reading(monkeypatch):
    """Fail the test if a file's content is read: an oversized file must be refused from its size."""

    def refuse(self: Path) -> bytes:
        raise AssertionError(f"{self} was read")

    monkeypatch.setattr(Path, "read_bytes", refuse)


def test_file_over_the_size_limit_is_refused_before_reading(client, conn, tmp_path, no_reading):
    path = sparse_file(tmp_path / "huge.json", 100 * 1024 * 1024)
    assert path.stat().st_size == 100 * 1024 * 1024
    start = time.monotonic()
    with pytest.raises(InputError) as info:
        client.submit_file(path)
    assert time.monotonic() - start < 2
    msg = str(info.value)
    assert str(path) in msg and "104.9 MB, over the 64 MiB limit" in msg
    assert "split it into smaller" in msg and "JOBCTL_MAX_FILE_BYTES" in msg
    assert_nothing_enqueued(client, conn)


def test_file_over_the_size_limit_via_cli(settings, client, conn, tmp_path, no_reading):
    path = sparse_file(tmp_path / "huge.json", 100 * 1024 * 1024)
    start = time.monotonic()
    result = run_cli(settings, "submit", str(path))
    assert time.monotonic() - start < 2
    assert "huge.json" in result.output and "over the 64 MiB limit" in result.output
    assert "split it into smaller" in result.output
    assert_nothing_enqueued(client, conn)


def test_bytes_over_a_lowered_size_limit(settings, conn):
    small = Client(settings.with_(max_file_bytes=1024 * 1024), connection=conn)
    raw = as_file([triage_task(i, body="y" * 2000) for i in range(600)])
    assert len(raw) > 1024 * 1024
    assert_refused(small, conn, raw, "mid.json", "mid.json", "over the 1 MiB limit", "split it into smaller")


def test_unreadable_paths(client, conn, tmp_path):
    with pytest.raises(JobctlError, match=r"missing\.json: no such file"):
        client.submit_file(tmp_path / "missing.json")
    # A folder: was an IsADirectoryError traceback.
    with pytest.raises(JobctlError, match=r"the folder is empty; give a Maildir"):
        client.submit_file(tmp_path)
    assert_nothing_enqueued(client, conn)


# -- keys -------------------------------------------------------------------------------------------


def test_wrong_key_names_both_key_ids(settings, client, conn):
    first = client.submit([triage_task(1)])
    assert first.total == 1
    before = set(conn.keys("*"))
    other = Client(settings.with_(key=generate_key()), connection=conn)
    assert other.cipher.key_id != client.cipher.key_id
    with pytest.raises(DecryptError) as info:
        other.submit([triage_task(2), triage_task(3)])
    msg = str(info.value)
    assert client.cipher.key_id in msg and other.cipher.key_id in msg
    assert repr(settings.queue) in msg and "set JOBCTL_KEY to the queue's key" in msg
    assert client.queue_depth() == 1
    assert set(conn.keys("*")) == before


def test_wrong_key_via_cli(settings, client, conn, tmp_path):
    client.submit([triage_task(1)])
    before = set(conn.keys("*"))
    other_key = generate_key()
    path = write(tmp_path, "more.json", as_file([triage_task(2)]))
    result = run_cli(settings, "submit", str(path), JOBCTL_KEY=other_key)
    other_id = Client(settings.with_(key=other_key)).cipher.key_id
    assert client.cipher.key_id in result.output and other_id in result.output
    assert client.queue_depth() == 1
    assert set(conn.keys("*")) == before


def test_missing_key(settings, conn, tmp_path):
    keyless = Client(settings.model_copy(update={"key": None}), connection=conn)
    assert not (settings.home / "key").exists()
    with pytest.raises(MissingKeyError) as info:
        keyless.submit([triage_task(1)])
    msg = str(info.value)
    assert str(settings.home / "key") in msg and "run `jobctl keygen`" in msg and "JOBCTL_KEY" in msg
    assert conn.keys("*") == []


def test_missing_key_via_cli(settings, conn, tmp_path):
    path = write(tmp_path, "tasks.json", as_file([triage_task(1)]))
    result = run_cli(settings, "submit", str(path), JOBCTL_KEY=None)
    assert "no encryption key" in result.output and "jobctl keygen" in result.output
    assert conn.keys("*") == []


@pytest.mark.parametrize(
    ("bad_key", "expected"),
    [
        ("not base64 at all!", "is not url-safe base64"),
        ("c2hvcnQ=", "is 5 bytes, not 32"),
        ("\u00e9" * 44, "is not url-safe base64"),
    ],
    ids=["not-base64", "too-short", "non-ascii"],
)
def test_malformed_key(settings, conn, tmp_path, bad_key, expected):
    bad = Client(settings.with_(key=bad_key), connection=conn)
    with pytest.raises(BadKeyError) as info:
        bad.submit([triage_task(1)])
    msg = str(info.value)
    assert "the key from JOBCTL_KEY" in msg and expected in msg and "jobctl keygen" in msg
    assert conn.keys("*") == []


def test_malformed_key_file_via_cli(settings, conn, tmp_path):
    key_file = tmp_path / "bad.key"
    key_file.write_text("definitely-not-a-key\n")
    key_file.chmod(0o600)
    path = write(tmp_path, "tasks.json", as_file([triage_task(1)]))
    result = run_cli(settings, "submit", str(path), JOBCTL_KEY=None, JOBCTL_KEY_FILE=str(key_file))
    assert str(key_file) in result.output and "bytes, not 32" in result.output and "jobctl keygen" in result.output
    assert conn.keys("*") == []


# -- the CLI shows the same located messages --------------------------------------------------------


def test_cli_malformed_json(settings, client, conn, tmp_path):
    raw = b'[\n  {"custom_id": "a",\n   "kind": "email.triage"\n   "input": {}}\n]\n'
    path = write(tmp_path, "inbox.json", raw)
    result = run_cli(settings, "submit", str(path))
    assert "inbox.json:4:4: malformed JSON in tasks[0]" in result.output
    assert "nothing was submitted" in result.output
    assert_nothing_enqueued(client, conn)


def test_cli_unknown_kind_from_stdin(settings, client, conn):
    raw = as_file([triage_task(1), {**triage_task(2), "kind": "transaction.categorise"}])
    result = run_cli(settings, "submit", "-", input=raw)
    assert "<stdin>:3: tasks[1] ('mail-2'): kind" in result.output
    assert "did you mean 'transaction.categorize'?" in result.output
    assert_nothing_enqueued(client, conn)


def test_cli_several_problems(settings, client, conn, tmp_path):
    empty_chat = {"custom_id": "c3", "kind": "chat", "input": {"messages": []}}
    tasks = [{**triage_task(1), "extra": 1}, tx_task(2, amount="x"), batch_line("r3"), empty_chat]
    path = write(tmp_path, "mixed.json", as_file(tasks))
    result = run_cli(settings, "submit", str(path), "--json")
    out = result.output
    assert "mixed.json: 3 problems, nothing was submitted" in out
    assert "mixed.json:2: tasks[0] ('mail-1'): extra: unknown field" in out
    assert "mixed.json:3: tasks[1] ('tx-2'): input.amount" in out
    assert "mixed.json:5: tasks[3] ('c3'): input.messages" in out
    # A batch line inside a JSON list is read as one: it converts and is accepted.
    assert "tasks[2]" not in out
    assert_nothing_enqueued(client, conn)


def test_cli_batch_jsonl_problems(settings, client, conn, tmp_path):
    raw = as_jsonl([batch_line("r1", url="/v1/embeddings", method="GET"), batch_line("r2", body={})])
    path = write(tmp_path, "batch.jsonl", raw)
    result = run_cli(settings, "submit", str(path))
    assert "batch.jsonl:1 ('r1'): method" in result.output
    assert "batch.jsonl:2 ('r2'): body.messages: missing required field" in result.output
    assert_nothing_enqueued(client, conn)


def test_cli_binary_and_missing_files(settings, client, conn, tmp_path):
    path = write(tmp_path, "photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + os.urandom(200))
    result = run_cli(settings, "submit", str(path))
    assert "photo.jpg:1:5: the file looks binary" in result.output
    result = run_cli(settings, "submit", str(tmp_path / "nope.json"))
    assert "no such file" in result.output and "nope.json" in result.output
    assert_nothing_enqueued(client, conn)
