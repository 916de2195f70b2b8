"""Calls to an OpenAI-compatible chat endpoint: structured answers, a cost guard and a Delta cache.

A batch of :class:`ChatRequest` goes through :func:`complete_all`:

1. Each request is keyed by the SHA-256 of its canonical JSON (model, messages, schema,
   temperature, completion limit); keys found in the ``llm_cache`` table are answered from it, so
   a re-run sends nothing and costs nothing.
2. The rest are priced before anything is sent: prompt tokens counted with ``llm.tokenizer``, plus
   ``max_completion_tokens`` per request as the upper bound of the answer, at the model's prices.
   Over ``llm.budget_usd``, or with no known price while a budget is set, nothing is sent.
3. Up to ``llm.concurrency`` requests run at once, retried as :mod:`beha2vec.openai_api` says;
   an answer that does not parse into the schema counts as malformed and is retried too. Spend is
   counted from the usage the server reports; once it passes the budget no new request starts.
4. Every answer that came back is appended to ``llm_cache`` in one commit, also when others failed.

Callers redact their texts first (:mod:`beha2vec.redact`); this module only sends what it is given.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from beha2vec.config import LLMConfig
from beha2vec.lake import Lake
from beha2vec.openai_api import (
    Malformed,
    RequestFailed,
    RetryPolicy,
    Secret,
    api_key,
    call_with_retries,
    client,
    count_tokens,
)
from beha2vec.tables import LLM_CACHE

log = logging.getLogger(__name__)

CACHE_TABLE = "llm_cache"
MESSAGE_OVERHEAD_TOKENS = 4
Parser = Callable[[dict], dict]


class BudgetExceeded(ValueError):
    """The estimated or spent cost is over ``llm.budget_usd`` (or unknown); the message says what ran."""


class LLMError(RuntimeError):
    """Some requests failed for good; the answers that came back are in the cache."""


@dataclass(frozen=True)
class ChatRequest:
    """One structured question: ``schema`` is a JSON schema the answer must follow."""

    purpose: str
    system: str
    user: str
    schema_name: str
    schema: dict

    def body(self, conf: LLMConfig) -> dict:
        return {
            "model": conf.model,
            "messages": [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": self.schema_name, "schema": self.schema, "strict": True}},
            "temperature": conf.temperature,
            "max_tokens": conf.max_completion_tokens,
        }

    def key(self, conf: LLMConfig) -> str:
        blob = json.dumps(self.body(conf), sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class ChatResult:
    """A parsed answer and what it cost; ``cached`` answers cost nothing in this run."""

    key: str
    answer: dict
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cached: bool


@dataclass(frozen=True)
class Estimate:
    """What the requests not in the cache will cost at most, known before any is sent."""

    model: str
    requests: int
    cached: int
    prompt_tokens: int
    max_completion_tokens: int
    usd: float | None
    budget_usd: float

    def __str__(self) -> str:
        cost = f"at most ${self.usd:.4f}" if self.usd is not None else "cost unknown (no price for the model)"
        budget = "no budget" if self.budget_usd < 0 else f"budget ${self.budget_usd:g}"
        return (f"{self.model}: {self.requests} requests to send ({self.cached} answered from the cache), "
                f"{self.prompt_tokens:,} prompt tokens + up to {self.max_completion_tokens:,} completion "
                f"tokens; {cost}; {budget}")


def validate(conf: LLMConfig) -> None:
    """Fail before any work on settings that cannot make sense."""
    bad = [k for k in ("max_completion_tokens", "timeout_s", "concurrency") if getattr(conf, k) <= 0]
    bad += [k for k in ("max_retries", "backoff_base_s", "backoff_max_s") if getattr(conf, k) < 0]
    if bad:
        raise ValueError("llm." + ", llm.".join(bad) + " must be positive (max_retries and backoff may be 0)")
    if not conf.base_url.strip() or not conf.model.strip():
        raise ValueError("llm.base_url and llm.model must name an OpenAI-compatible endpoint and a model")


def policy(conf: LLMConfig) -> RetryPolicy:
    return RetryPolicy("llm", conf.timeout_s, conf.max_retries, conf.backoff_base_s, conf.backoff_max_s,
                       conf.api_key_env)


def price(conf: LLMConfig, prompt_tokens: int, completion_tokens: int) -> float | None:
    """US dollars for these tokens at the model's prices, None when either price is unknown."""
    p_in = conf.price_input_per_million.get(conf.model)
    p_out = conf.price_output_per_million.get(conf.model)
    if p_in is None or p_out is None:
        return None
    return (prompt_tokens * p_in + completion_tokens * p_out) / 1e6


def prompt_tokens(conf: LLMConfig, texts: list[str]) -> int:
    """Tokens of a prompt's messages by ``llm.tokenizer``, plus a few per message for the framing."""
    counts = count_tokens(conf.tokenizer, texts, "llm.tokenizer")
    return sum(counts) + MESSAGE_OVERHEAD_TOKENS * len(texts)


def parse_json(content: str | None) -> dict:
    """The first JSON object in an answer, also inside a code fence or after a preamble."""
    if not content or "{" not in content:
        raise Malformed(f"the answer holds no JSON object: {content!r:.200}")
    start = content.index("{")
    try:
        value, _ = json.JSONDecoder().raw_decode(content[start:])
    except json.JSONDecodeError as exc:
        raise Malformed(f"the answer's JSON does not parse: {exc}") from None
    if not isinstance(value, dict):
        raise Malformed("the answer's JSON is not an object")
    return value


def complete_all(lake: Lake, conf: LLMConfig, requests: list[ChatRequest], parse: Parser,
                 on_estimate: Callable[[Estimate], None] | None = None) -> list[ChatResult]:
    """Answers to ``requests`` in order: from the cache, else sent after the budget check."""
    validate(conf)
    keys = [r.key(conf) for r in requests]
    cached = _cached(lake, set(keys), conf.model)
    missing = {k: r for k, r in zip(keys, requests, strict=True) if k not in cached}
    results: dict[str, ChatResult] = {}
    for key, row in cached.items():
        results[key] = ChatResult(key, parse(parse_json(row["response"])), int(row["prompt_tokens"]),
                                  int(row["completion_tokens"]), 0.0, True)
    if missing:
        tokens = sum(prompt_tokens(conf, [r.system, r.user]) for r in missing.values())
        completion = conf.max_completion_tokens * len(missing)
        estimate = Estimate(conf.model, len(missing), len(requests) - len(missing), tokens, completion,
                            price(conf, tokens, completion), conf.budget_usd)
        log.info("%s", estimate)
        if on_estimate is not None:
            on_estimate(estimate)
        _check_budget(estimate)
        results.update(_send(lake, conf, missing, parse))
    seen: set[str] = set()
    out = []
    for k in keys:  # a request asked twice is sent and paid once
        repeat = k in seen
        out.append(dataclasses.replace(results[k], cost_usd=0.0, cached=True) if repeat else results[k])
        seen.add(k)
    return out


def _check_budget(estimate: Estimate) -> None:
    if estimate.budget_usd < 0:
        return
    if estimate.usd is None:
        raise BudgetExceeded(
            f"no price is known for '{estimate.model}', so {estimate.requests} requests cannot be checked "
            f"against llm.budget_usd={estimate.budget_usd:g}; nothing was sent. Declare its prices under "
            "llm.price_input_per_million and llm.price_output_per_million (0 for a free local server) "
            "or disable the budget with --set llm.budget_usd=-1")
    if estimate.usd > estimate.budget_usd:
        enough = math.ceil(estimate.usd * 1.1 * 100) / 100
        raise BudgetExceeded(
            f"{estimate}: over the budget, nothing was sent. Raise it with --set llm.budget_usd={enough:.2f} "
            "(or -1 for no limit), or lower interpret.sample_tokens or the number of interpret.seeds")


def _cached(lake: Lake, keys: set[str], model: str) -> dict[str, dict]:
    from pyspark.sql import functions as F

    if not keys or not lake.exists(CACHE_TABLE):
        return {}
    rows = (lake.read(CACHE_TABLE).where(F.col("model") == model).where(F.col("prompt_hash").isin(list(keys)))
            .dropDuplicates(["prompt_hash"]).collect())
    return {r["prompt_hash"]: r.asDict() for r in rows}


def _send(lake: Lake, conf: LLMConfig, missing: dict[str, ChatRequest],
          parse: Parser) -> dict[str, ChatResult]:
    """Send concurrently; stop starting new requests at the first failure or past the budget."""
    key = api_key(conf.api_key_env, "llm.api_key_env")
    api = client(conf.base_url, key, conf.timeout_s)
    stop = threading.Event()
    lock = threading.Lock()
    spent = [0.0]
    done: dict[str, tuple[ChatResult, str]] = {}
    failures: list[str] = []

    def one(prompt_hash: str, request: ChatRequest) -> None:
        if stop.is_set():
            return
        try:
            result, raw = _complete(api, conf, key, prompt_hash, request, parse)
        except Exception as exc:  # any failure stops new requests; the answers so far are cached
            stop.set()
            with lock:
                failures.append(f"{request.purpose}: {key.redact(str(exc))}")
            return
        with lock:
            done[prompt_hash] = (result, raw)
            spent[0] += result.cost_usd
            if 0 <= conf.budget_usd < spent[0]:
                stop.set()

    try:
        with ThreadPoolExecutor(max_workers=min(conf.concurrency, len(missing))) as pool:
            futures = [pool.submit(one, h, r) for h, r in missing.items()]
            for future in tqdm(as_completed(futures), total=len(futures), desc=f"{conf.model} requests",
                               unit="req", leave=False):
                future.result()
    finally:
        _append(lake, conf.model, done)
    if failures:
        raise LLMError(f"{len(failures)} of {len(missing)} requests to {conf.base_url} failed for good; the "
                       f"{len(done)} answers that came back are cached, a re-run sends only the rest. "
                       f"First: {failures[0]}")
    if len(done) < len(missing):
        raise BudgetExceeded(f"spent ${spent[0]:.4f} (reported usage), over llm.budget_usd="
                             f"{conf.budget_usd:g}, after {len(done)} of {len(missing)} requests; the "
                             "answers are cached, a re-run with a higher budget sends only the rest")
    return {h: result for h, (result, _) in done.items()}


def _complete(api: Any, conf: LLMConfig, key: Secret, prompt_hash: str, request: ChatRequest,
              parse: Parser) -> tuple[ChatResult, str]:
    body = request.body(conf)

    def send() -> tuple[ChatResult, str]:
        response = api.chat.completions.create(**body)
        choice = response.choices[0] if response.choices else None
        if choice is None or choice.message is None:
            raise Malformed("the answer has no message")
        if choice.finish_reason == "length":  # the same request would be cut again: not retried
            raise RequestFailed(f"the answer was cut at llm.max_completion_tokens="
                                f"{conf.max_completion_tokens}; raise it")
        content = choice.message.content or ""
        answer = parse(parse_json(content))
        usage = response.usage
        p_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        c_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = price(conf, p_tokens, c_tokens) or 0.0
        return ChatResult(prompt_hash, answer, p_tokens, c_tokens, cost, False), json.dumps(answer)

    return call_with_retries(send, policy(conf), key)


def _append(lake: Lake, model: str, done: dict[str, tuple[ChatResult, str]]) -> None:
    if not done:
        return
    now = dt.datetime.now(dt.UTC)
    rows = [(h, model, raw, r.prompt_tokens, r.completion_tokens, r.cost_usd, now)
            for h, (r, raw) in done.items()]
    lake.write(lake.spark.createDataFrame(rows, LLM_CACHE), CACHE_TABLE, mode="append")
