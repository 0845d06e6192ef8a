"""One source of configuration: every environment variable is read in jobs/config.py, the README's
tables match it (names and defaults), and the CLI's defaults come from it."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from jobs.config import ConfigError, ModalSettings, Settings, VLLMSettings, all_env_vars
from worker.vllm_lifecycle import VLLMConfig

REPO = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]+)` \| (.*) \| (.*) \|$")


def readme_rows() -> dict[str, str]:
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        m = ROW.match(line)
        if m and m.group(1).startswith(("JOBCTL_", "OPENAI_", "REDIS_")):
            rows[m.group(1)] = m.group(3).strip()
    return rows


def shown_default(cell: str) -> str | None:
    """The default a README cell states as a literal (`64`), or None for prose ("none: the server's first")."""
    m = re.match(r"^`([^`]*)`", cell)
    return m.group(1) if m else None


def test_the_readme_lists_every_variable_and_no_other():
    assert set(readme_rows()) == set(all_env_vars())


def test_the_readme_defaults_are_the_real_ones():
    rows = readme_rows()
    vllm = VLLMConfig(command=["x"])
    checked = 0
    for model in (Settings, ModalSettings):
        for name, var in model.env_vars().items():
            default = model.model_fields[name].get_default(call_default_factory=True)
            literal = shown_default(rows[var])
            if default is None:
                assert rows[var].startswith(("none", "Modal's")), (var, rows[var])
            elif literal is not None:
                assert literal == str(default), (var, literal, default)
                checked += 1
    for name, var in VLLMSettings.env_vars().items():
        literal = shown_default(rows[var])
        default = getattr(vllm, name)
        if literal is None:
            assert rows[var].startswith("none"), (var, rows[var])
        elif isinstance(default, dict):
            import json

            assert json.loads(literal) == default, var
        else:
            assert literal == str(default), (var, literal, default)
        checked += 1
    assert checked >= 40


def test_no_module_reads_the_environment_but_the_config():
    """os.environ/getenv only in jobs/config.py (and where a value is passed on, not read for a setting)."""
    allowed = {
        "jobs/config.py",  # the one place settings are read
        "worker/vllm_lifecycle.py",  # passes the environment on to the server process
        "producer/local_server.py",
        "modal_worker.py",  # builds the deploy's secret from the knobs config names
    }
    out = subprocess.run(
        ["git", "grep", "-l", "-E", r"os\.environ|os\.getenv|getenv\(", "--", "jobs", "producer", "worker", "*.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.split()
    readers = {p for p in out if not p.startswith(("tests/", "bench/"))}
    assert readers <= allowed, readers - allowed


def test_the_cli_declares_no_envvar_of_its_own():
    src = "\n".join(p.read_text() for p in (REPO / "producer" / "cli").glob("*.py"))
    assert "envvar=" not in src


def test_flags_override_env_which_overrides_defaults():
    env = {"JOBCTL_QUEUE": "from-env", "JOBCTL_CONCURRENCY": "7"}
    s = Settings.from_env(env=env)
    assert (s.queue, s.concurrency, s.max_attempts) == ("from-env", 7, 4)
    s = Settings.from_env(env=env, queue="from-flag")
    assert s.queue == "from-flag"
    assert ModalSettings.from_env(env={"JOBCTL_MODAL_MIN_TASKS": "5"}).min_tasks == 5
    assert VLLMConfig.from_env(env={"JOBCTL_VLLM_MAX_NUM_SEQS": "64"}).max_num_seqs == 64


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"JOBCTL_CONCURRENCY": "lots"}, "JOBCTL_CONCURRENCY='lots' is not valid"),
        ({"JOBCTL_STRUCTURED_OUTPUT": "xml"}, "JOBCTL_STRUCTURED_OUTPUT='xml' is not valid"),
        ({"JOBCTL_LEASE_SECONDS": "0"}, "JOBCTL_LEASE_SECONDS='0' is not valid"),
    ],
)
def test_a_bad_value_names_its_variable(env, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        Settings.from_env(env=env)


def test_secrets_stay_out_of_the_repr():
    s = Settings.from_env(env={"JOBCTL_KEY": "k" * 43 + "=", "REDIS_URL": "redis://:hunter2@h:6379/0"})
    assert "hunter2" not in repr(s) and "kkkk" not in repr(s) and "hunter2" not in str(s)


def test_vllm_config_fields_are_all_settings():
    """Every VLLMConfig knob a user may set is a VLLMSettings field (host and the key are not settable)."""
    names = {f.name for f in dataclasses.fields(VLLMConfig)} - {"host", "api_key"}
    assert names == set(VLLMSettings.model_fields)
