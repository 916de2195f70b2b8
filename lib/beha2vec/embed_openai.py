"""The ``openai:<model>`` embedder: any OpenAI-compatible embeddings API, paid for once per text.

How a call runs:

1. The driver anti-joins the texts with ``embedding_cache`` (partition ``model`` = the cache key,
   see ``cache_key``) and counts the missing texts' tokens in Spark with
   ``embed.openai.tokenizer``. A text over ``max_tokens_per_input`` is cut at that many tokens
   (the prefix is embedded and cached under the hash of the full text); it is never sent whole.
2. The cost estimate (tokens x ``price_per_million_tokens[model]``) is logged and handed to
   ``on_estimate`` before any request. Over ``budget_usd`` the call raises ``BudgetExceeded``;
   a model with no known price is refused too unless the budget is disabled (``budget_usd < 0``),
   so an unknown cost is never taken for zero.
3. The missing texts go in chunks of about ``chunk_texts`` (by hash of ``text_hash``). In each
   chunk every Spark task packs its rows into requests (``max_inputs_per_request`` inputs and
   ``max_tokens_per_request`` tokens at most) and sends up to ``concurrency`` of them at once
   through the ``openai`` client. Each chunk's results are appended to ``embedding_cache`` as one
   Delta commit, so a run that stops mid-way resumes with only the texts still missing.

Retries and the key follow :mod:`beha2vec.openai_api`. The key is read on the driver and travels
to the Python workers inside the task (executors need not share the driver's environment, and
``spark.executorEnv`` would show it in the Spark UI); it is never logged or stored.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from beha2vec.config import OpenAIConfig
from beha2vec.context import Context
from beha2vec.openai_api import (
    Malformed,
    RequestFailed,
    RetryPolicy,
    Secret,
    api_key,
    call_with_retries,
    clipper,
)
from beha2vec.openai_api import client as openai_client
from beha2vec.spark import release
from beha2vec.tables import EMBEDDING_CACHE

log = logging.getLogger(__name__)

PREFIX = "openai:"
CACHE_TABLE = "embedding_cache"
NOT_SENT = "not sent: an earlier request of the same task failed"

CLIP = T.StructType([
    T.StructField("text", T.StringType()),
    T.StructField("tokens", T.IntegerType()),
    T.StructField("truncated", T.BooleanType()),
])

RESULT = T.StructType([
    T.StructField("text_hash", T.StringType()),
    T.StructField("dim", T.IntegerType()),
    T.StructField("embedding", T.ArrayType(T.FloatType())),
    T.StructField("tokens", T.IntegerType()),
    T.StructField("error", T.StringType()),
])


class BudgetExceeded(ValueError):
    """The estimated cost is over ``embed.openai.budget_usd`` (or unknown); nothing was sent."""


class OpenAIEmbedError(RuntimeError):
    """Some texts could not be embedded; what was embedded before stays in the cache."""


@dataclass(frozen=True)
class Estimate:
    """What embedding the missing texts will cost, known before any request."""

    model: str
    cache_key: str
    texts: int
    tokens: int
    truncated: int
    tokenizer: str
    max_tokens_per_input: int
    price_per_million_tokens: float | None
    usd: float | None
    budget_usd: float

    def __str__(self) -> str:
        cost = (f"estimated cost ${self.usd:.4f} at ${self.price_per_million_tokens:g} per million tokens"
                if self.usd is not None else f"cost unknown (no price for '{api_model(self.model)}')")
        budget = "no budget" if self.budget_usd < 0 else f"budget ${self.budget_usd:g}"
        return (f"{self.model}: {self.texts:,} texts to embed, {self.tokens:,} tokens by tokenizer "
                f"'{self.tokenizer}' ({self.truncated:,} cut to {self.max_tokens_per_input:,} tokens); "
                f"{cost}; {budget}")


@dataclass(frozen=True)
class _Settings:
    """What a Python worker needs to send requests: a picklable slice of the configuration."""

    base_url: str
    model: str
    api_key_env: str
    dimensions: int
    timeout_s: float
    max_retries: int
    backoff_base_s: float
    backoff_max_s: float
    concurrency: int
    max_inputs: int
    max_tokens: int
    max_tokens_per_input: int
    tokenizer: str
    api_key: Secret = field(repr=False)

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy("embed.openai", self.timeout_s, self.max_retries, self.backoff_base_s,
                           self.backoff_max_s, self.api_key_env)


def api_model(model: str) -> str:
    """The model name the API knows: ``openai:text-embedding-3-small`` -> ``text-embedding-3-small``."""
    name = model.removeprefix(PREFIX).strip()
    if not name:
        raise ValueError(f"embed model '{model}' names no API model; use openai:<model>, "
                         "e.g. openai:text-embedding-3-small")
    return name


def cache_key(model: str, conf: OpenAIConfig) -> str:
    """The ``embedding_cache`` partition: ``openai:<model>``, plus ``@<dimensions>`` when shortened.

    The provider prefix keeps other embedders' rows apart; the dimension suffix keeps shortened
    vectors (``embed.openai.dimensions``) apart from full ones. The base URL is not part of it: the
    same model name behind another URL is taken to give the same vectors.
    """
    key = PREFIX + api_model(model)
    return f"{key}@{conf.dimensions}" if conf.dimensions > 0 else key


def pack_requests(tokens: Sequence[int], max_inputs: int, max_tokens: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` slices with at most ``max_inputs`` rows and ``max_tokens`` tokens.

    A row counts at least one token; a row over ``max_tokens`` alone still gets its own request
    (``validate`` rules that out for clipped rows).
    """
    groups: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, n in enumerate(tokens):
        n = max(int(n), 1)
        if i > start and (i - start >= max_inputs or total + n > max_tokens):
            groups.append((start, i))
            start, total = i, 0
        total += n
    if len(tokens) > start:
        groups.append((start, len(tokens)))
    return groups


def validate(conf: OpenAIConfig) -> None:
    """Fail before any work on limits that cannot make sense."""
    positive = ("max_inputs_per_request", "max_tokens_per_input", "max_tokens_per_request", "concurrency",
                "chunk_texts", "timeout_s")
    bad = [k for k in positive if getattr(conf, k) <= 0]
    bad += [k for k in ("max_retries", "backoff_base_s", "backoff_max_s", "dimensions")
            if getattr(conf, k) < 0]
    if bad:
        raise ValueError("embed.openai." + ", embed.openai.".join(bad) + " must be positive "
                         "(max_retries, backoff and dimensions may be 0)")
    if conf.max_tokens_per_input > conf.max_tokens_per_request:
        raise ValueError("embed.openai.max_tokens_per_input must not exceed max_tokens_per_request, "
                         "or a single input could never be sent")
    if not conf.api_key_env.strip():
        raise ValueError("embed.openai.api_key_env must name the environment variable holding the API key")


def embed_texts_openai(
    ctx: Context, model: str, texts: DataFrame, on_estimate: Callable[[Estimate], None] | None = None
) -> DataFrame:
    """``text_hash, dim, embedding`` for every row of ``texts`` (``text_hash, text``), from the cache.

    Missing texts are embedded through the API first, after the budget check; ``on_estimate``
    receives the estimate before any request (the stage prints or records it).
    """
    conf = ctx.config.embed.openai
    validate(conf)
    key = cache_key(model, conf)
    clipper(conf.tokenizer, "embed.openai.tokenizer")
    missing = (
        texts.select("text_hash", "text").dropDuplicates(["text_hash"])
        .join(_cached(ctx, key).select("text_hash"), "text_hash", "left_anti")
    )
    clip = _clip_udf(conf.tokenizer, conf.max_tokens_per_input)(F.col("text"))
    todo = missing.select("text_hash", clip.alias("c")).select(
        "text_hash", F.col("c.text").alias("text"), F.col("c.tokens").alias("tokens"),
        F.col("c.truncated").alias("truncated"),
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        totals = todo.agg(F.count(F.lit(1)).alias("n"), F.sum("tokens").alias("tokens"),
                          F.sum(F.col("truncated").cast("int")).alias("truncated")).first()
        n = int(totals["n"]) if totals else 0
        if n == 0:
            log.info("%s: every text is in the cache, nothing to send", key)
        else:
            estimate = _estimate(model, key, conf, n, int(totals["tokens"]), int(totals["truncated"]))
            log.info("%s", estimate)
            if on_estimate is not None:
                on_estimate(estimate)
            _check_budget(estimate)
            settings = _settings(conf, model)
            _embed_missing(ctx, key, settings, todo, estimate, conf.chunk_texts)
    finally:
        release(todo)
    return texts.select("text_hash").join(
        _cached(ctx, key).select("text_hash", "dim", "embedding").dropDuplicates(["text_hash"]), "text_hash"
    )


def _cached(ctx: Context, key: str) -> DataFrame:
    if not ctx.lake.exists(CACHE_TABLE):
        return ctx.spark.createDataFrame([], EMBEDDING_CACHE)
    return ctx.lake.read(CACHE_TABLE).where(F.col("model") == key)


def _estimate(model: str, key: str, conf: OpenAIConfig, n: int, tokens: int, truncated: int) -> Estimate:
    price = conf.price_per_million_tokens.get(api_model(model))
    usd = None if price is None else tokens * price / 1e6
    return Estimate(model, key, n, tokens, truncated, conf.tokenizer, conf.max_tokens_per_input, price, usd,
                    conf.budget_usd)


def _check_budget(estimate: Estimate) -> None:
    """Refuse before any request when the cost is over the budget or cannot be known."""
    budget = estimate.budget_usd
    if budget < 0:
        return
    if estimate.usd is None:
        raise BudgetExceeded(
            f"{estimate.model}: no price is known for '{api_model(estimate.model)}', so the cost of "
            f"{estimate.tokens:,} tokens cannot be checked against embed.openai.budget_usd={budget:g}; "
            "nothing was sent. Declare its price under embed.openai.price_per_million_tokens in a --conf "
            "file (0 for a free local server) or disable the budget with --set embed.openai.budget_usd=-1"
        )
    if estimate.usd > budget:
        enough = math.ceil(estimate.usd * 1.1 * 100) / 100
        raise BudgetExceeded(
            f"{estimate.model}: estimated cost ${estimate.usd:.4f} for {estimate.tokens:,} tokens of "
            f"{estimate.texts:,} texts exceeds embed.openai.budget_usd={budget:g}; nothing was sent. "
            f"Raise it with --set embed.openai.budget_usd={enough:.2f} (or -1 for no limit)"
        )


def _settings(conf: OpenAIConfig, model: str) -> _Settings:
    key = api_key(conf.api_key_env, "embed.openai.api_key_env")
    return _Settings(
        base_url=conf.base_url, model=api_model(model), api_key_env=conf.api_key_env,
        dimensions=conf.dimensions, timeout_s=conf.timeout_s, max_retries=conf.max_retries,
        backoff_base_s=conf.backoff_base_s, backoff_max_s=conf.backoff_max_s, concurrency=conf.concurrency,
        max_inputs=conf.max_inputs_per_request, max_tokens=conf.max_tokens_per_request,
        max_tokens_per_input=conf.max_tokens_per_input, tokenizer=conf.tokenizer, api_key=key,
    )


def _embed_missing(
    ctx: Context, key: str, settings: _Settings, todo: DataFrame, estimate: Estimate, chunk_texts: int
) -> None:
    """One Spark job and one cache commit per chunk; stop at the first chunk with failures."""
    n_chunks = math.ceil(estimate.texts / chunk_texts)
    rows = math.ceil(estimate.texts / n_chunks)
    tokens = math.ceil(estimate.tokens / n_chunks)
    needed = max(math.ceil(rows / settings.max_inputs), math.ceil(tokens / settings.max_tokens))
    parts = max(1, min(ctx.spark.sparkContext.defaultParallelism, needed))
    bucket = F.pmod(F.xxhash64("text_hash"), F.lit(n_chunks))
    done = 0
    for i in range(n_chunks):
        chunk = todo.where(bucket == i).select("text_hash", "text", "tokens").repartition(parts)
        results = chunk.mapInPandas(_embed_partition(settings), RESULT).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            ok, failed, reason = _write_chunk(ctx, key, results)
        finally:
            release(results)
        done += ok
        log.info("%s: chunk %d/%d embedded %d texts (%d of %d in this run)", key, i + 1, n_chunks, ok, done,
                 estimate.texts)
        if failed:
            raise OpenAIEmbedError(
                f"{estimate.model}: {failed:,} texts of chunk {i + 1}/{n_chunks} could not be embedded "
                f"through {settings.base_url}: {reason}. The {done:,} texts embedded in this run are in "
                f"the cache ({key}); re-run to embed only the {estimate.texts - done:,} still missing"
            )


def _write_chunk(ctx: Context, key: str, results: DataFrame) -> tuple[int, int, str]:
    """Append a chunk's embedded rows as one commit: texts embedded, texts failed, a real failure.

    The counting job fills the cache of ``results`` (the requests run there, once); the write and
    the error lookup read that cache, so no request is sent twice.
    """
    error = F.col("error")
    counts = {r["ok"]: (r["n"], r["error"]) for r in results.groupBy(error.isNull().alias("ok")).agg(
        F.count(F.lit(1)).alias("n"), F.min_by(error, error.startswith(NOT_SENT)).alias("error"),
    ).collect()}
    ok = counts.get(True, (0, None))[0]
    failed, reason = counts.get(False, (0, None))
    if ok:
        ctx.lake.write(
            results.where(F.col("error").isNull()).select(
                F.lit(key).alias("model"), "text_hash", "dim", "embedding", "tokens",
                F.lit(dt.datetime.now(dt.UTC)).cast("timestamp").alias("created_at"),
            ),
            CACHE_TABLE, mode="append",
        )
    return ok, failed, reason or "unknown error"


def _clip_udf(tokenizer: str, limit: int):
    """Token counts, and texts cut to ``limit`` tokens; empty texts become one space (the API refuses "")."""

    @F.pandas_udf(CLIP)
    def clip(text: pd.Series) -> pd.DataFrame:
        values = [t if isinstance(t, str) and t else " " for t in text]
        out, counts, cut = clipper(tokenizer, "embed.openai.tokenizer")(values, limit)
        return pd.DataFrame({"text": out, "tokens": counts, "truncated": cut})

    return clip


def _embed_partition(settings: _Settings) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` function: pack a task's rows, send ``concurrency`` requests at a time.

    A request that fails for good marks its rows with the reason and stops the task from sending
    more; rows not sent are marked too, so the driver caches only what came back.
    """

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        frames = [b for b in batches if len(b)]
        if not frames:
            return
        frame = pd.concat(frames, ignore_index=True)
        hashes, texts = frame["text_hash"].tolist(), frame["text"].tolist()
        tokens = [int(t) for t in frame["tokens"]]
        groups = pack_requests(tokens, settings.max_inputs, settings.max_tokens)
        client = openai_client(settings.base_url, settings.api_key, settings.timeout_s)
        stop = threading.Event()

        def send(bounds: tuple[int, int]) -> tuple[list[np.ndarray] | None, str | None]:
            if stop.is_set():
                return None, NOT_SENT
            try:
                return _embed_with_retries(client, settings, texts[bounds[0]:bounds[1]]), None
            except RequestFailed as exc:
                stop.set()
                return None, str(exc)

        pool = ThreadPoolExecutor(max_workers=min(settings.concurrency, len(groups)))
        try:
            futures = {pool.submit(send, g): g for g in groups}
            for future in as_completed(futures):
                lo, hi = futures[future]
                vectors, error = future.result()
                yield _frame(hashes[lo:hi], tokens[lo:hi], vectors, error)
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    return run


def _frame(hashes: list[str], tokens: list[int], vectors: list[np.ndarray] | None, error: str | None
           ) -> pd.DataFrame:
    n = len(hashes)
    dims = [len(v) for v in vectors] if vectors is not None else [None] * n
    return pd.DataFrame({
        "text_hash": hashes,
        "dim": pd.array(dims, dtype="Int32"),
        "embedding": vectors if vectors is not None else [None] * n,
        "tokens": pd.array(tokens, dtype="Int32"),
        "error": [error] * n,
    })


def _embed_with_retries(client: Any, settings: _Settings, inputs: list[str]) -> list[np.ndarray]:
    """One request's vectors, retrying what may pass on a later attempt; bounded by ``max_retries``."""
    kwargs: dict[str, Any] = {"model": settings.model, "input": inputs}
    if settings.dimensions > 0:
        kwargs["dimensions"] = settings.dimensions
    return call_with_retries(
        lambda: _vectors(client.embeddings.create(**kwargs), len(inputs), settings.dimensions),
        settings.policy, settings.api_key, functools.partial(_hint, settings=settings))


def _vectors(response: Any, n: int, dimensions: int) -> list[np.ndarray]:
    """The vectors in input order, or ``Malformed`` when the answer does not fit the request."""
    try:
        data = sorted(response.data, key=lambda d: d.index)
        if [d.index for d in data] != list(range(n)):
            raise Malformed(f"expected {n} embeddings indexed 0..{n - 1}, got {len(data)}")
        vectors = [np.asarray(d.embedding, dtype=np.float32) for d in data]
    except (AttributeError, TypeError) as exc:
        raise Malformed(f"unexpected answer shape: {exc}") from None
    dims = {v.shape for v in vectors}
    if len(dims) != 1 or vectors[0].ndim != 1 or vectors[0].size == 0:
        raise Malformed(f"embeddings of inconsistent or empty shapes {sorted(dims)}")
    if dimensions > 0 and vectors[0].size != dimensions:
        raise Malformed(f"asked for {dimensions} dimensions, got {vectors[0].size}")
    if not all(np.isfinite(v).all() for v in vectors):
        raise Malformed("embeddings with NaN or infinite values")
    return vectors


def _hint(status: int, settings: _Settings) -> str:
    if status in (400, 413):
        return (f" (requests held at most {settings.max_inputs} inputs and {settings.max_tokens} tokens, "
                f"each input at most {settings.max_tokens_per_input} tokens by tokenizer "
                f"'{settings.tokenizer}'; lower embed.openai.max_tokens_per_input or use the model's "
                "tokenizer if the server counts more)")
    return ""
