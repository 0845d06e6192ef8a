"""Opening what the user named, safely: regular files only, sizes checked before reading,
and never more than the limit read from anything.

A FIFO would block an open() forever and /dev/zero or /dev/urandom would fill memory, so the file
type is checked first (on the open descriptor too, in case the path changed in between), and
every read is bounded by max_file_bytes + 1 whatever the file claims its size is.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from jobs.parse import InputError, Problem

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def fail(source: str, message: str, where: str | None = None) -> InputError:
    """A located error with one problem; `where` defaults to the source itself."""
    return InputError(source, [Problem(where or source, message)])


def nul_at(raw: bytes, source: str, limit: int = 65536) -> str | None:
    """ "source:line:column" of the first NUL byte in the first `limit` bytes (a binary file), or None."""
    nul = raw.find(b"\x00", 0, limit)
    if nul < 0:
        return None
    line = raw.count(b"\n", 0, nul) + 1
    column = nul - raw.rfind(b"\n", 0, nul)
    return f"{source}:{line}:{column}"


def describe(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def stat_regular(path: Path, source: str) -> os.stat_result:
    """The stat of a regular file, or a located error for anything else (without opening it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise fail(source, "no such file or folder; check the path") from e
    except OSError as e:
        raise fail(source, f"cannot be read ({e.strerror}); check its permissions") from e
    if not stat.S_ISREG(st.st_mode):
        raise fail(source, f"is {describe(st.st_mode)}, not a regular file; give a file or a mail folder")
    return st


def too_big(source: str, size: int, limit: int, what: str = "the file") -> InputError:
    return fail(
        source,
        f"{what} is {size / 1e6:.1f} MB, over the {limit / (1024 * 1024):.0f} MiB limit; "
        "split it into smaller parts (or raise JOBCTL_MAX_FILE_BYTES)",
    )


class Bounded(io.RawIOBase):
    """A read-only file that fails once more than `limit` bytes have been read from it."""

    def __init__(self, fd: int, limit: int, source: str):
        self._f = os.fdopen(fd, "rb", buffering=0)
        self._left = limit + 1
        self._limit = limit
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(b), self._left)
        if want <= 0:
            raise too_big(self._source, self._limit + 1, self._limit, "the input")
        n = self._f.readinto(memoryview(b)[:want]) or 0
        self._left -= n
        if self._left <= 0:
            raise too_big(self._source, self._limit + 1, self._limit, "the input")
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def open_bounded(path: Path, source: str, limit: int) -> BinaryIO:
    """A buffered reader of a regular file, refused up front if over `limit`, and bounded while read."""
    st = stat_regular(path, source)
    if st.st_size > limit:
        raise too_big(source, st.st_size, limit)
    try:
        # O_NONBLOCK: if the path became a FIFO since the stat, opening it must not hang.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise fail(source, f"cannot be opened ({e.strerror}); check its permissions") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise fail(source, "is not a regular file; give a file or a mail folder")
    return io.BufferedReader(Bounded(fd, limit, source), buffer_size=1 << 16)  # type: ignore[return-value]


def read_bounded(path: Path, source: str, limit: int) -> bytes:
    with open_bounded(path, source, limit) as f:
        return f.read()


def read_head(path: Path, source: str, n: int = 65536) -> bytes:
    """The first `n` bytes of a regular file (for telling its format)."""
    with open_bounded(path, source, 1 << 62) as f:
        return f.read(n)


def folder_files(
    folder: Path, source: str, subdirs: tuple[str, ...] | None, suffix: str | None, limit: int
) -> list[Path]:
    """The message files of a mail folder, sorted, after checking that together they fit `limit`.

    subdirs: only these subfolders (Maildir's cur and new; tmp holds deliveries in progress);
    None: the whole tree. suffix: only names with it (".eml"). Symlinked folders are not followed;
    files that are not regular (a FIFO dropped into the folder) are refused, not skipped.
    """
    roots = [folder / d for d in subdirs] if subdirs is not None else [folder]
    found: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            if subdirs is not None:
                dirnames.clear()  # a Maildir's messages are directly in cur/ and new/
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                if suffix and not name.lower().endswith(suffix):
                    continue
                found.append(Path(dirpath) / name)
    total = 0
    for p in found:
        st = stat_regular(p, where_in(folder, source, p))
        total += st.st_size
        if total > limit:
            raise too_big(source, total, limit, "the folder's messages together")
    return found


def where_in(folder: Path, source: str, path: Path) -> str:
    """A file's place for messages: the folder as the user named it, then the path inside."""
    return f"{source.rstrip('/')}/{path.relative_to(folder).as_posix()}"
