"""A Ctrl-C while `jobctl` is still starting (its imports take a few hundred milliseconds on a busy
machine) is one line and exit 130, like one a moment later: Python's own handler raised
KeyboardInterrupt inside an import and printed a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import clean_env, triage_task

JOBCTL = os.path.join(os.path.dirname(sys.executable), "jobctl")


@pytest.mark.parametrize("delay", [0.1, 0.2, 0.35, 0.6, 1.0])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_ctrl_c_while_jobctl_starts_is_one_line_and_exit_130(delay, as_json, settings, client, tmp_path):
    """`jobctl wait` on a batch no worker drains: the signal lands while it starts or while it waits."""
    batch = client.submit([triage_task(1)]).batch_id
    env = clean_env(
        REDIS_URL=settings.redis_url,
        JOBCTL_KEY=settings.key_text,
        JOBCTL_QUEUE=settings.queue,
        JOBCTL_HOME=str(tmp_path / "home"),
    )
    args = [JOBCTL, "wait", batch, "--timeout", "60", *(["--json"] if as_json else [])]
    p = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=60)
    text = err.decode()
    assert p.returncode == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    # The last line closes the run (a progress line may come before it once waiting has begun).
    line = text.strip().splitlines()[-1]
    if as_json:
        assert json.loads(line)["error"]["exit_code"] == 130
    else:
        assert line.startswith("jobctl: error: interrupted"), text
