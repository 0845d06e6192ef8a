"""Finding 7: model answers, custom_ids, error messages and batch names reach the terminal as text.

A prompt-injected email can make a model answer with rich markup (`[/]` crashed `jobctl results`
with a traceback) or terminal escapes (clear the screen, set the window title, plant an OSC-8
link). Every such string is shown as data: markup literally, control characters as visible escapes.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from jobs.outcomes import Outcome
from jobs.store.batches import BatchStatus
from producer.cli import output

HOSTILE = [
    "[/]",
    "[bold red]pwned",
    "x[/bold red]y",
    "\x1b[2J\x1b[H",
    "\x1b]0;owned title\x07",
    "\x1b]8;;https://evil.example/\x1b\\click me\x1b]8;;\x1b\\",
    "\x9b2J",  # CSI as a single C1 byte
    "\x9d0;title\x9c",  # OSC and ST as C1 bytes
    "a\x7fb\x08c\rd",
    "\u202egnp.exe",  # right-to-left override
    "\u2066isolate\u2069",
    "trailing backslash \\",
    ":warning: [link=https://evil.example]x[/link]",
]
JOINED = " ".join(HOSTILE)
# Bytes a hostile string may never put on the terminal.
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Rich's own output on a terminal: colours (SGR), and for progress bars cursor hide/show, erase
# line, cursor up and carriage return. Any other escape came from a string it printed.
RICH_OWN = re.compile(r"\x1b\[(?:[0-9;]*m|\?25[lh]|2K|\d*A)|\r")


class Screen:
    """What the CLI's output module prints, recorded: on a terminal (colour) or not (plain lines)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tty: bool):
        self.out, self.err = io.StringIO(), io.StringIO()
        monkeypatch.setattr(output, "is_tty", lambda stderr=False: tty)

        def console(stderr: bool = False) -> Console:
            f = self.err if stderr else self.out
            return Console(file=f, width=400, color_system="truecolor", force_terminal=True, highlight=False)

        monkeypatch.setattr(output, "console", console)

    def text(self, capsys: pytest.CaptureFixture[str]) -> str:
        captured = capsys.readouterr()  # click.echo, on the plain path
        return self.out.getvalue() + self.err.getvalue() + captured.out + captured.err


def assert_inert(out: str) -> None:
    out = RICH_OWN.sub("", out)
    assert "\x1b" not in out, repr(out)
    assert not RAW_CONTROLS.search(out.replace("\n", "").replace("\t", "")), repr(out)


def outcomes() -> list[Outcome]:
    ok_text = {"choices": [{"message": {"content": JOINED}}]}
    ok_parsed = {"choices": [{"message": {"content": "{}", "parsed": {"note": JOINED}}}]}
    return [
        Outcome("j1", JOINED, True, 200, ok_text, None),
        Outcome("j2", "[/]", True, 200, ok_parsed, None),
        Outcome("j3", "\x1b]0;t\x07", False, 500, None, {"code": "[/]" + JOINED, "message": JOINED}),
        # A message cut to the column's width must not leave half an escape that swallows markup after it.
        Outcome("j4", "cut", False, 500, None, {"code": "worker_error", "message": "\\" * 299 + "[/]"}),
    ]


def hostile_status(**over: Any) -> BatchStatus:
    fields: dict[str, Any] = {
        "id": "b-[/]\x1b[2J",
        "queue": "[bold]q\x1b]0;t\x07",
        "status": "[/]done",
        "created_at": time.time(),
        "total": 1,
        "duplicates": 0,
        "counts": {"completed": 1},
        "name": "[/]\x1b]8;;https://evil.example/\x1b\\name",
        "metadata": {"k": "\x1b[2J[/]"},
        "problems": {"[/]\x1b[2J": "missing"},
    }
    return BatchStatus(**{**fields, **over})


@pytest.fixture(params=[True, False], ids=["terminal", "plain"])
def screen(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Screen]:
    yield Screen(monkeypatch, tty=request.param)


def test_results_show_hostile_answers_as_text(screen: Screen, capsys):
    output.results_rows(outcomes())
    out = screen.text(capsys)
    assert_inert(out)
    assert "[/]" in out and "[bold red]pwned" in out
    assert "\\x1b[2J" in out and "\\x1b]0;owned title\\x07" in out and "\\u202e" in out
    assert "\\x9b2J" in out and "\\x7f" in out


def test_results_pass_no_escape_sequence_through(screen: Screen, capsys):
    # No markup at all here: before the fix, ESC and OSC reached the terminal raw.
    answer = {"choices": [{"message": {"content": "\x1b[2J\x1b]0;owned\x07 \x1b]8;;https://evil.example/\x1b\\x"}}]}
    output.results_rows([Outcome("j1", "id\x1b[31m", True, 200, answer, None)])
    assert_inert(screen.text(capsys))


def test_status_shows_hostile_batch_fields_as_text(screen: Screen, capsys):
    output.status_rows([hostile_status()])
    output.status_detail(hostile_status(), notes=["\x1b]0;note\x07[/]"])
    out = screen.text(capsys)
    assert_inert(out)
    assert "b-[/]\\x1b[2J" in out and "[bold]q" in out and "[/]\\x1b]8;;" in out


def test_progress_shows_hostile_batch_fields_as_text(screen: Screen, capsys):
    with output.Progress(quiet=False, every=0) as p:
        p.update(hostile_status(counts={"running": 1}, status="[/]running\x1b]0;t\x07"))
        p.update(hostile_status())
        p.note("\x1b]0;t\x07 [/]")
    assert_inert(screen.text(capsys))


@pytest.mark.parametrize("s", HOSTILE)
def test_visible_leaves_no_control_characters(s: str):
    from producer.safe_text import visible

    out = visible(s)
    assert not RAW_CONTROLS.search(out) and "\x1b" not in out and "\n" not in out


def test_visible_keeps_ordinary_text():
    from producer.safe_text import visible

    text = "Olá, 東京 — 12 € [note] \\ tab"
    assert visible(text) == text
    assert visible("a\nb\tc") == "a\\nb\\tc"
    assert visible("\x1b") == "\\x1b" and visible("\u202e") == "\\u202e" and visible("\x9b") == "\\x9b"


def test_visible_accepts_anything() -> None:
    from producer.safe_text import visible

    values: list[Any] = [None, 5, b"\x1b[2J", {"k": "\x1b"}]
    for v in values:
        assert "\x1b" not in visible(v)
