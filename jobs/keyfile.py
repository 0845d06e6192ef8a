"""Files that hold secrets: the key file, and decrypted results (`jobctl results -o`).

Both are created readable by their owner only, and never through a path someone else prepared:
a new file gets a fresh, unpredictable name in the target folder, created with O_EXCL and
O_NOFOLLOW at mode 0600 (so a leftover `key.tmp`, or a symlink planted under that name, cannot
lend it their mode or their target), and is then renamed over the destination, which replaces a
symlink there instead of writing through it. A key file that group or others can read or write is
refused, as ssh refuses such a private key.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal, overload

from jobs.crypto import CryptoError, MissingKeyError, generate_key
from jobs.errors import JobctlError

# A key is 45 bytes of text; anything much longer is not a key file.
MAX_KEY_FILE_BYTES = 4096
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class KeyFileError(CryptoError):
    """A key file that is not private, or not a regular file."""


class PrivateFileError(JobctlError):
    """A private file could not be written."""


def _create_temp(folder: Path, stem: str) -> tuple[int, Path]:
    """A new file in `folder`, mode 0600, under a name no one could have prepared."""
    while True:
        tmp = folder / f".{stem}.{secrets.token_hex(8)}.tmp"
        try:
            return os.open(tmp, _CREATE, 0o600), tmp
        except FileExistsError:
            continue


def _mkdir_private(folder: Path) -> None:
    # New folders only: an existing one (a home directory) keeps the mode its owner chose.
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)


def _advice(e: OSError) -> str:
    """What to do about a failed write, by its cause."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space, or write elsewhere"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "check the folder's permissions, or write elsewhere"
    return "check the path"


def write_key_file(path: Path, force: bool = False) -> str:
    """Create a new key file readable only by its owner, and return the key. Refuses to replace an
    existing one unless `force`: results encrypted with the old key would become unreadable."""
    path = Path(path).expanduser()
    exists_hint = (
        f"{path} already exists; results encrypted with it would be lost if it were replaced. "
        "Pass --force to replace it anyway"
    )
    if not force and os.path.lexists(path):
        raise CryptoError(exists_hint)
    try:
        _mkdir_private(path.parent)
        key = generate_key()
        fd, tmp = _create_temp(path.parent, path.name)
    except OSError as e:
        raise CryptoError(f"cannot create the key file {path}: {e.strerror}; {_advice(e)}") from e
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            # link() fails if anything (even a dangling symlink) took the name since the check above.
            try:
                os.link(tmp, path, follow_symlinks=False)
            except FileExistsError as e:
                raise CryptoError(exists_hint) from e
            except OSError:  # a file system without hard links
                if os.path.lexists(path):
                    raise CryptoError(exists_hint) from None
                os.replace(tmp, path)
    except OSError as e:
        raise CryptoError(f"cannot write the key file {path}: {e.strerror}; {_advice(e)}") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return key


def load_key(key: str | None, key_file: str | Path | None) -> tuple[str, str]:
    """The key text and where it came from: the key itself (JOBCTL_KEY), then the key file.

    The key file must be a regular file that only its owner can read or write."""
    if key:
        return key, "JOBCTL_KEY"
    if not key_file:
        raise MissingKeyError("no encryption key: run `jobctl keygen`, or set JOBCTL_KEY")
    path = Path(key_file).expanduser()
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as e:
        raise MissingKeyError(
            f"no encryption key: {path} does not exist; run `jobctl keygen` to create it, or set JOBCTL_KEY to your key"
        ) from e
    except OSError as e:
        raise MissingKeyError(f"cannot read the key file {path}: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())  # of what was opened, so a swap after a check cannot fool it
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"the key file {path} is not a regular file; point JOBCTL_KEY_FILE at the key itself")
        bits = stat.S_IMODE(st.st_mode)
        if bits & 0o077:
            raise KeyFileError(
                f"the key file {path} can be read or changed by other users (mode {bits:o}); "
                f"make it private with `chmod 600 {path}`, and make a new key if others may have read it"
            )
        try:
            raw = f.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as e:
            raise MissingKeyError(f"cannot read the key file {path}: {e.strerror}") from e
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"the key file {path} is over {MAX_KEY_FILE_BYTES} bytes, so not a jobctl key")
    return raw.decode("utf-8", "replace").strip(), str(path)


@overload
def write_private(path: str | Path, binary: Literal[False] = ...) -> contextlib.AbstractContextManager[IO[str]]: ...
@overload
def write_private(path: str | Path, binary: Literal[True]) -> contextlib.AbstractContextManager[IO[bytes]]: ...
def write_private(path: str | Path, binary: bool = False) -> contextlib.AbstractContextManager[IO[Any]]:
    """A file to write that becomes `path` when the block ends without an error, mode 0600.

        with write_private(out) as f:
            f.write(line)

    A symlink at `path` is replaced, never written through; on an error the old file is left as
    it was and nothing else remains. PrivateFileError if the folder cannot be written.
    """
    return _write_private(Path(path).expanduser(), binary)


@contextlib.contextmanager
def _write_private(path: Path, binary: bool) -> Iterator[IO[Any]]:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # nothing there yet: _create_temp says why
        # A rename would replace whatever is there: a device (/dev/full) or a FIFO is not a results file.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise PrivateFileError(f"{path} is not a regular file; write the results to a file")
    try:
        fd, tmp = _create_temp(path.parent, path.name)
    except OSError as e:
        raise PrivateFileError(f"cannot write {path}: {e.strerror}; check that its folder exists and is yours") from e
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise PrivateFileError(f"cannot write {path}: {e.strerror}") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
