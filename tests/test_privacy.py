"""Privacy: no task content, answer, key or password in Redis, logs, reprs or error messages.

Tasks carry marker strings in every private place (custom_id, email fields, transaction fields,
options, a raw chat body, and the model's answers); after submit and drain, every key name and
value of the Redis database is scanned (every type, with zlib and base64 layers unwrapped), and
so are the logs of an in-process drain at DEBUG and of `jobctl -vv` subprocesses.
"""

from __future__ import annotations

import ast
import base64
import binascii
import json
import logging
import re
import subprocess
import sys
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.config import Settings
from jobs.connection import describe
from jobs.crypto import Cipher, CryptoError, DecryptError, generate_key
from jobs.store import Batch, codec, keys
from producer.client import Client
from tests.conftest import RedisProcess
from tests.fake_openai import FakeOpenAI, Reply

REPO = Path(__file__).resolve().parents[1]
TAG = uuid.uuid4().hex[:6]
PLACES = [
    "cid",
    "from",
    "to",
    "subject",
    "body",
    "about",
    "instructions",
    "sign",
    "tone",
    "txdesc",
    "merchant",
    "account",
    "category",
    "rules",
    "history",
    "chat",
    "chatcid",
    "extract",
    "answer",
    "bad",
    "cli",
]
M = {p: f"PRIVMARK{p.upper()}{TAG}" for p in PLACES}


@pytest.fixture(scope="module")
def redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this module's own: db 13 of the local Redis is shared with other test runs,
    which flush it, and the scan below must see this module's keys only."""
    proc = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    try:
        yield proc.url
    finally:
        proc.stop()


def private_tasks(suffix: str = "") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"t1-{M['cid']}{suffix}",
            "kind": "email.triage",
            "input": {
                "from": f"{M['from']}@example.org",
                "to": f"{M['to']}@example.org",
                "subject": f"Re: {M['subject']}",
                "body": f"Hello, {M['body']} here.",
            },
            "options": {"about_me": f"I am {M['about']}"},
        },
        {
            "custom_id": f"t2-{M['cid']}{suffix}",
            "kind": "email.triage",
            "input": {"from": "a@example.org", "subject": "s", "body": f"second {M['body']}"},
        },
        {
            "custom_id": f"t3-{M['cid']}{suffix}",
            "kind": "email.draft_reply",
            "input": {"from": "b@example.org", "subject": M["subject"], "body": M["body"]},
            "options": {"instructions": f"mention {M['instructions']}", "sign_as": M["sign"], "tone": M["tone"]},
        },
        {
            "custom_id": f"t4-{M['cid']}{suffix}",
            "kind": "transaction.categorize",
            "input": {
                "date": "2026-01-02",
                "description": f"CARD {M['txdesc']}",
                "amount": -12.5,
                "merchant": M["merchant"],
                "account": M["account"],
            },
            "options": {"categories": [f"cat-{M['category']}", "other"], "rules": f"rule {M['rules']}"},
        },
        {
            "custom_id": f"t5-{M['cid']}{suffix}",
            "kind": "transaction.flag",
            "input": {
                "date": "2026-01-03",
                "description": M["txdesc"],
                "amount": -9.99,
                "history": [{"date": "2025-12-03", "description": M["history"], "amount": -9.99}],
            },
        },
        {
            "custom_id": f"t6-{M['cid']}{suffix}",
            "kind": "chat",
            "input": {"messages": [{"role": "user", "content": f"say {M['chat']}"}]},
        },
        {
            "custom_id": f"t7-{M['cid']}{suffix}",
            "kind": "extract",
            "input": {
                "text": f"text {M['extract']}",
                "schema": {"type": "object", "properties": {"x": {"type": "string"}}},
            },
        },
    ]


def batch_jsonl() -> bytes:
    line = {
        "custom_id": f"r1-{M['chatcid']}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "x", "messages": [{"role": "user", "content": f"hi {M['chat']}"}]},
    }
    return json.dumps(line).encode()


def triage_answer(marker: str) -> Reply:
    return Reply(json.dumps({"category": "work", "priority": 3, "needs_reply": True, "reason": f"see {marker}"}))


# -- scanning ------------------------------------------------------------------------------------------

_B64 = re.compile(rb"[A-Za-z0-9+/_-]{8,}={0,2}")


class Scan:
    """Every key name and value of a database, with zlib and base64 layers unwrapped."""

    def __init__(self, conn: redis.Redis):
        self.blobs: list[tuple[str, bytes]] = []
        self.unwrapped: Counter[str] = Counter()
        self.types: Counter[str] = Counter()
        for k in conn.scan_iter(count=1000):
            name = k.decode(errors="replace")
            self.types[conn.type(k).decode()] += 1
            for v in [k, *self._values(conn, k)]:
                for b in self._expand(v, 0):
                    self.blobs.append((name, b))

    @staticmethod
    def _values(conn: redis.Redis, k: bytes) -> list[bytes]:
        t = conn.type(k).decode()
        if t == "string":
            return [conn.get(k) or b""]
        if t == "hash":
            return [x for kv in conn.hgetall(k).items() for x in kv]
        if t == "list":
            return list(conn.lrange(k, 0, -1))
        if t == "set":
            return list(conn.smembers(k))
        if t == "zset":
            return [m for m, _ in conn.zrange(k, 0, -1, withscores=True)]
        if t == "stream":
            return [x for _id, fields in conn.xrange(k) for kv in fields.items() for x in kv]
        raise AssertionError(f"unexpected Redis type {t} at {k!r}")

    def _expand(self, b: bytes, depth: int) -> Iterator[bytes]:
        yield b
        if depth >= 4 or len(b) < 8:
            return
        try:
            inner = zlib.decompress(b)
        except zlib.error:
            pass
        else:
            self.unwrapped["zlib"] += 1
            yield from self._expand(inner, depth + 1)
        s = b.strip()
        if _B64.fullmatch(s):
            decoded = set()
            for decode in (base64.b64decode, base64.urlsafe_b64decode):
                try:
                    decoded.add(decode(s + b"=" * (-len(s) % 4)))
                except (binascii.Error, ValueError):
                    continue
            for inner in decoded:
                self.unwrapped["base64"] += 1
                yield from self._expand(inner, depth + 1)

    def hits(self, needles: list[str]) -> list[tuple[str, str]]:
        low = [n.lower().encode() for n in needles]
        return [(name, n.decode()) for name, b in self.blobs for n in low if n in b.lower()]


def assert_no_markers(text: str, where: str, extra: list[str] = ()) -> None:  # type: ignore[assignment]
    found = [n for n in [*M.values(), *extra] if n.lower() in text.lower()]
    assert not found, f"{where} holds {found}"


def worker_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "producer.cli", *args]


# -- tests -----------------------------------------------------------------------------------------------


def test_no_plaintext_in_redis_or_logs(client, conn, settings, fake, drain, worker_env, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    tasks = private_tasks()
    sub = client.submit(tasks)
    sub_jsonl = client.submit_bytes(batch_jsonl(), "b.jsonl")
    # With one request at a time, answers go to tasks in submission order: t1 gets an answer holding a
    # marker (so the result ciphertext must hide it), t2 gets two unreadable ones and fails with them.
    fake.script(triage_answer(M["answer"]), Reply(f"no json {M['bad']}"), Reply(f"still no {M['bad']}"))
    report = drain(concurrency=1)
    assert (report.done, report.failed) == (len(tasks), 1)
    outs = {o.custom_id: o for o in client.results(sub.batch_id)}
    assert outs[f"t1-{M['cid']}"].body["choices"][0]["message"]["parsed"]["reason"] == f"see {M['answer']}"
    bad = outs[f"t2-{M['cid']}"]
    assert bad.error["code"] == "invalid_output" and M["bad"] in json.dumps(bad.body)
    assert M["bad"] not in bad.error["message"]
    assert [o.custom_id for o in client.results(sub_jsonl.batch_id)] == [f"r1-{M['chatcid']}"]

    # The same through the CLI, at -vv, against a server that wants an API key.
    api_key = f"sk-test-{uuid.uuid4().hex}"
    task_file = tmp_path / "tasks.json"
    task_file.write_text(json.dumps(private_tasks(f"-{M['cli']}")))
    with FakeOpenAI(api_key=api_key) as srv:
        srv.script(triage_answer(M["answer"]))
        env = {**worker_env, "OPENAI_BASE_URL": srv.url, "OPENAI_API_KEY": api_key}
        submitted = subprocess.run(
            worker_cmd("-vv", "submit", str(task_file)), env=env, cwd=REPO, capture_output=True, timeout=60
        )
        assert submitted.returncode == 0, submitted.stderr.decode()
        worked = subprocess.run(
            worker_cmd("-vv", "worker", "--burst", "--json"), env=env, cwd=REPO, capture_output=True, timeout=60
        )
        assert worked.returncode == 0, worked.stderr.decode()[-3000:]
        assert srv.stats.requests >= len(tasks)
    assert json.loads(worked.stdout)["done"] == len(tasks)
    for name, proc in (("submit", submitted), ("worker", worked)):
        err = proc.stderr.decode()
        assert "DEBUG" in err or name == "submit"  # the worker did log at debug level
        assert_no_markers(err, f"`jobctl -vv {name}` stderr", [settings.key_text, api_key])
        assert_no_markers(proc.stdout.decode(), f"`jobctl {name}` stdout", [settings.key_text, api_key])

    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    assert_no_markers(caplog.text, "the in-process logs", [settings.key_text])

    scan = Scan(conn)
    assert scan.types.keys() >= {"hash", "list", "zset", "stream"}, scan.types
    assert scan.unwrapped["zlib"] >= 2 * len(tasks) and scan.unwrapped["base64"] >= 2 * len(tasks), scan.unwrapped
    assert not scan.hits([*M.values(), settings.key_text, api_key])

    # The scanner finds a marker behind both layers, so its silence above means something.
    conn.set("probe", base64.b64encode(zlib.compress(f"x {M['body']} y".encode())))
    assert Scan(conn).hits([M["body"]]) == [("probe", M["body"].lower())]
    conn.delete("probe")


def test_wrong_key_is_named_and_tampering_detected(client, conn, settings, drain):
    sub = client.submit(private_tasks())
    drain()
    other = Settings.from_env(
        env={}, redis_url=settings.redis_url, home=settings.home, key=generate_key(), queue=settings.queue
    )
    mine, theirs = settings.cipher().key_id, other.cipher().key_id
    with pytest.raises(DecryptError) as err:
        list(Client(other, connection=conn).results(sub.batch_id))
    assert mine in str(err.value) and theirs in str(err.value)
    assert settings.key_text not in str(err.value) and other.key_text not in str(err.value)

    # A worker with the wrong key refuses the queue, naming both keys.
    proc = subprocess.run(
        worker_cmd("worker", "--burst", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"),
        env={**_env(settings), "JOBCTL_KEY": other.key_text or ""},
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 1 and mine in stderr and theirs in stderr and "Traceback" not in stderr, stderr

    # Flip one byte of one result's ciphertext: reading it says it was tampered with.
    jid = next(m.job_id for m in Batch(sub.batch_id, conn, settings.cipher()).members())
    [(_eid, fields)] = conn.xrange(keys.results(jid))
    token = json.loads(base64.b64decode(fields[b"return_value"]))
    prefix, kid, body = token.split(".", 2)
    raw = bytearray(base64.b64decode(body))
    raw[len(raw) // 2] ^= 0x01
    fields[b"return_value"] = base64.b64encode(json.dumps(f"{prefix}.{kid}.{base64.b64encode(raw).decode()}").encode())
    conn.delete(keys.results(jid))
    conn.xadd(keys.results(jid), fields)
    # The tampered result is named; the others still read.
    outs = list(client.results(sub.batch_id))
    tampered = [o for o in outs if o.error and o.error["code"] == "tampered"]
    assert [o.job_id for o in tampered] == [jid]
    assert len(outs) == len(private_tasks()) and all(o.ok for o in outs if o.job_id != jid)


def _env(settings: Settings) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "REDIS_URL": settings.redis_url or "",
        "JOBCTL_KEY": settings.key_text or "",
        "JOBCTL_QUEUE": settings.queue,
        "JOBCTL_HOME": str(settings.home),
    }


def test_queue_path_holds_json_not_pickle(client, conn, settings, drain, fake):
    sub = client.submit(private_tasks())
    fake.script(Reply("not json"), Reply("not json"))
    drain(concurrency=1)
    job_keys = list(conn.scan_iter(match="rq:job:*"))
    assert len(job_keys) == len(private_tasks())
    for k in job_keys:
        data = zlib.decompress(conn.hget(k, "data"))
        assert not data.startswith(b"\x80"), f"{k!r} holds a pickle"
        func, _instance, args, kwargs = json.loads(data)
        assert func == codec.TASK_FUNC and kwargs == {} and args[0].startswith("jc1.")
    kinds = Counter()
    for jid in [m.job_id for m in Batch(sub.batch_id, conn, settings.cipher()).members()]:
        [(_eid, fields)] = conn.xrange(keys.results(jid))
        if b"return_value" in fields:
            assert json.loads(base64.b64decode(fields[b"return_value"])).startswith("jc1.")
            kinds["ok"] += 1
        else:
            assert zlib.decompress(base64.b64decode(fields[b"exc_string"])).startswith(b"jobctl invalid_output\njc1.")
            kinds["failed"] += 1
    assert kinds == {"ok": len(private_tasks()) - 1, "failed": 1}


# rq calls that fall back to pickle unless given `serializer=`.
_RQ_SERIALIZED = {
    "Queue",
    "Job",
    "Result",
    "Worker",
    "SimpleWorker",
    "create",
    "fetch",
    "fetch_many",
    "restore",
    "fetch_latest",
    "all",
}
_RQ_OWNERS = {"Queue", "Job", "Result", "Worker", "SimpleWorker"}


def test_no_pickle_in_package_sources():
    files = [f for d in ("jobs", "producer", "worker") for f in (REPO / d).rglob("*.py")] + [REPO / "modal_worker.py"]
    problems = []
    for f in files:
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            where = f"{f.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "cPickle", "cloudpickle", "dill", "shelve") for n in names):
                    problems.append(f"{where}: imports a pickle module")
            elif isinstance(node, ast.Name | ast.Attribute):
                name = node.id if isinstance(node, ast.Name) else node.attr
                if "pickle" in name.lower():
                    problems.append(f"{where}: uses {name}")
            elif isinstance(node, ast.Call):
                fn = node.func
                called = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
                owner = fn.value.id if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) else called
                if (
                    owner in _RQ_OWNERS
                    and called in _RQ_SERIALIZED
                    and not any(kw.arg == "serializer" for kw in node.keywords)
                ):
                    problems.append(f"{where}: {owner}.{called}() without serializer= falls back to pickle")
    assert not problems, "\n".join(problems)
    assert files and all(f.exists() for f in files)


def test_secrets_stay_out_of_reprs_and_errors(tmp_path):
    key, api_key = generate_key(), f"sk-{uuid.uuid4().hex}"
    s = Settings.from_env(
        env={"JOBCTL_KEY": key, "OPENAI_API_KEY": api_key}, home=tmp_path, redis_url="redis://127.0.0.1:6379/13"
    )
    for text in (repr(s), str(s), repr(s.cipher()), repr(Client(s)), str(s.with_(queue="x"))):
        assert key not in text and api_key not in text, text
    assert s.cipher().key_id in repr(s.cipher())

    # Keys that do not load say why without quoting themselves.
    for bad in (key[:-8], key + "!!!", "x" * 44):
        with pytest.raises(CryptoError) as err:
            Cipher(bad, "JOBCTL_KEY")
        assert bad not in str(err.value)


def test_redis_password_stays_out_of_descriptions_errors_and_logs(settings, fake, tmp_path, worker_env):
    password = f"s3cretpw{uuid.uuid4().hex[:8]}"
    rp = RedisProcess(tmp_path / "redis-auth").start()
    try:
        redis.Redis(port=rp.port).config_set("requirepass", password)
        url = f"redis://:{password}@127.0.0.1:{rp.port}/0"
        s = settings.with_(redis_url=url)
        client = Client(s)
        assert password not in describe(client.connection)
        assert describe(client.connection) == f"redis://127.0.0.1:{rp.port}/0"
        client.submit(private_tasks())

        # A wrong password and an unreachable server: the errors name neither password.
        for bad_url in (f"redis://:wrong{password}@127.0.0.1:{rp.port}/0", f"redis://:{password}@127.0.0.1:9/0"):
            with pytest.raises(redis.RedisError) as err:
                Client(settings.with_(redis_url=bad_url)).queue_depth()
            assert password not in str(err.value), err.value

        env = {**worker_env, "REDIS_URL": url}
        proc = subprocess.run(
            worker_cmd("-vv", "worker", "--burst", "--json"), env=env, cwd=REPO, capture_output=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        assert json.loads(proc.stdout)["done"] == len(private_tasks())
        assert_no_markers(
            proc.stderr.decode() + proc.stdout.decode(),
            "`jobctl -vv worker` output",
            [password, settings.key_text or ""],
        )
        bad = subprocess.run(
            worker_cmd("-vv", "worker", "--burst"),
            cwd=REPO,
            capture_output=True,
            timeout=60,
            env={**env, "REDIS_URL": f"redis://:wrong{password}@127.0.0.1:{rp.port}/0"},
        )
        assert bad.returncode != 0 and password not in (bad.stderr + bad.stdout).decode()
        client.connection.close()
    finally:
        rp.stop()


def test_settings_repr_hides_redis_password(tmp_path):
    s = Settings.from_env(env={}, home=tmp_path, redis_url="redis://:s3cretpw@127.0.0.1:6379/13")
    assert "s3cretpw" not in repr(s)


def test_outcome_reprs_hold_no_answer_or_input():
    """RQ logs a job's return value as `result: %r` (`rq worker -v`); reprs end up in tracebacks too."""
    from jobs.outcomes import Failure, Outcome, Success

    body = {"choices": [{"message": {"content": "PRIVATE-ANSWER-4471"}}]}
    shown = [
        repr(Success("c1", body)),
        repr(Failure("c1", "invalid_output", "the answer is not valid JSON", body=body)),
        repr(Outcome("j1", "c1", True, 200, body, None, input={"body": "PRIVATE-INPUT-9"})),
    ]
    assert all("PRIVATE" not in r and "c1" in r for r in shown), shown
