"""Untrusted strings made safe for a terminal: model answers, custom_ids, error messages, batch names.

A prompt-injected email can make a model answer with terminal escapes: ESC [2J clears the screen,
OSC 0 sets the window title, OSC 8 plants a link whose target differs from its text; a right-to-left
override makes `gnp.exe` read as `exe.png`. `visible` turns every such character into a visible
escape (`\\x1b`, `\\u202e`), the way Python's repr would, and leaves all other text alone. Lone
surrogates (JSON may carry `\\ud83d` alone) are escaped too: no UTF-8 stream can print them.

Rich markup is the other half: never pass an untrusted string to `console.print` as a markup
string (`[/]` raises MarkupError; `rich.markup.escape` breaks when the escaped text is cut after
escaping, leaving a lone backslash that escapes the next tag). Wrap it in `safe(...)`, a
`rich.text.Text`, which rich never parses for markup or emoji codes.

Text too long to show is cut by `visible_cut` / `safe_cut`: before escaping (so no escape is ever
split), at a grapheme boundary (no accent torn from its letter, no half of a flag or of an emoji
sequence), and marked with CUT_MARK, which says how much was left out. The text itself cannot forge
the marker: a look-alike in it is shown with its ellipsis escaped.
"""

from __future__ import annotations

import re
import unicodedata

from rich.text import Text

# C0 controls (newline and tab included: one value, one line), DEL, C1 controls (single-byte CSI
# \x9b and OSC \x9d work on some terminals), the Unicode direction marks, embeddings, overrides and
# isolates, line/paragraph separators, and surrogates (only ever lone in a str).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# What ends a cut: an ellipsis, then how many characters were left out, e.g. `…[cut 1234 chars]`.
CUT_MARK = "…[cut {n} chars]"
_MARK_START = "…[cut "
_MARK_DEFUSED = "\\u2026[cut "
CUT_STYLE = "dim italic"


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


# -- cutting ----------------------------------------------------------------------------------------

_ZWJ = "\u200d"
_HANGUL_L = range(0x1100, 0x1160)
_HANGUL_V = range(0x1160, 0x11A8)
_HANGUL_T = range(0x11A8, 0x1200)


def _regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _extends(ch: str) -> bool:
    """A character that belongs to the grapheme before it (Unicode's Extend and SpacingMark, roughly):
    combining marks, enclosing keycaps, variation selectors, skin tones, emoji tags, ZWJ."""
    code = ord(ch)
    return (
        ch == _ZWJ
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")
        or 0xFE00 <= code <= 0xFE0F
        or 0xE0100 <= code <= 0xE01EF
        or 0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F
    )


def _hangul_joins(a: str, b: str) -> bool:
    # Conjoining jamo: L+L, L+V, V+V, V+T, T+T (and syllables, which count as L+V or L+V+T).
    x, y = ord(a), ord(b)
    syllable = 0xAC00 <= x <= 0xD7A3
    if x in _HANGUL_L:
        return y in _HANGUL_L or y in _HANGUL_V or 0xAC00 <= y <= 0xD7A3
    if x in _HANGUL_V or (syllable and (x - 0xAC00) % 28 == 0):
        return y in _HANGUL_V or y in _HANGUL_T
    if x in _HANGUL_T or syllable:
        return y in _HANGUL_T
    return False


def _boundary(text: str, i: int) -> bool:
    """Whether a cut between text[i-1] and text[i] leaves both graphemes whole."""
    if i <= 0 or i >= len(text):
        return True
    before, after = text[i - 1], text[i]
    if _extends(after) or before == _ZWJ or (before == "\r" and after == "\n"):
        return False
    if _regional(before) and _regional(after):
        run = 0
        while i - 1 - run >= 0 and _regional(text[i - 1 - run]):
            run += 1
        return run % 2 == 0  # flags pair up from the start of the run
    return not _hangul_joins(before, after)


def cut_at(text: str, limit: int) -> int:
    """The longest length, at most `limit`, that `text` can be cut to without splitting a grapheme."""
    i = max(0, min(limit, len(text)))
    while i > 0 and not _boundary(text, i):
        i -= 1
    return i


def _shown(kept: str) -> str:
    return visible(kept).replace(_MARK_START, _MARK_DEFUSED)


def visible_cut(s: object, limit: int) -> str:
    """`visible(s)`, cut to at most `limit` characters of the original and marked where it was cut."""
    text = s if isinstance(s, str) else str(s)
    i = cut_at(text, limit)
    shown = _shown(text[:i])
    return shown if i == len(text) else shown + CUT_MARK.format(n=len(text) - i)


def safe_cut(s: object, limit: int, style: str = "") -> Text:
    """`visible_cut(s, limit)` as a rich Text, its marker on a line of its own (a table wraps its
    words apart otherwise) and styled apart from the text."""
    text = s if isinstance(s, str) else str(s)
    i = cut_at(text, limit)
    out = Text(_shown(text[:i]), style=style)
    if i < len(text):
        out.append("\n" + CUT_MARK.format(n=len(text) - i), style=CUT_STYLE)
    return out


def is_cut_mark(line: str) -> bool:
    """Whether a line of shown text is a cut's marker (text cannot forge one: see _shown)."""
    return line.startswith(_MARK_START)
