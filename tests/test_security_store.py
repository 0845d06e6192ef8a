"""Attacks on what jobctl keeps in Redis, by someone who can read and write Redis but has no key
(docs/SECURITY.md): each test reproduces one of issue 8's findings, then shows it is caught.

Findings: 1 one submit stalling Redis; 2 forged results; 3 replayed payloads; 4 grafted, removed or
swapped batch members; 9 a worker with the wrong key; 13 other users on one Redis; 15 odd model
outputs; 6 content in logs.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Any

import pytest
import redis

from jobs.config import Settings
from jobs.crypto import DecryptError, generate_key
from jobs.store import codec, keys
from jobs.store.batches import BatchKeyError
from producer.client import Client
from tests.conftest import triage_task
from tests.fake_openai import Raw, Reply

MARK = "ZEBRA-PRIVATE-7781"


def secret_task(i: int, body: str = f"my account number is {MARK}") -> dict[str, Any]:
    return triage_task(i, body)


def result_fields(conn: redis.Redis, jid: str) -> tuple[bytes, dict[bytes, bytes]]:
    [(entry_id, fields)] = conn.xrange(keys.results(jid))
    return entry_id, fields


def rewrite_result(conn: redis.Redis, jid: str, fields: dict[bytes, bytes]) -> None:
    conn.delete(keys.results(jid))
    conn.xadd(keys.results(jid), fields)


def jids(client: Client, batch_id: str) -> list[str]:
    return [m.job_id for m in client.batch(batch_id).members()]


# -- 1. one submit must not stall Redis -------------------------------------------------------------


def test_a_big_submit_never_stalls_other_clients(client, conn):
    """One WATCH over all job keys took 3.6 s for 20,000 keys with every other client blocked."""
    tasks = [triage_task(i) for i in range(20_000)]
    worst = [0.0]
    stop = threading.Event()
    pinger = redis.Redis(connection_pool=redis.ConnectionPool.from_url(client.settings.redis_url or ""))

    def ping() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            pinger.ping()
            worst[0] = max(worst[0], time.perf_counter() - t0)
            time.sleep(0.02)

    t = threading.Thread(target=ping, daemon=True)
    t.start()
    try:
        sub = client.submit(tasks)
    finally:
        stop.set()
        t.join(5)
    assert sub.enqueued == 20_000 and client.queue_depth() == 20_000
    # Generous for a loaded 2-core machine: the old submit blocked Redis for seconds.
    assert worst[0] < 1.0, f"Redis answered a ping after {worst[0]:.2f}s during the submit"


def test_a_submit_that_dies_before_publishing_leaves_nothing_visible(client, conn, monkeypatch):
    """All or nothing as users see it: tasks staged by a submit that died are in no queue, and the next
    submit of the same tasks takes them over."""
    import importlib

    store_submit = importlib.import_module("jobs.store.submit")

    def die(*_a: Any, **_k: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store_submit, "_publish", die)
    with pytest.raises(KeyboardInterrupt):
        client.submit([triage_task(i) for i in range(5)])
    monkeypatch.undo()
    assert client.queue_depth() == 0 and client.batches() == []
    sub = client.submit([triage_task(i) for i in range(5)])
    assert (sub.enqueued, sub.duplicates, client.queue_depth()) == (5, 0, 5)


def test_a_submit_that_dies_while_publishing_is_rolled_forward(client, conn, monkeypatch, drain):
    import importlib

    store_submit = importlib.import_module("jobs.store.submit")

    real = store_submit._publish_ids
    calls = {"n": 0}

    def half(conn_: Any, scripts: Any, queue: str, batch_id: str, ids: list[str], lock: Any) -> None:
        calls["n"] += 1
        real(conn_, scripts, queue, batch_id, ids[:2], lock)
        raise KeyboardInterrupt

    monkeypatch.setattr(store_submit, "_publish_ids", half)
    with pytest.raises(KeyboardInterrupt):
        client.submit([triage_task(i) for i in range(5)])
    monkeypatch.undo()
    assert client.queue_depth() == 2  # part of it was published when the submit died
    report = drain()  # a worker's sweep finishes what the dead submit began
    assert report.done == 5
    [st] = client.batches()
    assert st.counts["completed"] == 5 and st.total == 5


# -- 2. results cannot be changed without the key ---------------------------------------------------


def test_a_failure_cannot_be_made_to_look_like_a_success(client, conn, drain, fake):
    fake.script(Reply("not json"), Reply("not json"))
    sub = client.submit([secret_task(1)])
    drain(concurrency=1)
    [jid] = jids(client, sub.batch_id)
    _, fields = result_fields(conn, jid)
    exc = json.loads(json.dumps(base64.b64decode(fields[b"exc_string"]).hex()))  # noqa: F841 (shape check only)
    import zlib

    failure = zlib.decompress(base64.b64decode(fields[b"exc_string"])).decode()
    token = failure.split("\n", 1)[1]
    # Move the sealed failure into a success: same ciphertext, other role.
    forged = {k: v for k, v in fields.items() if k != b"exc_string"}
    forged[b"type"] = b"1"
    forged[b"return_value"] = base64.b64encode(json.dumps(token).encode())
    rewrite_result(conn, jid, forged)
    conn.hset(keys.job(jid), "status", "finished")
    [out] = list(client.results(sub.batch_id))
    assert not out.ok and out.error is not None and out.error["code"] == "tampered"


@pytest.mark.parametrize("forged_exc", ["jobctl server_error\n-", "jobctl timeout\n{token}", "ValueError: boom"])
def test_failure_codes_and_messages_cannot_be_forged(client, conn, drain, fake, forged_exc):
    import zlib

    fake.script(Reply("not json"), Reply("not json"))
    sub = client.submit([secret_task(1)])
    drain(concurrency=1)
    [jid] = jids(client, sub.batch_id)
    _, fields = result_fields(conn, jid)
    real = zlib.decompress(base64.b64decode(fields[b"exc_string"])).decode()
    text = forged_exc.replace("{token}", real.split("\n", 1)[1])
    fields[b"exc_string"] = base64.b64encode(zlib.compress(text.encode()))
    rewrite_result(conn, jid, fields)
    [out] = list(client.results(sub.batch_id))
    assert not out.ok and out.error is not None
    # Changed code: tampered. No sealed record at all: jobctl's fixed wording, never the forged text.
    assert out.error["code"] in ("tampered", "worker_error")
    assert "boom" not in out.error["message"] and "server_error" not in json.dumps(out.error)


def test_a_success_rewritten_as_a_failure_is_named_not_a_crash(client, conn, drain):
    import zlib

    sub = client.submit([secret_task(1)])
    drain()
    [jid] = jids(client, sub.batch_id)
    _, fields = result_fields(conn, jid)
    token = json.loads(base64.b64decode(fields[b"return_value"]))
    forged = {k: v for k, v in fields.items() if k != b"return_value"}
    forged[b"type"] = b"2"
    forged[b"exc_string"] = base64.b64encode(zlib.compress(f"jobctl invalid_output\n{token}".encode()))
    rewrite_result(conn, jid, forged)
    [out] = list(client.results(sub.batch_id))  # was a KeyError traceback
    assert out.error is not None and out.error["code"] == "tampered"


# -- 3. replay -----------------------------------------------------------------------------------------


def test_an_old_payload_replayed_under_a_resubmitted_custom_id_is_named(client, conn, drain):
    first = client.submit([secret_task(1, "version A of the task")])
    drain()
    [jid] = jids(client, first.batch_id)
    saved = conn.hmget(keys.job(jid), "data", "jobctl_batch", "jobctl_fp")
    # The results expire; the user submits new content under the same custom_id.
    conn.delete(keys.job(jid), keys.results(jid))
    second = client.submit([secret_task(1, "version B of the task")])
    assert second.enqueued == 1
    # The attacker puts the old payload (and the fields it was sealed with) back before a worker runs it.
    conn.hset(keys.job(jid), mapping={"data": saved[0], "jobctl_batch": saved[1], "jobctl_fp": saved[2]})
    drain()
    [out] = list(client.results(second.batch_id))
    assert not out.ok and out.error is not None and out.error["code"] == "replayed"


def test_a_payload_moved_to_another_job_does_not_open(client, conn, drain):
    sub = client.submit([secret_task(1), secret_task(2)])
    a, b = jids(client, sub.batch_id)
    conn.hset(keys.job(b), "data", conn.hget(keys.job(a), "data"))
    drain()
    outs = {o.job_id: o for o in client.results(sub.batch_id)}
    assert outs[a].ok
    assert outs[b].error is not None and outs[b].error["code"] == "unreadable"


# -- 4. batch membership ---------------------------------------------------------------------------------


def test_a_removed_task_is_named_and_the_rest_still_print(client, conn, drain):
    sub = client.submit([secret_task(i) for i in range(5)])
    drain()
    gone = jids(client, sub.batch_id)[2]
    conn.delete(keys.job(gone), keys.results(gone))
    st = client.status(sub.batch_id)
    assert st.counts["completed"] == 4 and st.counts["missing"] == 1 and st.status == "completed"
    assert st.problems == {"mail-2": "missing"}
    outs = list(client.results(sub.batch_id))
    assert len(outs) == 5 and sum(o.ok for o in outs) == 4
    assert [o.custom_id for o in outs if not o.ok] == ["mail-2"]


def test_results_swapped_between_tasks_are_named(client, conn, drain):
    sub = client.submit([secret_task(1), secret_task(2)])
    drain()
    a, b = jids(client, sub.batch_id)
    _, fa = result_fields(conn, a)
    _, fb = result_fields(conn, b)
    rewrite_result(conn, a, fb)
    rewrite_result(conn, b, fa)
    outs = list(client.results(sub.batch_id))
    assert [o.error["code"] if o.error else "ok" for o in outs] == ["tampered", "tampered"]


def test_another_batchs_members_cannot_be_grafted_in(client, conn, drain):
    mine = client.submit([secret_task(1)])
    other = client.submit([secret_task(2)])
    conn.rpush(keys.manifest(mine.batch_id), conn.lindex(keys.manifest(other.batch_id), 0))
    with pytest.raises(Exception, match="member list has 2 of 1 parts"):
        client.status(mine.batch_id)
    conn.lpop(keys.manifest(mine.batch_id))  # replace the real part with the other batch's
    with pytest.raises(Exception, match="failed authentication"):
        list(client.results(mine.batch_id))


# -- 9. a worker with the wrong key never seals anything ------------------------------------------------


def test_a_worker_with_the_wrong_key_burns_nothing_even_without_the_queue_record(client, conn, settings, fake):
    sub = client.submit([secret_task(i) for i in range(3)])
    conn.hdel(keys.QUEUE_KEY_IDS, settings.queue)  # the record that used to be the only check
    other = Client(settings.with_(key=generate_key()), connection=conn)
    from jobs.crypto import CryptoError

    with pytest.raises(CryptoError, match="sealed with key"):
        other.drain(base_url=fake.url, model="fake-model", style="json_schema")
    assert fake.stats.requests == 0
    st = client.status(sub.batch_id)
    assert st.counts["queued"] == 3 and st.counts["failed"] == 0


def test_a_task_planted_with_another_key_fails_alone_and_the_drain_goes_on(client, conn, settings, drain, fake):
    """Someone who can write Redis moves one task sealed with another key into our queue. It used to
    stop every drain of the queue ("sealed with key ..."), for good: the task went back each time.
    The queue's record says our key, so the planted task is the stray one: it fails as unreadable."""
    sub = client.submit([secret_task(i) for i in range(3)])
    stranger = Client(settings.with_(key=generate_key(), queue=settings.queue + "-x"), connection=conn)
    planted = stranger.submit([secret_task(9)])
    [jid] = conn.lrange(keys.queue(settings.queue + "-x"), 0, -1)
    conn.lmove(keys.queue(settings.queue + "-x"), keys.queue(settings.queue), "LEFT", "LEFT")
    report = drain()
    assert report.done == 3 and report.failed == 1
    assert fake.stats.requests == 3
    assert client.status(sub.batch_id).counts["completed"] == 3
    assert conn.llen(keys.queue(settings.queue)) == 0
    # Failed as unreadable, the failure sealed under the queue's key (the worker has no other): its
    # submitter sees no answer, and the worker's key reads why.
    _, fields = result_fields(conn, keys.text(jid))
    ok, text = codec.read_result(fields)
    assert not ok and "unreadable" in text
    [out] = list(stranger.results(planted.batch_id))
    assert not out.ok


# -- 13. other users on one Redis ---------------------------------------------------------------------


def test_another_key_cannot_list_read_cancel_or_retry_a_batch(client, conn, settings, drain, fake):
    fake.script(Reply("not json"), Reply("not json"))
    sub = client.submit([secret_task(1), secret_task(2)])
    drain(concurrency=1)
    intruder = Client(settings.with_(key=generate_key(), queue="theirs"), connection=conn)
    assert intruder.batches() == []
    for action in (intruder.status, intruder.cancel, intruder.retry, lambda b: list(intruder.results(b))):
        with pytest.raises(BatchKeyError):
            action(sub.batch_id)
    st = client.status(sub.batch_id)
    assert st.counts["failed"] == 1 and st.counts["completed"] == 1


def test_equal_content_is_not_linkable_across_batches(client, conn):
    client.submit([secret_task(1, "rent 1200 EUR")])
    client.submit([dict(secret_task(2, "rent 1200 EUR"))])
    fps = {v for k in conn.scan_iter("rq:job:*") if (v := conn.hget(k, "jobctl_fp"))}
    assert len(fps) == 2


# -- 15. odd model outputs are invalid answers, not crashes ------------------------------------------


def completion(content: Any, usage: Any = None) -> bytes:
    body = {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": usage if usage is not None else {"prompt_tokens": 1, "completion_tokens": 1},
    }
    return json.dumps(body).encode()


ODD = {
    "a content list": completion([{"type": "text", "text": "{}"}]),
    "a 5,000-digit integer": completion('{"priority": ' + "9" * 5000 + "}"),
    "100k nested brackets": completion("[" * 100_000 + "]" * 100_000),
    "brackets in the body": b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("name", list(ODD))
def test_odd_outputs_are_invalid_output_and_retried(client, drain, fake, caplog, name):
    fake.script(Raw(ODD[name]), Raw(ODD[name]), Raw(ODD[name]), Raw(ODD[name]))
    sub = client.submit([secret_task(1)])
    with caplog.at_level(logging.DEBUG):
        report = drain(concurrency=1)
    [out] = list(client.results(sub.batch_id))
    assert not out.ok and out.error is not None
    assert out.error["code"] in ("invalid_output", "server_error"), out.error
    assert report.retries >= 1
    assert "Traceback" not in caplog.text and MARK not in caplog.text


def test_a_free_text_answer_of_any_size_is_refused_not_stored(client, drain, fake, conn):
    """A chat task without a schema keeps the model's text as it is: a server answering 5 MB (a loop, or
    a hostile server) filled the result store with it. Past MAX_ANSWER_CHARS it is an invalid answer."""
    from jobs.kinds.base import MAX_ANSWER_CHARS

    huge = completion("word " * (MAX_ANSWER_CHARS // 5 + 10))
    fake.script(*[Raw(huge)] * 4)
    task = {"custom_id": "c1", "kind": "chat", "input": {"messages": [{"role": "user", "content": MARK}]}}
    sub = client.submit([task])
    drain(concurrency=1)
    [out] = list(client.results(sub.batch_id))
    assert not out.ok and out.error is not None and out.error["code"] == "invalid_output", out.error
    assert "characters long" in out.error["message"]


def test_a_bad_usage_block_is_ignored_not_logged(client, drain, fake, caplog):
    fake.script(Raw(completion('{"category": "work"}', usage={"prompt_tokens": f"{MARK} lots"})))
    sub = client.submit([secret_task(1)])
    with caplog.at_level(logging.DEBUG):
        drain(concurrency=1)
    assert MARK not in caplog.text
    [out] = list(client.results(sub.batch_id))
    assert out.error is None or out.error["code"] == "invalid_output"


# -- keys in plain sight -----------------------------------------------------------------------------------


def test_reading_with_the_wrong_key_names_both_key_ids(client, conn, settings):
    sub = client.submit([secret_task(1)])
    other = Settings.from_env(env={}, redis_url=settings.redis_url, home=settings.home, key=generate_key())
    with pytest.raises(DecryptError) as e:
        Client(other, connection=conn).status(sub.batch_id)
    assert settings.cipher().key_id in str(e.value) and other.cipher().key_id in str(e.value)
    assert codec.TASK_FUNC  # the layout module is importable without a key
