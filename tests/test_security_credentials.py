"""Finding 11: credentials in URLs never reach a terminal or a log.

A password in REDIS_URL or OPENAI_BASE_URL was shown by `redact_url` whenever it held `/`, `#`,
`?` or `@`, or sat in redis-py's `?password=` query form; httpx logged the model server's URL,
password and all, at INFO; redis-py's URL parse error quoted the start of the password.
"""

from __future__ import annotations

import http.server
import io
import logging
import threading
from collections.abc import Iterator

import pytest

from jobs.errors import JobctlError
from jobs.redact import redact_url

try:
    import httpx2 as httpx  # the fork openai's client uses here
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

SECRET = "s3cr3tPW"


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        (f"redis://:{SECRET}@db.example:6379/0", "db.example:6379/0"),
        (f"redis://default:{SECRET}@db.example:6379/0", "db.example:6379/0"),
        (f"redis://:{SECRET[:4]}/{SECRET[4:]}@db.example:6379/0", "db.example:6379/0"),
        (f"redis://:{SECRET[:4]}#{SECRET[4:]}@db.example:6379/0", "db.example:6379/0"),
        (f"redis://:{SECRET[:4]}?{SECRET[4:]}@db.example:6379/0", "db.example:6379/0"),
        (f"redis://:{SECRET[:4]}@{SECRET[4:]}@db.example:6379/0", "db.example:6379/0"),
        (f"redis://:{SECRET[:4]}:{SECRET[4:]}@db.example/0", "db.example/0"),
        (f"rediss://{SECRET}@db.example:6380", "db.example:6380"),  # a token as the user name
        (f"unix:///run/redis.sock?password={SECRET}&db=2", "/run/redis.sock"),
        (f"unix:///run/redis.sock?db=2&password={SECRET}", "db=2"),
        (f"unix:///run/redis.sock?password={SECRET[:4]}%26{SECRET[4:]}", "/run/redis.sock"),
        (f"http://user:{SECRET}@127.0.0.1:8000/v1", "127.0.0.1:8000/v1"),
        (f"https://api.example/v1?api-key={SECRET}", "api.example/v1"),
    ],
)
def test_redact_url_hides_every_form_of_password(url: str, kept: str):
    shown = redact_url(url)
    assert shown is not None
    for piece in (SECRET, SECRET[:4], SECRET[4:]):
        assert piece not in shown, shown
    assert kept in shown and "***" in shown


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "http://127.0.0.1:8000/v1", "", None])
def test_redact_url_leaves_urls_without_credentials(url: str | None):
    assert redact_url(url) == url


@pytest.fixture
def web() -> Iterator[int]:
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield int(srv.server_address[1])
    srv.shutdown()
    srv.server_close()


def test_httpx_request_log_shows_no_password(web: int):
    from jobs.redact import install_log_redaction

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    old_level = root.level
    # Only this handler: a redacting handler installed by an earlier test (the CLI's) would redact the
    # record in place before this one sees it.
    old_handlers = root.handlers[:]
    root.handlers = []
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # The CLI quiets the HTTP loggers; an earlier test in this process may have run it.
    httpx_logger = logging.getLogger(httpx.__name__)  # httpx2, the client the SDK uses
    old_httpx = httpx_logger.level, httpx_logger.disabled
    httpx_logger.setLevel(logging.INFO)
    httpx_logger.disabled = False  # a dictConfig elsewhere in the process may have disabled it
    try:
        url = f"http://user:{SECRET}@127.0.0.1:{web}/v1/models"
        httpx.get(url)
        assert SECRET in stream.getvalue(), "the leak this test guards against is gone from httpx itself"
        stream.truncate(0)
        install_log_redaction(handler)
        httpx.get(url)
        logging.getLogger("jobctl.test").warning("cannot reach %s", url)
        try:
            raise ConnectionError(f"while calling {url}")
        except ConnectionError:
            logging.getLogger("jobctl.test").exception("failed")
    finally:
        root.removeHandler(handler)
        root.handlers = old_handlers
        root.setLevel(old_level)
        httpx_logger.setLevel(old_httpx[0])
        httpx_logger.disabled = old_httpx[1]
    out = stream.getvalue()
    assert "HTTP Request: GET http://***@127.0.0.1" in out
    assert "cannot reach http://***@127.0.0.1" in out and "while calling http://***@" in out
    assert SECRET not in out


def test_install_log_redaction_covers_the_root_handlers():
    from jobs.redact import RedactingFilter, install_log_redaction

    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    try:
        install_log_redaction()
        install_log_redaction()  # twice is once
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    finally:
        root.removeHandler(handler)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET[:4]}#{SECRET[4:]}@localhost:6379/0",
        f"redis://:{SECRET[:4]}/{SECRET[4:]}@localhost:6379/0",
        f"redis://:{SECRET[:4]}?{SECRET[4:]}@localhost:6379/0",
        f"redis://:{SECRET}@localhost:99999/0",
        f"http://:{SECRET}@localhost:6379/0",
        f"redis://:{SECRET}@[::1/0",
    ],
)
def test_redis_url_parse_errors_do_not_quote_the_password(url: str):
    import redis

    with pytest.raises(ValueError) as raw:
        redis.Redis.from_url(url)
    leaked = any(p in str(raw.value) for p in (SECRET, SECRET[:4]))
    from jobs.redact import safe_redis_from_url

    with pytest.raises(JobctlError) as info:
        safe_redis_from_url(url)
    msg = str(info.value)
    assert SECRET not in msg and SECRET[:4] not in msg and SECRET[4:] not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__  # the cause quotes the password
    assert "***@" in msg and "REDIS_URL" in msg
    if leaked:
        assert "%23" in msg  # how to write such a password


def test_safe_redis_from_url_passes_good_urls():
    from jobs.redact import safe_redis_from_url

    r = safe_redis_from_url(f"redis://:{SECRET[:4]}%23{SECRET[4:]}@localhost:6379/3", socket_timeout=1)
    kw = r.connection_pool.connection_kwargs
    assert (kw["password"], kw["db"], kw["socket_timeout"]) == (f"{SECRET[:4]}#{SECRET[4:]}", 3, 1)


# -- a model server behind HTTP Basic auth: the URL's user info is a header, never part of the URL -----


def test_split_credentials_moves_user_info_to_a_basic_header():
    import base64

    from worker.http import split_credentials

    url, headers = split_credentials(f"https://me:{SECRET}%40x@llm.example/v1?a=1", None)
    assert url == "https://llm.example/v1?a=1"
    assert base64.b64decode(headers["Authorization"].removeprefix("Basic ")) == f"me:{SECRET}@x".encode()
    assert split_credentials("http://127.0.0.1:8000/v1", "k") == (
        "http://127.0.0.1:8000/v1",
        {"Authorization": "Bearer k"},
    )
    assert split_credentials("http://127.0.0.1:8000/v1", "none") == ("http://127.0.0.1:8000/v1", {})
    with pytest.raises(JobctlError, match="give one") as e:
        split_credentials(f"https://me:{SECRET}@llm.example/v1", "sk-1")
    assert SECRET not in str(e.value)


def test_a_drain_through_basic_auth_sends_it_to_every_call_and_shows_no_password(client, settings, conn, caplog):
    """The fake refuses anything but the Basic header: model discovery, the chat calls and vLLM's /metrics
    (the adaptive window) all carry it; the password is in no log line and not in the client's URL."""
    import asyncio
    import base64

    from tests.conftest import FAST, triage_task
    from tests.fake_openai import FakeOpenAI
    from worker.drain import Drainer, DrainOptions
    from worker.http import make_client

    sub = client.submit([triage_task(i) for i in range(5)])
    with FakeOpenAI(metrics=True) as fake:
        fake.authorization = "Basic " + base64.b64encode(f"me:{SECRET}/x".encode()).decode()
        url = fake.url.replace("http://", f"http://me:{SECRET}%2Fx@")
        opts = DrainOptions(queues=[settings.queue], concurrency=4, burst=True, poll_interval=0.1)

        async def go() -> tuple[object, str]:
            async with make_client(url, None, 8, 10.0) as oa:
                drainer = Drainer(conn, settings.cipher(), oa, opts, FAST)
                report = await drainer.drain()
                return report, str(oa.base_url)

        with caplog.at_level(logging.DEBUG):
            report, used = asyncio.run(go())
        assert SECRET not in used and "@" not in used
        assert report.done == 5, report  # type: ignore[attr-defined]
        assert ("GET", "/metrics") in fake.calls
        assert fake.stats.requests == 5
    assert client.status(sub.batch_id).counts["completed"] == 5
    assert SECRET not in caplog.text


def test_the_cli_refuses_a_password_in_the_url_and_an_api_key_both(worker_env):
    from click.testing import CliRunner

    from producer.cli import cli

    env = {**worker_env, "OPENAI_BASE_URL": f"http://me:{SECRET}@127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-1"}
    result = CliRunner().invoke(cli, ["worker", "--burst"], env=env)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "give one" in result.output and SECRET not in result.output
