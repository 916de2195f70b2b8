"""The openai:<model> embedder through real Spark, real Delta and a fake server over real HTTP."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import traceback

import pytest
from fake_openai import FakeOpenAI, count_tokens, openai_server, vector  # noqa: F401

from beha2vec.embed_openai import (
    BudgetExceeded,
    Estimate,
    OpenAIEmbedError,
    cache_key,
    embed_texts_openai,
    pack_requests,
)

MODEL = "openai:text-embedding-3-small"
KEY = "sk-test-SECRET123"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def conf(ctx, openai_server, monkeypatch):  # noqa: F811
    """Fast settings pointed at the fake server, which accepts only the test key."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    openai_server.api_key = KEY
    c = ctx.config.embed.openai
    c.base_url = openai_server.base_url
    c.tokenizer = "minilm"
    c.timeout_s = 5.0
    c.backoff_base_s = 0.01
    c.backoff_max_s = 2.0
    c.max_retries = 2
    return c


def _texts(spark, texts: list[str]):
    rows = [(hashlib.sha256(t.encode()).hexdigest(), t) for t in texts]
    return spark.createDataFrame(rows, "text_hash string, text string")


def _words(i: int, n: int = 8) -> str:
    """``n`` one-letter words: ``n`` MiniLM tokens and ``n`` fake-server tokens, distinct per ``i``."""
    return " ".join(LETTERS[(i + j) % 26] for j in range(n)) + f" {i}"


def _vectors(result) -> dict[str, list[float]]:
    return {r["text_hash"]: r["embedding"] for r in result.collect()}


def _cache_rows(lake):
    return lake.read("embedding_cache").collect()


def test_pack_requests_by_count_and_tokens():
    assert pack_requests([1] * 10, 3, 100) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert pack_requests([8, 8, 8, 8, 3], 10, 20) == [(0, 2), (2, 5)]
    assert pack_requests([8, 8, 8, 8, 5], 10, 20) == [(0, 2), (2, 4), (4, 5)]
    assert pack_requests([0, 0, 0], 10, 2) == [(0, 2), (2, 3)]
    assert pack_requests([], 3, 10) == []


def test_embeds_in_packed_requests_and_a_second_run_sends_nothing(ctx, conf, openai_server, lake):
    conf.max_inputs_per_request = 3
    texts = [_words(i) for i in range(10)]
    df = _texts(ctx.spark, texts)
    seen: list[Estimate] = []
    result = embed_texts_openai(ctx, MODEL, df, on_estimate=seen.append)
    sent = openai_server.embedding_requests()
    assert len(sent) == 4
    assert all(len(r.inputs) <= 3 for r in sent)
    assert sorted(t for r in sent for t in r.inputs) == sorted(texts)
    assert all(r.authorized and r.body["model"] == "text-embedding-3-small" for r in sent)
    assert all("dimensions" not in r.body for r in sent)
    (estimate,) = seen
    assert (estimate.texts, estimate.truncated, estimate.usd) == (10, 0, pytest.approx(estimate.tokens * 0.02e-6))
    assert estimate.tokens >= sum(count_tokens(t) for t in texts)

    got = _vectors(result)
    for text in texts:
        want = vector(text, "text-embedding-3-small", 16)
        assert got[hashlib.sha256(text.encode()).hexdigest()] == pytest.approx(want, abs=1e-6)
    rows = _cache_rows(lake)
    assert len(rows) == 10
    assert {r["model"] for r in rows} == {"openai:text-embedding-3-small"}
    assert {r["dim"] for r in rows} == {16}

    again = embed_texts_openai(ctx, MODEL, df)
    assert len(openai_server.embedding_requests()) == 4
    assert _vectors(again) == got
    assert len(lake.history("embedding_cache")) == 1


def test_token_limits_split_requests_and_cut_long_inputs(ctx, conf, openai_server, lake):
    conf.max_tokens_per_request = 20
    conf.max_tokens_per_input = 10
    openai_server.max_request_tokens = 20
    openai_server.max_input_tokens = 10
    short = [_words(i) for i in range(6)]
    long = " ".join(["zebra"] * 40)
    embed_texts_openai(ctx, MODEL, _texts(ctx.spark, [*short, long]))
    sent = openai_server.embedding_requests()
    assert all(len(r.inputs) <= 2 for r in sent)
    assert sorted(t for r in sent for t in r.inputs if t in short) == sorted(short)
    (cut,) = [t for r in sent for t in r.inputs if t not in short]
    assert long.startswith(cut) and 0 < count_tokens(cut) <= 10
    tokens = {r["text_hash"]: r["tokens"] for r in _cache_rows(lake)}
    assert tokens[hashlib.sha256(long.encode()).hexdigest()] == 10


def test_unknown_price_needs_a_disabled_budget_and_dimensions_key_the_cache(ctx, conf, openai_server, lake):
    conf.dimensions = 8
    df = _texts(ctx.spark, ["x y z", "y z x"])
    with pytest.raises(BudgetExceeded, match="no price is known for 'my-local-model'"):
        embed_texts_openai(ctx, "openai:my-local-model", df)
    assert openai_server.embedding_requests() == []
    conf.budget_usd = -1
    result = embed_texts_openai(ctx, "openai:my-local-model", df)
    assert {r["dim"] for r in result.collect()} == {8}
    assert [r.body["dimensions"] for r in openai_server.embedding_requests()] == [8]
    assert {r["model"] for r in _cache_rows(lake)} == {"openai:my-local-model@8"}
    assert cache_key("openai:my-local-model", conf) == "openai:my-local-model@8"


def test_budget_stops_before_any_request(ctx, conf, openai_server, lake):
    conf.budget_usd = 1e-9
    with pytest.raises(BudgetExceeded) as err:
        embed_texts_openai(ctx, MODEL, _texts(ctx.spark, [_words(i) for i in range(5)]))
    assert "--set embed.openai.budget_usd=" in str(err.value) and "nothing was sent" in str(err.value)
    assert openai_server.requests == []
    assert not lake.exists("embedding_cache")


@pytest.mark.parametrize("fault", ["429", "500", "slow", "malformed"])
def test_each_fault_is_retried_once(ctx, conf, openai_server, fault):
    conf.timeout_s = 1.0
    openai_server.slow_s = 3.0
    openai_server.fail_next(fault)
    texts = ["alpha beta", "gamma delta"]
    result = embed_texts_openai(ctx, MODEL, _texts(ctx.spark, texts))
    sent = openai_server.embedding_requests()
    assert [r.fault for r in sent] == [fault, "ok"]
    assert sent[0].inputs == sent[1].inputs and sorted(sent[0].inputs) == texts
    assert result.count() == 2
    if fault == "429":
        assert sent[1].at - sent[0].at >= openai_server.retry_after_s * 0.95


def test_permanent_client_errors_are_not_retried(ctx, conf, openai_server):
    openai_server.fail_next("too_long")
    with pytest.raises(OpenAIEmbedError, match="HTTP 400: .*maximum context length.*max_tokens_per_input"):
        embed_texts_openai(ctx, MODEL, _texts(ctx.spark, ["one two", "three four"]))
    assert len(openai_server.embedding_requests()) == 1


def test_a_run_stopped_midway_resumes_with_only_the_missing_texts(ctx, conf, openai_server, lake):
    conf.chunk_texts = 5
    conf.max_retries = 1
    texts = [_words(i) for i in range(10)]
    df = _texts(ctx.spark, texts)
    openai_server.fail_next("ok", "500", "500")
    with pytest.raises(OpenAIEmbedError, match="chunk 2/2 could not be embedded.*HTTP 500.*re-run"):
        embed_texts_openai(ctx, MODEL, df)
    first = openai_server.embedding_requests()
    assert [r.fault for r in first] == ["ok", "500", "500"]
    cached = {r["text_hash"] for r in _cache_rows(lake)}
    assert {hashlib.sha256(t.encode()).hexdigest() for t in first[0].inputs} == cached
    assert 0 < len(cached) < 10

    result = embed_texts_openai(ctx, MODEL, df)
    resumed = openai_server.embedding_requests()[len(first):]
    missing = [t for t in texts if hashlib.sha256(t.encode()).hexdigest() not in cached]
    assert sorted(t for r in resumed for t in r.inputs) == sorted(missing)
    assert result.count() == 10
    assert len(_cache_rows(lake)) == 10
    assert len(lake.history("embedding_cache")) == 2


def test_the_api_key_stays_secret(ctx, conf, openai_server, lake, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    df = _texts(ctx.spark, ["red green", "green blue"])
    openai_server.api_key = "sk-another-key"
    with pytest.raises(OpenAIEmbedError) as err:
        embed_texts_openai(ctx, MODEL, df)
    text = "".join(traceback.format_exception(err.value))
    assert "HTTP 401" in text and "$OPENAI_API_KEY" in text and "<redacted>" in text
    assert KEY not in text and "SECRET123" not in text
    assert len(openai_server.embedding_requests()) == 1

    openai_server.api_key = KEY
    embed_texts_openai(ctx, MODEL, df)
    assert all(r.auth_present and "authorization" not in r.headers for r in openai_server.requests)
    assert "SECRET123" not in caplog.text
    rows = _cache_rows(lake)
    assert len(rows) == 2 and "SECRET123" not in repr(rows)

    monkeypatch.delenv("OPENAI_API_KEY")
    assert embed_texts_openai(ctx, MODEL, df).count() == 2
    with pytest.raises(ValueError, match="environment variable OPENAI_API_KEY .* not set") as err:
        embed_texts_openai(ctx, MODEL, _texts(ctx.spark, ["a new text"]))
    assert "SECRET123" not in str(err.value)


def test_tiktoken_tokenizer_needs_the_package(ctx, conf):
    if importlib.util.find_spec("tiktoken") is not None:
        pytest.skip("tiktoken is installed here")
    conf.tokenizer = "tiktoken:cl100k_base"
    with pytest.raises(ValueError, match="needs the tiktoken package"):
        embed_texts_openai(ctx, MODEL, _texts(ctx.spark, ["a b"]))
