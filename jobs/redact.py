"""Credentials in URLs, kept out of terminals and logs.

REDIS_URL and OPENAI_BASE_URL may carry a password: `redis://:PASSWORD@host/0`, redis-py's
unix-socket form `unix:///run/redis.sock?password=PASSWORD`, a token as the user name, an
`?api-key=` query. Passwords are not always percent-encoded, so `#`, `/`, `?` and `@` appear
raw, and `urlsplit` then cuts the URL in the wrong place. `redact_url` does not parse: it hides
everything between `://` and the last `@`, and the value of every secret-looking query
parameter, so a malformed URL is hidden as well as a good one (at worst too much is hidden).

Two other places leaked: httpx logs every request's URL at INFO (`RedactingFilter`, installed on
the CLI's log handlers by `install_log_redaction`), and redis-py's parse errors quote pieces of
the password (`safe_redis_from_url`).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, overload

from jobs.errors import JobctlError

if TYPE_CHECKING:
    import redis

MASK = "***"
_SECRET_KEYS = r"password|passwd|pass|pwd|secret|token|access_token|auth|api[-_]?key|apikey|key|sig|signature"
# Where a secret query value ends: at the next parameter redis-py (or the URL's owner) is known to
# use. A plain `&` is not enough: a password may hold one, and its tail would show.
_NEXT_PARAM = (
    r"db|username|socket_timeout|socket_connect_timeout|socket_read_size|socket_keepalive|retry_on_timeout|"
    r"retry_on_error|max_connections|health_check_interval|ssl_\w+|timeout|protocol|legacy_responses|"
    r"client_name|decode_responses|encoding|" + _SECRET_KEYS
)
_SECRET_QUERY = re.compile(rf"[?&;](?:{_SECRET_KEYS})=(.*?)(?=&(?:{_NEXT_PARAM})=|$)", re.IGNORECASE | re.DOTALL)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


class RedisURLError(JobctlError):
    """REDIS_URL cannot be read. The message shows the URL with its credentials hidden."""


def _secret_spans(url: str) -> list[tuple[int, int]]:
    spans = [m.span(1) for m in _SECRET_QUERY.finditer(url) if m.end(1) > m.start(1)]
    scheme = url.find("://")
    start = scheme + 3 if scheme >= 0 else 0
    at = url.rfind("@", start)
    if at > start:
        spans.append((start, at))
    return spans


@overload
def redact_url(url: str) -> str: ...
@overload
def redact_url(url: None) -> None: ...
def redact_url(url: str | None) -> str | None:
    """`url` with its user info and secret query values replaced by ***; other parts kept."""
    if not url:
        return url
    spans = _secret_spans(url)
    if not spans:
        return url
    hidden = [False] * len(url)
    for a, b in spans:
        hidden[a:b] = [True] * (b - a)
    out: list[str] = []
    for i, ch in enumerate(url):
        if not hidden[i]:
            out.append(ch)
        elif i == 0 or not hidden[i - 1]:
            out.append(MASK)
    return "".join(out)


def redact_text(text: str) -> str:
    """Every URL in free text (a log line, an error message) passed through redact_url."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)


class RedactingFilter(logging.Filter):
    """Redacts URL credentials in a record's message, traceback and stack. Install it on
    handlers, not loggers: a handler's filters see the records of every logger that reaches it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it as usual
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install_log_redaction(handler: logging.Handler | None = None) -> None:
    """Add a RedactingFilter to `handler`, or to every root handler and logging's last-resort
    handler. Call it after the logging setup (basicConfig); calling it again adds nothing."""
    handlers = [handler] if handler is not None else [*logging.getLogger().handlers, logging.lastResort]
    for h in handlers:
        if h is not None and not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())


_RESERVED_HINT = (
    "if the password holds any of # / ? @ : %, percent-encode them (# as %23, / as %2F, ? as %3F, "
    "@ as %40, : as %3A, % as %25)"
)


def safe_redis_from_url(url: str, **kw: Any) -> redis.Redis:
    """`redis.Redis.from_url(url, **kw)`, whose parse errors become a RedisURLError that shows the
    URL with its credentials hidden, and a fix (redis-py's own message may quote the password)."""
    import redis

    try:
        return redis.Redis.from_url(url, **kw)
    except ValueError as e:
        pieces = [p for a, b in _secret_spans(url) for p in re.split(r"[:/?#@&]", url[a:b]) if p]
        reason = str(e)
        if not reason or any(p in reason for p in pieces):
            reason = "redis-py cannot parse it (its message quoted part of the credentials, so it is left out)"
        hint = "use the form redis://[USER]:PASSWORD@HOST:PORT/DB"
        userinfo = "".join(url[a:b] for a, b in _secret_spans(url))
        if any(c in userinfo for c in "#/?@%") or (pieces and reason.startswith("redis-py cannot")):
            hint += "; " + _RESERVED_HINT
        # Raised from None on purpose: the cause's message, shown by any traceback or log.exception,
        # can hold the password.
        raise RedisURLError(f"REDIS_URL {redact_url(url)} is not a usable Redis URL: {reason}; {hint}") from None
