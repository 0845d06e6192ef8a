"""Fault-injecting, OpenAI-compatible HTTP server used as a test double for jobctl.

It stands in for an OpenAI endpoint or a ``vllm serve`` process in three ways:

* in-process: ``with FakeOpenAI(latency=0.2) as srv: ...`` runs the server on its own
  event loop in a daemon thread, so pytest tests can inspect ``srv.stats``/``srv.calls``;
* as a subprocess: ``python -m tests.fake_openai --port 8123 --fault-rate 0.05`` for soak
  scripts, benchmarks and crash tests;
* as a fake ``vllm serve``: ``python -m tests.fake_openai vllm-compat serve MODEL ...``
  accepts a vLLM command line, so a lifecycle module can be tested by swapping the
  executable prefix. This mode also serves vLLM's ``/metrics``; with FAKE_MAX_NUM_SEQS set, a
  simulated engine (tests/fake_engine.py) gives it a capacity: requests beyond it wait, and the
  metrics say so. The command line's ``--max-num-seqs`` (else FAKE_MAX_NUM_SEQS) caps the batch,
  ``--num-gpu-blocks-override`` and ``--block-size`` set a KV budget, ``--max-num-batched-tokens``
  the prefill budget; FAKE_STEP_SECONDS and FAKE_PREFILL_SECONDS_PER_TOKEN the speed.

The server is a deliberately tiny raw asyncio HTTP/1.1 keep-alive implementation rather
than an ASGI app: benchmarks push hundreds of requests per second through it on two
cores, and fault injection needs to drop a TCP connection without a response, which
frameworks make awkward. Only the standard library is imported so the subprocess starts
fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus
from typing import Any, NamedTuple, Self

from tests.fake_engine import EngineConfig, EngineSim, metrics_page

__all__ = ["FakeOpenAI", "Fault", "FaultPlan", "Raw", "Reply", "Stats", "instance_for", "main"]


class Fault(StrEnum):
    HTTP_500 = "500"
    HTTP_429 = "429"
    HTTP_503 = "503"
    CLOSE = "close"
    HANG = "hang"
    INVALID_JSON = "invalid_json"
    LENGTH = "length"
    GARBAGE_BODY = "garbage_body"


@dataclass
class Reply:
    """A scripted chat answer, returned verbatim (schema and max_tokens are ignored)."""

    content: str
    finish_reason: str = "stop"


@dataclass
class Raw:
    """A scripted 200 response whose body is these bytes, as they are (odd or hostile completions)."""

    body: bytes


@dataclass
class FaultPlan:
    rate: float = 0.0
    # 429 and garbage bodies are opt-in: most soak runs want failures a client must retry
    # or repair, not ones that merely test back-off or content-type handling.
    kinds: tuple[Fault, ...] = (Fault.HTTP_500, Fault.CLOSE, Fault.HANG, Fault.INVALID_JSON, Fault.LENGTH)
    seed: int = 0
    hang_seconds: float = 30.0


@dataclass
class Stats:
    """Counters; mutated only on the server's event loop, safe to read from tests."""

    requests: int = 0  # chat requests that passed auth
    completed: int = 0  # 200 chat.completion bodies sent (incl. INVALID_JSON/LENGTH faults)
    in_flight: int = 0
    max_in_flight: int = 0
    faults_injected: dict[Fault, int] = field(default_factory=lambda: dict.fromkeys(Fault, 0))
    prompts_seen: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1000))


# ----------------------------------------------------------------------------- schemas

_DEEP = 8  # past this depth, fill only what is required so recursive schemas terminate
_FORMATS = {
    "date": "2026-01-01",
    "date-time": "2026-01-01T00:00:00Z",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "uri": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
}


def _resolve(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        raise ValueError(f"only local $ref is supported: {ref!r}")
    node = root
    for part in ref[1:].split("/")[1:]:
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(xlo, bool):  # draft-4 style: a flag that makes `minimum` exclusive
        xlo, lo = (lo, None) if xlo else (None, lo)
    if isinstance(xhi, bool):
        xhi, hi = (hi, None) if xhi else (None, hi)
    step = schema.get("multipleOf")

    def ok(v: float) -> bool:
        return (
            (lo is None or v >= lo)
            and (hi is None or v <= hi)
            and (xlo is None or v > xlo)
            and (xhi is None or v < xhi)
            and (not step or math.isclose(v / step, round(v / step)))
        )

    bases: list[float] = [0]
    for b in (lo, hi):
        if b is not None:
            bases.append(b)
    if xlo is not None:
        bases += [xlo + 1, (xlo + (xhi if xhi is not None else hi if hi is not None else xlo + 2)) / 2]
    if xhi is not None:
        bases += [xhi - 1, (xhi + (lo if lo is not None else xhi - 2)) / 2]
    cands: list[float] = []
    for b in bases:
        cands += [b, math.ceil(b), math.floor(b)]
        if step:
            cands += [math.ceil(b / step) * step, math.floor(b / step) * step]
    for c in cands:
        if (not integer or float(c).is_integer()) and ok(c):
            return int(c) if integer or float(c).is_integer() else c
    return int(bases[-1]) if integer else bases[-1]


def instance_for(schema: Any, _root: Any = None, _depth: int = 0) -> Any:
    """Return a deterministic, minimal instance that validates against ``schema``.

    Every declared property is filled (not only required ones) so callers exercise their
    full parsing path; arrays get exactly ``minItems`` elements.
    """
    root = schema if _root is None else _root
    if _depth > 64:
        raise ValueError("schema recursion too deep")
    if not isinstance(schema, dict):
        return None  # boolean schema `true` accepts anything
    d = _depth + 1
    if "$ref" in schema:
        return instance_for(_resolve(root, schema["$ref"]), root, d)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if branches:
            # Deep inside recursive schemas prefer a branch that is not a $ref (typically
            # `null`), otherwise Optional[Self] fields would recurse forever.
            pick = branches[0]
            if _depth > _DEEP:
                pick = next((b for b in branches if "$ref" not in b), pick)
            rest = {k: v for k, v in schema.items() if k != key}
            return instance_for({**rest, **pick} if rest else pick, root, d)
    if "allOf" in schema:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for sub in schema["allOf"]:
            while isinstance(sub, dict) and "$ref" in sub:
                sub = _resolve(root, sub["$ref"])
            for k, v in sub.items():
                if k == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **v}
                elif k == "required":
                    merged["required"] = [*merged.get("required", []), *v]
                else:
                    merged[k] = v
        return instance_for(merged, root, d)
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ is None:
        if {"properties", "required", "additionalProperties"} & schema.keys():
            typ = "object"
        elif {"items", "prefixItems", "minItems"} & schema.keys():
            typ = "array"
        elif {"minLength", "maxLength", "format", "pattern"} & schema.keys():
            typ = "string"
    if typ == "object":
        props: dict[str, Any] = schema.get("properties", {})
        required = schema.get("required", [])
        names = list(props) if _depth <= _DEEP else [n for n in props if n in required]
        out = {n: instance_for(props[n], root, d) for n in names}
        extra = schema.get("additionalProperties")
        for n in required:
            if n not in out:
                out[n] = instance_for(extra if isinstance(extra, dict) else {}, root, d)
        return out
    if typ == "array":
        prefix = [instance_for(s, root, d) for s in schema.get("prefixItems", [])]
        items = schema.get("items", {})
        n = max(0, schema.get("minItems", 0) - len(prefix))
        return prefix + [instance_for(items, root, d) for _ in range(n)]
    if typ == "string":
        s = _FORMATS.get(schema.get("format", ""), "")
        s = s.ljust(schema.get("minLength", 0), "a")
        return s[: schema["maxLength"]] if "maxLength" in schema else s
    if typ in ("integer", "number"):
        return _number(schema, typ == "integer")
    if typ == "boolean":
        return False
    return None  # "null" or an unconstrained schema


def _requested_schema(req: dict[str, Any]) -> dict[str, Any] | None:
    """None = plain text answer; {} = any JSON object; otherwise the JSON schema."""
    rf = req.get("response_format")
    if isinstance(rf, dict):
        if rf.get("type") == "json_schema":
            return dict((rf.get("json_schema") or {}).get("schema") or {})
        if rf.get("type") == "json_object":
            return dict(rf.get("schema") or {})
    # vLLM-specific structured output spellings, so a vLLM-targeted client also works.
    guided = req.get("guided_json") or (req.get("structured_outputs") or {}).get("json")
    if isinstance(guided, str):
        guided = json.loads(guided)
    return dict(guided) if isinstance(guided, dict) else None


def _prompt_chars(messages: list[Any]) -> int:
    total = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    return total


# ------------------------------------------------------------------------------ server

_REASONS = {s.value: s.phrase for s in HTTPStatus}


class _Resp(NamedTuple):
    status: int
    body: bytes = b""
    ctype: str = "application/json"
    extra_headers: str = ""

    def encode(self, keep_alive: bool) -> bytes:
        head = (
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}\r\n"
            f"content-type: {self.ctype}\r\ncontent-length: {len(self.body)}\r\n"
            f"connection: {'keep-alive' if keep_alive else 'close'}\r\n{self.extra_headers}\r\n"
        )
        return head.encode("latin-1") + self.body


_ERROR_TYPES = {429: "rate_limit_error", 500: "server_error", 503: "service_unavailable"}


def _error(status: int, message: str, code: str, headers: str = "") -> _Resp:
    typ = _ERROR_TYPES.get(status, "invalid_request_error")
    err = {"error": {"message": message, "type": typ, "param": None, "code": code}}
    return _Resp(status, json.dumps(err).encode(), extra_headers=headers)


_OK_EMPTY = _Resp(200, b"", "text/plain")
_Handler = Callable[[str, bytes], Awaitable["_Resp | None"]]


class FakeOpenAI:
    """The fake server. ``start()`` runs it on a private event loop in a daemon thread.

    ``calls`` lists (METHOD, path) for every non-chat request in arrival order (``/sleep``
    keeps its query string) so lifecycle tests can assert ordering; chat traffic is
    summarised in ``stats`` instead because soak runs would make a list grow unbounded.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "fake-model",
        api_key: str | None = None,
        faults: FaultPlan | None = None,
        latency: float = 0.0,
        startup_delay: float = 0.0,
        sleep_delay: float = 0.0,
        wake_delay: float = 0.0,
        metrics: bool = False,
        engine: EngineConfig | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """`sock`: a listening socket to serve on (e.g. one a parent process passed down), in place of host and port."""
        self.host, self.model, self.api_key = host, model, api_key
        # The exact Authorization header every request must carry, where it is not "Bearer <api_key>"
        # (e.g. HTTP Basic, as a proxy in front of a server takes it).
        self.authorization: str | None = None
        # vLLM's /metrics (vllm-compat mode); OpenAI, llama.cpp and Ollama have none. An engine implies it.
        self.metrics = metrics or engine is not None
        self.engine = EngineSim(engine) if engine is not None else None
        # What /v1/models reports as the owner; llama-cpp-python says "me" (a drain then picks json_object).
        self.owned_by = "fake"
        self.faults = faults or FaultPlan()
        self.latency, self.startup_delay = latency, startup_delay
        # What 429 and 503 answers send as Retry-After (seconds, or an HTTP date).
        self.retry_after = "0"
        self.sleep_delay, self.wake_delay = sleep_delay, wake_delay
        self.sleeping = False
        self.calls: list[tuple[str, str]] = []
        self.stats = Stats()
        self._port = port
        self._listen_sock = sock
        self._rng = random.Random(self.faults.seed)
        # deque append/popleft are atomic, so tests may script() while the loop consumes.
        self._script: deque[Reply | Fault | Raw] = deque()
        self._answers: dict[str, str] = {}
        self._seq = 0
        self._started_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}
        self._routes: dict[str, dict[str, _Handler]] = {
            "/health": {"GET": self._health},
            "/v1/models": {"GET": self._models},
            "/v1/chat/completions": {"POST": self._chat},
            "/sleep": {"POST": self._sleep},
            "/wake_up": {"POST": self._wake_up},
            "/is_sleeping": {"GET": self._is_sleeping},
            "/reset_prefix_cache": {"POST": self._reset_prefix_cache},
        }
        if self.metrics:
            self._routes["/metrics"] = {"GET": self._metrics}

    # -- public API ------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def base(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self._port}"

    @property
    def url(self) -> str:
        return self.base + "/v1"

    def script(self, *items: Reply | Fault | Raw) -> None:
        """Queue answers/faults for the next chat requests, ahead of random faults."""
        self._script.extend(items)

    def start(self) -> Self:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except OSError as exc:  # e.g. port in use: re-raised by start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"fake-openai-{id(self):x}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = self._loop = None
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._thread = self._loop = None
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- connection handling ---------------------------------------------------------

    async def _open(self) -> None:
        if self._listen_sock is not None:
            self._server = await asyncio.start_server(self._on_conn, sock=self._listen_sock, backlog=2048)
        else:
            self._server = await asyncio.start_server(self._on_conn, self.host, self._port, backlog=2048)
        self._port = self._server.sockets[0].getsockname()[1]
        self._started_at = time.monotonic()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        # Abort rather than close: a "server died" test needs clients to see a reset now,
        # and cancelling the handlers also interrupts HANG/latency sleeps.
        tasks = list(self._conns.values())
        for writer, task in list(self._conns.items()):
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.engine is not None:
            await self.engine.aclose()

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[writer] = task
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # client closed an idle keep-alive connection
                lines = head.decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    body = await _read_chunked(reader)
                else:
                    body = await reader.readexactly(int(headers.get("content-length") or 0))
                conn = headers.get("connection", "").lower()
                keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
                resp = await self._dispatch(method, target, headers, body)
                if resp is None:  # CLOSE fault: vanish without a status line
                    writer.transport.abort()
                    return
                writer.write(resp.encode(keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # malformed request or client gone: dropping the connection is the answer
        except asyncio.CancelledError:
            # stop() cancels handlers; finishing normally keeps Python 3.11's stream
            # callback from logging a spurious traceback for each cancelled task.
            pass
        finally:
            self._conns.pop(writer, None)
            writer.close()

    async def _dispatch(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Resp | None:
        path, _, query = target.partition("?")
        if path != "/v1/chat/completions":
            self.calls.append((method, target if path == "/sleep" else path))
        auth = headers.get("authorization")
        want = self.authorization or (f"Bearer {self.api_key}" if self.api_key is not None else None)
        if want is not None and path != "/health" and auth != want:
            return _error(401, "Incorrect API key provided", "invalid_api_key")
        route = self._routes.get(path)
        if route is None:
            return _error(404, f"no route for {path}", "not_found")
        handler = route.get(method)
        if handler is None:
            return _error(405, f"{method} not allowed on {path}", "method_not_allowed")
        return await handler(query, body)

    # -- endpoints -------------------------------------------------------------------

    async def _health(self, query: str, body: bytes) -> _Resp:
        if time.monotonic() - self._started_at < self.startup_delay:
            return _Resp(503, b"", "text/plain")
        return _OK_EMPTY

    async def _models(self, query: str, body: bytes) -> _Resp:
        data = {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": self.owned_by}]}
        return _Resp(200, json.dumps(data).encode())

    async def _sleep(self, query: str, body: bytes) -> _Resp:
        await asyncio.sleep(self.sleep_delay)
        self.sleeping = True
        return _OK_EMPTY

    async def _wake_up(self, query: str, body: bytes) -> _Resp:
        await asyncio.sleep(self.wake_delay)
        self.sleeping = False
        return _OK_EMPTY

    async def _is_sleeping(self, query: str, body: bytes) -> _Resp:
        return _Resp(200, json.dumps({"is_sleeping": self.sleeping}).encode())

    async def _reset_prefix_cache(self, query: str, body: bytes) -> _Resp:
        return _OK_EMPTY

    async def _metrics(self, query: str, body: bytes) -> _Resp:
        if self.engine is not None:
            text = self.engine.metrics_text(self.model)
        else:  # no simulated capacity: everything in flight runs
            text = metrics_page(self.model, running=self.stats.in_flight, waiting=0, kv_usage=0.0)
        return _Resp(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")

    async def _chat(self, query: str, body: bytes) -> _Resp | None:
        st = self.stats
        st.requests += 1
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            return await self._chat_inner(body)
        finally:
            st.in_flight -= 1

    async def _chat_inner(self, body: bytes) -> _Resp | None:
        try:
            req = json.loads(body)
        except ValueError:
            return _error(400, "request body is not valid JSON", "invalid_json")
        if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
            return _error(400, "'messages' must be a list", "invalid_request")
        self.stats.prompts_seen.append(req)
        if req.get("stream"):
            return _error(400, "streaming not supported by fake", "unsupported")
        if self.sleeping:
            return _error(503, "engine is sleeping", "sleeping")
        if self.latency:
            await asyncio.sleep(self.latency)
        item = self._next_item()
        if isinstance(item, Reply):
            return self._completion(req, item.content, item.finish_reason)
        if isinstance(item, Raw):
            self.stats.completed += 1
            return _Resp(200, item.body)
        try:
            content = self._answer(req)
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"unsupported schema: {exc}", "bad_schema")
        if item is None:
            limit = req.get("max_completion_tokens") or req.get("max_tokens")
            finish = "stop"
            if isinstance(limit, int) and limit < max(1, len(content) // 4):
                content, finish = content[: max(limit, 0) * 4], "length"
            if self.engine is not None:  # wait for a place in the simulated batch, then decode
                await self.engine.generate(_prompt_chars(req["messages"]) // 4, len(content) // 4)
            return self._completion(req, content, finish)
        self.stats.faults_injected[item] += 1
        if item is Fault.CLOSE:
            return None
        if item is Fault.HANG:
            await asyncio.sleep(self.faults.hang_seconds)
            return self._completion(req, content, "stop")
        if item is Fault.HTTP_500:
            return _error(500, "injected internal error", "internal_error")
        if item is Fault.HTTP_429:
            return _error(429, "injected rate limit", "rate_limit_exceeded", f"retry-after: {self.retry_after}\r\n")
        if item is Fault.HTTP_503:
            return _error(503, "injected overload", "overloaded", f"retry-after: {self.retry_after}\r\n")
        if item is Fault.INVALID_JSON:
            return self._completion(req, '{"not valid json', "stop")
        if item is Fault.LENGTH:
            return self._completion(req, content[: len(content) // 2], "length")
        return _Resp(200, b"<html>oops", "text/html")  # GARBAGE_BODY

    def _next_item(self) -> Reply | Fault | Raw | None:
        if self._script:
            return self._script.popleft()
        plan = self.faults
        if plan.rate > 0 and plan.kinds and self._rng.random() < plan.rate:
            return self._rng.choice(plan.kinds)
        return None

    def _answer(self, req: dict[str, Any]) -> str:
        schema = _requested_schema(req)
        if schema is None:
            return "ok"
        key = json.dumps(schema, sort_keys=True)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = json.dumps(instance_for(schema)) if schema else "{}"
        return answer

    def _completion(self, req: dict[str, Any], content: str, finish_reason: str) -> _Resp:
        self._seq += 1
        self.stats.completed += 1
        prompt = max(1, _prompt_chars(req["messages"]) // 4)
        completion = max(1, len(content) // 4)
        out = {
            "id": f"chatcmpl-{self._seq}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model") or self.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
            ],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }
        return _Resp(200, json.dumps(out).encode())


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            while (await reader.readline()).strip():
                pass  # skip trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readline()


# --------------------------------------------------------------------------------- CLI

# vLLM flags that take no value; anything else followed by a non-flag token eats it.
_VLLM_BOOL_FLAGS = frozenset(
    [
        "--enable-sleep-mode",
        "--trust-remote-code",
        "--enforce-eager",
        "--disable-log-requests",
        "--enable-log-requests",
        "--disable-log-stats",
        "--enable-prefix-caching",
        "--enable-chunked-prefill",
        "--enable-auto-tool-choice",
        "--disable-frontend-multiprocessing",
        "--disable-custom-all-reduce",
        "--skip-tokenizer-init",
        "--disable-fastapi-docs",
    ]
)


def _parse_vllm_argv(argv: list[str]) -> tuple[str | None, dict[str, str]]:
    """Split a ``serve MODEL --flag value ...`` argv into (model, {flag: value})."""
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    opts: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if not tok.startswith("--"):
            positional.append(tok)
            continue
        name, eq, value = tok.partition("=")
        takes_value = name not in _VLLM_BOOL_FLAGS and not name.startswith("--no-")
        if not eq and takes_value and i < len(argv) and not argv[i].startswith("--"):
            value = argv[i]
            i += 1
        opts[name] = value
    return (positional[0] if positional else opts.get("--model")), opts


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name)
    return float(raw) if raw else None


def _engine_config(opts: dict[str, str]) -> EngineConfig | None:
    """The simulated engine, opted into with FAKE_MAX_NUM_SEQS (its capacity, unless the command line
    has --max-num-seqs); None: no capacity, every request runs at once (the lifecycle tests' server)."""
    if not os.environ.get("FAKE_MAX_NUM_SEQS"):
        return None
    seqs = opts.get("--max-num-seqs") or os.environ["FAKE_MAX_NUM_SEQS"]
    block = int(opts.get("--block-size") or 16)
    blocks = opts.get("--num-gpu-blocks-override")
    return EngineConfig(
        max_num_seqs=int(seqs),
        kv_tokens=int(blocks) * block if blocks else None,
        max_num_batched_tokens=int(opts.get("--max-num-batched-tokens") or 8192),
        step_seconds=_env_float("FAKE_STEP_SECONDS") or 0.01,
        prefill_seconds_per_token=_env_float("FAKE_PREFILL_SECONDS_PER_TOKEN") or 0.0,
        block_size=block,
    )


def _serve_forever(srv: FakeOpenAI, exit_after: float | None, exit_code: int) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    srv.start()
    print(f"fake-openai listening on http://{srv.host}:{srv.port}", flush=True)
    if stop.wait(exit_after):  # exit_after None: block until a signal arrives
        srv.stop()
        return 0
    print("fatal: simulated engine crash", file=sys.stderr, flush=True)
    srv.stop()
    return exit_code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["vllm-compat"]:
        model, opts = _parse_vllm_argv(argv[1:])
        exit_after = _env_float("FAKE_EXIT_AFTER_START")
        engine = _engine_config(opts)
        srv = FakeOpenAI(
            host=opts.get("--host") or "127.0.0.1",
            port=int(opts.get("--port") or 8000),
            model=opts.get("--served-model-name") or model or "fake-model",
            # vLLM's order: --api-key, else the VLLM_API_KEY environment variable (how jobctl passes it).
            api_key=opts.get("--api-key") or os.environ.get("VLLM_API_KEY") or None,
            startup_delay=_env_float("FAKE_STARTUP_DELAY") or 0.0,
            sleep_delay=_env_float("FAKE_SLEEP_DELAY") or 0.0,
            wake_delay=_env_float("FAKE_WAKE_DELAY") or 0.0,
            latency=_env_float("FAKE_LATENCY") or 0.0,
            metrics=True,
            engine=engine,
        )
        return _serve_forever(srv, exit_after, int(os.environ.get("FAKE_EXIT_CODE") or 1))

    p = argparse.ArgumentParser(prog="python -m tests.fake_openai", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--model", default="fake-model")
    p.add_argument("--api-key")
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--faults", help="comma list of: " + ",".join(f.value for f in Fault))
    p.add_argument("--hang-seconds", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--startup-delay", type=float, default=0.0)
    p.add_argument("--sleep-delay", type=float, default=0.0)
    p.add_argument("--wake-delay", type=float, default=0.0)
    p.add_argument("--exit-after-start", type=float)
    p.add_argument("--exit-code", type=int, default=1)
    a = p.parse_args(argv)
    plan = FaultPlan(rate=a.fault_rate, seed=a.seed, hang_seconds=a.hang_seconds)
    if a.faults:
        plan.kinds = tuple(Fault(k.strip()) for k in a.faults.split(",") if k.strip())
    srv = FakeOpenAI(
        host=a.host,
        port=a.port,
        model=a.model,
        api_key=a.api_key,
        faults=plan,
        latency=a.latency,
        startup_delay=a.startup_delay,
        sleep_delay=a.sleep_delay,
        wake_delay=a.wake_delay,
    )
    return _serve_forever(srv, a.exit_after_start, a.exit_code)


if __name__ == "__main__":
    sys.exit(main())
