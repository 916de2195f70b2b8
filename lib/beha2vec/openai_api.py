"""What every call to an OpenAI-compatible API shares: the key, the client, retries, token counts.

The embedder (:mod:`beha2vec.embed_openai`) and the LLM calls (:mod:`beha2vec.llm`) both go
through here, so there is one retry policy and one way the key is handled:

* The key is read only from the environment variable a setting names, wrapped in :class:`Secret`
  (hidden from reprs and logs), and redacted from every error message.
* The ``openai`` client's own retries are off; ours retry 408, 409, 429, 5xx, timeouts,
  connection errors and malformed answers up to ``max_retries`` times with full-jitter exponential
  backoff (``uniform(0, min(backoff_max_s, backoff_base_s * 2**n))``); a ``Retry-After`` header
  replaces the jitter, cut to ``backoff_max_s``. Other errors (400, 401, ...) fail at once.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import hashlib
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
Clipper = Callable[[list[str], int], tuple[list[str], list[int], list[bool]]]


class Secret:
    """A value that never shows in a repr, a log line or a pickled plan's description."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"

    def __getstate__(self) -> str:
        return self.value

    def __setstate__(self, state: str) -> None:
        self.value = state

    def redact(self, text: str) -> str:
        return text.replace(self.value, "<redacted>") if self.value else text


def api_key(env: str, setting: str) -> Secret:
    """The key from the environment variable ``env``; a clear error names the setting otherwise."""
    value = os.environ.get(env, "").strip() if env.strip() else ""
    if not value:
        raise ValueError(
            f"the environment variable {env or '(none)'} (named by {setting}) is not set or empty; "
            "export the API key there (a server that needs none accepts any value)"
        )
    return Secret(value)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry; ``prefix`` names the settings in messages (``llm``)."""

    prefix: str
    timeout_s: float
    max_retries: int
    backoff_base_s: float
    backoff_max_s: float
    api_key_env: str


@dataclass(frozen=True)
class Failure:
    retriable: bool
    reason: str
    retry_after: float | None = None


class Malformed(ValueError):
    """A 200 answer that is not what was asked for (retried like a server error)."""


class RequestFailed(Exception):
    """One request failed for good; the message is already redacted."""


_CLIENTS: dict[tuple[str, str, float], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def client(base_url: str, key: Secret, timeout_s: float) -> Any:
    """One ``openai.OpenAI`` per process and settings: its connection pool outlives a batch."""
    digest = hashlib.sha256(key.value.encode()).hexdigest()
    cache_key = (base_url, digest, timeout_s)
    with _CLIENTS_LOCK:
        found = _CLIENTS.get(cache_key)
        if found is None:
            import openai

            found = openai.OpenAI(base_url=base_url, api_key=key.value, timeout=timeout_s, max_retries=0)
            _CLIENTS[cache_key] = found
        return found


def call_with_retries(
    send: Callable[[], T], policy: RetryPolicy, key: Secret, hint: Callable[[int], str] = lambda status: ""
) -> T:
    """``send()``'s result, retrying what may pass on a later attempt; bounded by ``max_retries``.

    ``send`` raises :class:`Malformed` (or any ``ValueError``) for an answer it cannot use;
    ``hint(status)`` adds advice to a final HTTP error.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return send()
        except Exception as exc:
            failure = classify(exc, policy, hint)
            if failure is None:
                raise
            if not failure.retriable or attempt > policy.max_retries:
                message = f"{failure.reason} (after {attempt} attempt{'s' if attempt > 1 else ''})"
                raise RequestFailed(key.redact(message)) from None
            time.sleep(backoff_delay(policy, attempt, failure.retry_after))


def classify(exc: Exception, policy: RetryPolicy, hint: Callable[[int], str]) -> Failure | None:
    """Whether a failed attempt may pass later, and why it failed; None for our own bugs."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return Failure(True, f"timed out after {policy.timeout_s:g} s ({policy.prefix}.timeout_s)")
    if isinstance(exc, openai.APIConnectionError):
        return Failure(True, f"connection error: {exc}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retriable = status in (408, 409, 429) or status >= 500
        advice = f" (check the key in ${policy.api_key_env})" if status == 401 else hint(status)
        return Failure(retriable, f"HTTP {status}: {short(exc.message)}{advice}",
                       retry_after(exc.response.headers) if retriable else None)
    if isinstance(exc, openai.APIResponseValidationError | ValueError):
        return Failure(True, f"malformed answer: {short(str(exc))}")
    return None


def retry_after(headers: Any) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, or ``retry-after`` in seconds or a date."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return max(millis / 1000, 0.0)
    raw = headers.get("retry-after")
    seconds = _number(raw)
    if seconds is not None or not raw:
        return None if seconds is None else max(seconds, 0.0)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def backoff_delay(policy: RetryPolicy, attempt: int, retry_after_s: float | None) -> float:
    """Full jitter on an exponential cap, or the server's Retry-After; never above backoff_max_s."""
    if retry_after_s is not None and math.isfinite(retry_after_s):
        return min(retry_after_s, policy.backoff_max_s)
    cap = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (attempt - 1))
    return random.uniform(0, cap)


def short(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


@functools.cache
def clipper(name: str, setting: str = "tokenizer") -> Clipper:
    """Cut texts to a token limit with the named tokenizer, once per process.

    ``tiktoken:<encoding>`` needs the tiktoken package and its encoding files; any other name
    goes to ``beha2vec.models.load_tokenizer`` (counts then approximate the server's).
    """
    if name.startswith("tiktoken:"):
        return _tiktoken_clipper(name, setting)
    from beha2vec.models import load_tokenizer

    tokenizer = load_tokenizer(name)

    def clip(texts: list[str], limit: int) -> tuple[list[str], list[int], list[bool]]:
        out, counts, cut = [], [], []
        for text, enc in zip(texts, tokenizer.encode_batch(texts, add_special_tokens=False), strict=True):
            over = len(enc.ids) > limit
            out.append(text[: enc.offsets[limit - 1][1]] if over else text)
            counts.append(min(len(enc.ids), limit))
            cut.append(over)
        return out, counts, cut

    return clip


def count_tokens(name: str, texts: list[str], setting: str = "tokenizer") -> list[int]:
    """Each text's length in tokens of the named tokenizer (nothing cut)."""
    if not texts:
        return []
    return clipper(name, setting)(texts, 10**9)[1]


def _tiktoken_clipper(name: str, setting: str) -> Clipper:
    try:
        import tiktoken
    except ImportError:
        raise ValueError(
            f"{setting} '{name}' needs the tiktoken package, which is not installed; install it "
            f"(pip install 'beha2vec[openai]'; its encodings download on first use) or set {setting} "
            "to a name beha2vec.models can load, e.g. minilm (token counts then approximate the server's)"
        ) from None
    try:
        encoding = tiktoken.get_encoding(name.removeprefix("tiktoken:"))
    except Exception as exc:
        raise ValueError(f"{setting} '{name}': tiktoken could not load it: {exc}") from None

    def clip(texts: list[str], limit: int) -> tuple[list[str], list[int], list[bool]]:
        ids = encoding.encode_ordinary_batch(texts)
        out = [encoding.decode(t[:limit]) if len(t) > limit else s for s, t in zip(texts, ids, strict=True)]
        return out, [min(len(t), limit) for t in ids], [len(t) > limit for t in ids]

    return clip
