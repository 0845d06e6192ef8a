"""Untrusted strings made safe for a terminal: model answers, custom_ids, error messages, batch names.

A prompt-injected email can make a model answer with terminal escapes: ESC [2J clears the screen,
OSC 0 sets the window title, OSC 8 plants a link whose target differs from its text; a right-to-left
override makes `gnp.exe` read as `exe.png`. `visible` turns every such character into a visible
escape (`\\x1b`, `\\u202e`), the way Python's repr would, and leaves all other text alone.

Rich markup is the other half: never pass an untrusted string to `console.print` as a markup
string (`[/]` raises MarkupError; `rich.markup.escape` breaks when the escaped text is cut after
escaping, leaving a lone backslash that escapes the next tag). Wrap it in `safe(...)`, a
`rich.text.Text`, which rich never parses for markup or emoji codes.
"""

from __future__ import annotations

import re

from rich.text import Text

# C0 controls (newline and tab included: one value, one line), DEL, C1 controls (single-byte CSI
# \x9b and OSC \x9d work on some terminals), and the Unicode direction marks, embeddings,
# overrides and isolates, and line/paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(s: object) -> str:
    """`s` as text with every control and direction character shown as an escape, e.g. `\\x1b`."""
    text = s if isinstance(s, str) else str(s)
    return _UNSAFE.sub(_escape, text)


def safe(s: object, style: str = "") -> Text:
    """`visible(s)` as a rich Text: printed as it is, never read as markup."""
    return Text(visible(s), style=style)
