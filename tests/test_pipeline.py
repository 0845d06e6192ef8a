"""The core pipeline, end to end on a real Redis against the fake server."""

from __future__ import annotations

import json

import pytest

from jobs.store import Batch, ConflictError
from tests.conftest import triage_task
from tests.fake_openai import Fault, Reply


def test_submit_drain_results(client, drain, fake):
    sub = client.submit([triage_task(i) for i in range(10)])
    assert (sub.total, sub.duplicates) == (10, 0)
    assert client.status(sub.batch_id).status == "in_progress"
    report = drain()
    assert (report.done, report.failed) == (10, 0)
    st = client.status(sub.batch_id)
    assert st.status == "completed" and st.counts["completed"] == 10
    lines = [o.line() for o in client.results(sub.batch_id)]
    assert [ln["custom_id"] for ln in lines] == [f"mail-{i}" for i in range(10)]
    parsed = lines[0]["response"]["body"]["choices"][0]["message"]["parsed"]
    assert set(parsed) == {"category", "priority", "needs_reply", "reason"}
    assert lines[0]["error"] is None and lines[0]["id"].startswith("batch_req_")


def test_resubmit_same_content_is_duplicate(client, drain):
    first = client.submit([triage_task(1), triage_task(2)])
    again = client.submit([triage_task(1), triage_task(2), triage_task(3)])
    assert (again.total, again.duplicates) == (3, 2)
    drain()
    after = client.submit([triage_task(1)])
    assert (after.total, after.duplicates) == (1, 1)
    assert client.status(after.batch_id).status == "completed"
    assert [o.custom_id for o in client.results(after.batch_id)] == ["mail-1"]
    assert client.status(first.batch_id).counts["completed"] == 2


def test_changed_content_conflicts_and_enqueues_nothing(client, conn, settings):
    client.submit([triage_task(1)])
    depth = client.queue_depth()
    with pytest.raises(ConflictError, match="mail-1"):
        client.submit([triage_task(9), triage_task(1, body="something else")])
    assert client.queue_depth() == depth


def test_length_and_schema_failures_are_retried_then_failed(client, drain, fake):
    fake.script(Fault.LENGTH, Fault.LENGTH, Reply('{"category": "nope"}'), Reply("not json"))
    sub = client.submit([triage_task(1)])
    sub2 = client.submit([triage_task(2)])
    report = drain(concurrency=1)
    assert report.failed == 2 and report.done == 0
    errs = {o.custom_id: o.error["code"] for o in client.results(sub.batch_id)}
    errs.update({o.custom_id: o.error["code"] for o in client.results(sub2.batch_id)})
    assert errs == {"mail-1": "max_tokens_reached", "mail-2": "invalid_output"}


def test_transient_errors_are_retried(client, drain, fake):
    fake.script(Fault.HTTP_500, Fault.CLOSE, Fault.GARBAGE_BODY)
    sub = client.submit([triage_task(1)])
    report = drain(concurrency=1)
    assert report.done == 1 and report.retries == 3
    assert client.status(sub.batch_id).status == "completed"


def test_keeps_many_requests_in_flight(client, drain, fake):
    fake.latency = 0.2
    client.submit([triage_task(i) for i in range(120)])
    report = drain(concurrency=40)
    assert report.done == 120
    assert fake.stats.max_in_flight >= 30


def test_retry_and_cancel(client, drain, fake):
    fake.script(*([Fault.HTTP_500] * 8))
    sub = client.submit([triage_task(1), triage_task(2)])
    drain(concurrency=2)
    assert client.status(sub.batch_id).counts["failed"] == 2
    assert client.retry(sub.batch_id) == 2
    drain()
    assert client.status(sub.batch_id).counts["completed"] == 2
    sub2 = client.submit([triage_task(3), triage_task(4)])
    assert client.cancel(sub2.batch_id) == 2
    assert client.status(sub2.batch_id).status == "cancelled"
    assert drain().done == 0


def test_rq_registries_show_state(client, drain, conn, settings):
    from rq import Queue
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    sub = client.submit([triage_task(1)])
    q = Queue(settings.queue, connection=conn)
    assert q.count == 1
    drain()
    assert q.count == 0
    assert len(FinishedJobRegistry(queue=q)) == 1 and len(FailedJobRegistry(queue=q)) == 0
    jid = next(m.job_id for m in Batch(sub.batch_id, conn, settings.cipher()).members())
    assert conn.hget(f"rq:job:{jid}", "status") == b"finished"


def test_openai_batch_jsonl_is_accepted(client, drain):
    lines = [
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "x", "messages": [{"role": "user", "content": "hello"}]},
            }
        )
        for i in range(3)
    ]
    sub = client.submit_bytes("\n".join(lines).encode(), "b.jsonl")
    drain()
    out = [o.line() for o in client.results(sub.batch_id)]
    assert [o["response"]["body"]["choices"][0]["message"]["content"] for o in out] == ["ok"] * 3


def test_llama_cpp_style_drops_only_long_string_limits():
    from jobs.kinds import KINDS

    kind = KINDS["email.draft_reply"]
    data = kind.input_model.model_validate({"from": "a@b.c", "body": "hi"})
    opts = kind.options_model()
    relaxed = kind.request(data, opts, "json_object")["response_format"]["schema"]
    strict = kind.request(data, opts, "json_schema")["response_format"]["json_schema"]["schema"]
    assert "maxLength" not in relaxed["properties"]["body"] and relaxed["properties"]["subject"]["maxLength"] == 300
    assert strict["properties"]["body"]["maxLength"] == 4000
    with pytest.raises(Exception, match="maxLength"):
        kind.parse_output(json.dumps({"subject": "s", "body": "x" * 4001}), data, opts)


@pytest.mark.parametrize(
    ("owned_by", "style"), [("fake", "json_schema"), ("vllm", "json_schema"), ("me", "json_object")]
)
def test_structured_output_style_is_asked_of_the_server(client, drain, fake, owned_by, style):
    fake.owned_by = owned_by
    client.submit([triage_task(1)])
    report = drain(style="auto")
    assert report.done == 1 and f"structured output: {style} (detected)" in report.notes
    assert fake.stats.prompts_seen[-1]["response_format"]["type"] == style


def test_one_worker_drains_several_queues_fairly(settings, conn, fake, drain):
    """`jobctl worker -q a -q b`: claims are shared among the queues, so neither waits for the other."""
    from rq.utils import utcparse

    from jobs.store import keys
    from producer.client import Client

    a = Client(settings.with_(queue="qa-" + settings.queue), connection=conn)
    b = Client(settings.with_(queue="qb-" + settings.queue), connection=conn)
    sa = a.submit([triage_task(i) for i in range(40)])
    sb = b.submit([triage_task(i) for i in range(40)])
    fake.latency = 0.02
    report = drain(queues=[a.settings.queue, b.settings.queue], concurrency=4)
    assert report.done == 80
    assert a.status(sa.batch_id).counts["completed"] == 40 and b.status(sb.batch_id).counts["completed"] == 40
    ended = []
    for name, client, sub in (("a", a, sa), ("b", b, sb)):
        for m in client.batch(sub.batch_id).members():
            ended.append((utcparse(conn.hget(keys.job(m.job_id), "ended_at").decode()), name))
    first = [name for _, name in sorted(ended)[:20]]
    assert first.count("a") >= 5 and first.count("b") >= 5, first


def test_expired_batches_leave_the_index(client, conn):
    from jobs.store import keys

    old = client.submit([triage_task(1)])
    new = client.submit([triage_task(2)])
    conn.delete(keys.batch(old.batch_id))  # its record expired with its results
    assert [b.id for b in client.batches()] == [new.batch_id]
    assert conn.zrange(keys.BATCHES_INDEX, 0, -1) == [new.batch_id.encode()]
