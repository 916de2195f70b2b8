"""A local OpenAI-compatible HTTP server for tests: deterministic answers, recorded requests, faults.

Real HTTP on 127.0.0.1 so the real ``openai`` client, its timeouts and its error mapping are under
test. Faults are queued per test and consumed one per request, in arrival order, so a test states
exactly which attempts fail and can count the attempts afterwards from ``requests``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

FAULTS = ("ok", "429", "500", "slow", "malformed", "too_long", "bad_content")
MAX_SLOW_S = 10.0


@dataclass
class Recorded:
    """One request as received; of the Authorization header only its presence and match are kept.

    The 401 answer echoes the presented key on purpose, as a careless server might, so tests
    prove the client redacts it.
    """

    path: str
    headers: dict[str, str]
    authorized: bool
    auth_present: bool
    body: Any
    at: float
    fault: str

    @property
    def inputs(self) -> list[str]:
        data = self.body.get("input", []) if isinstance(self.body, dict) else []
        return [data] if isinstance(data, str) else list(data)


@dataclass
class FakeOpenAI:
    """Settings and state of one fake server; ``start``/``stop`` or use ``serving()``."""

    dim: int = 16
    api_key: str | None = None
    max_inputs: int | None = None
    max_input_tokens: int | None = None
    max_request_tokens: int | None = None
    retry_after_s: float = 1.0
    slow_s: float = 3.0
    requests: list[Recorded] = field(default_factory=list, init=False, repr=False)
    _faults: deque[str] = field(default_factory=deque, init=False, repr=False)
    _script: deque[dict] = field(default_factory=deque, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _server: ThreadingHTTPServer | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def fail_next(self, *faults: str) -> None:
        """Queue faults for the next requests, one each, in arrival order.

        ``ok`` lets one request through; ``429`` sends ``Retry-After: retry_after_s``; ``500`` a
        server error; ``slow`` answers normally after ``slow_s`` (past a short client timeout);
        ``malformed`` a 200 whose JSON is cut; ``too_long`` OpenAI's 400 for an over-long input;
        ``bad_content`` a well-formed chat answer whose content breaks the asked schema.
        """
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {FAULTS}")
        with self._lock:
            self._faults.extend(faults)

    def reply_next(self, *messages: dict) -> None:
        """Queue assistant messages (``content`` and/or ``tool_calls``) for the next chat answers."""
        with self._lock:
            self._script.extend(messages)

    def chat_requests(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def embedding_requests(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/embeddings")]

    def start(self) -> FakeOpenAI:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @contextmanager
    def serving(self) -> Iterator[FakeOpenAI]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def _record(self, path: str, headers: dict[str, str], body: Any) -> tuple[Recorded, str]:
        auth = headers.pop("authorization", None)
        authorized = self.api_key is None or auth == f"Bearer {self.api_key}"
        with self._lock:
            fault = self._faults.popleft() if self._faults else "ok"
            rec = Recorded(path, headers, authorized, auth is not None, body, time.monotonic(), fault)
            self.requests.append(rec)
        return rec, fault


def vector(text: str, model: str, dim: int) -> list[float]:
    """A unit vector that depends only on (model, text, dim), so tests can recompute it."""
    raw = b"".join(hashlib.sha256(f"{model}\0{dim}\0{text}\0{i}".encode()).digest()
                   for i in range((dim * 4 + 31) // 32))
    values = [(v / 2**31) - 1.0 for v in struct.unpack(f"<{dim}I", raw[: dim * 4])]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


def count_tokens(text: str) -> int:
    """Whitespace words: a simple rule tests can reason about (MiniLM never counts fewer)."""
    return len(text.split())


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _embeddings(server: FakeOpenAI, body: dict) -> tuple[int, dict]:
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) and t for t in inputs):
        return 400, error_body("'input' must be a non-empty string or array of non-empty strings",
                               "invalid_request_error", param="input")
    if server.max_inputs is not None and len(inputs) > server.max_inputs:
        return 400, error_body(f"'input' has {len(inputs)} items; at most {server.max_inputs} allowed",
                               "invalid_request_error", param="input")
    counts = [count_tokens(t) for t in inputs]
    too_long = [n for n in counts if server.max_input_tokens is not None and n > server.max_input_tokens]
    if too_long:
        return 400, _too_long(server.max_input_tokens or 0, max(too_long))
    if server.max_request_tokens is not None and sum(counts) > server.max_request_tokens:
        return 400, error_body(f"Requested {sum(counts)} tokens, max {server.max_request_tokens} tokens "
                               "per request", "max_tokens_per_request", param="input")
    model = str(body.get("model", ""))
    dim = int(body.get("dimensions") or server.dim)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(inputs):
        vec = vector(text, model, dim)
        encoded: Any = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if as_base64 else vec
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    tokens = sum(counts)
    return 200, {"object": "list", "data": data, "model": model,
                 "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _too_long(limit: int, got: int) -> dict:
    return error_body(f"This model's maximum context length is {limit} tokens, however you requested "
                      f"{got} tokens ({got} in your prompt; 0 for the completion). Please reduce your "
                      "prompt; or completion length.", "invalid_request_error")


def _chat(server: FakeOpenAI, body: dict, fault: str) -> tuple[int, dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return 400, error_body("'messages' must be a non-empty array", "invalid_request_error",
                               param="messages")
    user = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    last = user[-1] if user else ""
    last = last if isinstance(last, str) else json.dumps(last)
    words = last.split()
    with server._lock:
        scripted = server._script.popleft() if server._script else None
    if scripted is not None:
        message = {"role": "assistant", "content": scripted.get("content"), **scripted}
    elif fault == "bad_content":
        message = {"role": "assistant", "content": 'Here you go: {"summary": "", "keywords": ["only one"]}'}
    else:
        message = {"role": "assistant", "content": json.dumps(_reply(words, body.get("response_format")),
                                                              sort_keys=True)}
    prompt = sum(count_tokens(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
    completion = count_tokens(json.dumps(message))
    digest = hashlib.sha256(last.encode()).hexdigest()[:12]
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return 200, {
        "id": f"chatcmpl-{digest}", "object": "chat.completion", "created": 0,
        "model": str(body.get("model", "")),
        "choices": [{"index": 0, "finish_reason": finish, "message": message}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    }


def _reply(words: list[str], response_format: Any) -> dict:
    """``summary``/``keywords`` from the words, or the schema's properties filled by their type."""
    summary = " ".join(words[:12])
    keywords = sorted({w.strip(".,:;()").lower() for w in words if len(w) > 3})[:3]
    spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return {"summary": summary, "keywords": keywords}
    by_type = {"string": summary, "array": keywords, "integer": len(words), "number": float(len(words)),
               "boolean": bool(words)}
    return {name: by_type.get(prop.get("type") if isinstance(prop, dict) else None)
            for name, prop in properties.items()}


def _handler(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: pytest output stays readable."""

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            headers = {k.lower(): v for k, v in self.headers.items()}
            auth = headers.get("authorization")
            rec, fault = server._record(self.path, headers, body)
            if fault == "slow":
                server._stopping.wait(min(server.slow_s, MAX_SLOW_S))
            if not rec.authorized:
                given = auth.removeprefix("Bearer ") if auth else ""
                self._send(401, error_body(f"Incorrect API key provided: {given}.", "invalid_request_error",
                                           code="invalid_api_key"))
            elif fault == "429":
                self._send(429, error_body("Rate limit reached", "requests", code="rate_limit_exceeded"),
                           {"Retry-After": f"{server.retry_after_s:g}"})
            elif fault == "500":
                self._send(500, error_body("The server had an error", "server_error"))
            elif fault == "malformed":
                self._send_raw(200, b'{"object": "list", "data": [{"embedding": [0.1, ')
            elif fault == "too_long":
                self._send(400, _too_long(server.max_input_tokens or 0, 10**6))
            elif not isinstance(body, dict):
                self._send(400, error_body("We could not parse the JSON body of your request.",
                                           "invalid_request_error"))
            elif self.path.rstrip("/").endswith("/embeddings"):
                self._send(*_embeddings(server, body))
            elif self.path.rstrip("/").endswith("/chat/completions"):
                self._send(*_chat(server, body, fault))
            else:
                self._send(404, error_body(f"Unknown path {self.path}", "invalid_request_error"))

        def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
            self._send_raw(status, json.dumps(payload).encode(), headers)

        def _send_raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    """A started fake server with 16-dimensional vectors, stopped after the test."""
    with FakeOpenAI().serving() as server:
        yield server
