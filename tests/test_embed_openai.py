"""The openai:<model> embedder through real Spark, real Delta and a fake server over real HTTP."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import traceback

import pytest
from fake_openai import FakeOpenAI, count_tokens, vector

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
def server():
    """A fake server per test, so recorded requests and queued faults never leak between tests."""
    with FakeOpenAI().serving() as fake:
        yield fake


@pytest.fixture
def conf(ctx, server, monkeypatch):
    """Fast settings pointed at the fake server, which accepts only the test key."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.api_key = KEY
    c = ctx.config.embed.openai
    c.base_url = server.base_url
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


def test_embeds_in_packed_requests_and_a_second_run_sends_nothing(ctx, conf, server, lake):
    conf.max_inputs_per_request = 3
    texts = [_words(i) for i in range(10)]
    df = _texts(ctx.spark, texts)
    seen: list[Estimate] = []
    result = embed_texts_openai(ctx, MODEL, df, on_estimate=seen.append)
    sent = server.embedding_requests()
    assert len(sent) == 4
    assert all(len(r.inputs) <= 3 for r in sent)
    assert sorted(t for r in sent for t in r.inputs) == sorted(texts)
    assert all(r.authorized and r.body["model"] == "text-embedding-3-small" for r in sent)
    assert all("dimensions" not in r.body for r in sent)
    (estimate,) = seen
    assert (estimate.texts, estimate.truncated) == (10, 0)
    assert estimate.usd == pytest.approx(estimate.tokens * 0.02e-6)
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
    assert len(server.embedding_requests()) == 4
    assert _vectors(again) == got
    assert len(lake.history("embedding_cache")) == 1


def test_token_limits_split_requests_and_cut_long_inputs(ctx, conf, server, lake):
    conf.max_tokens_per_request = 20
    conf.max_tokens_per_input = 10
    server.max_request_tokens = 20
    server.max_input_tokens = 10
    short = [_words(i) for i in range(6)]
    long = " ".join(["zebra"] * 40)
    embed_texts_openai(ctx, MODEL, _texts(ctx.spark, [*short, long]))
    sent = server.embedding_requests()
    assert all(len(r.inputs) <= 2 for r in sent)
    assert sorted(t for r in sent for t in r.inputs if t in short) == sorted(short)
    (cut,) = [t for r in sent for t in r.inputs if t not in short]
    assert long.startswith(cut) and 0 < count_tokens(cut) <= 10
    tokens = {r["text_hash"]: r["tokens"] for r in _cache_rows(lake)}
    assert tokens[hashlib.sha256(long.encode()).hexdigest()] == 10


def test_unknown_price_needs_a_disabled_budget_and_dimensions_key_the_cache(ctx, conf, server, lake):
    conf.dimensions = 8
    df = _texts(ctx.spark, ["x y z", "y z x"])
    with pytest.raises(BudgetExceeded, match="no price is known for 'my-local-model'"):
        embed_texts_openai(ctx, "openai:my-local-model", df)
    assert server.embedding_requests() == []
    conf.budget_usd = -1
    result = embed_texts_openai(ctx, "openai:my-local-model", df)
    assert {r["dim"] for r in result.collect()} == {8}
    assert [r.body["dimensions"] for r in server.embedding_requests()] == [8]
    assert {r["model"] for r in _cache_rows(lake)} == {"openai:my-local-model@8"}
    assert cache_key("openai:my-local-model", conf) == "openai:my-local-model@8"


def test_budget_stops_before_any_request(ctx, conf, server, lake):
    conf.budget_usd = 1e-9
    with pytest.raises(BudgetExceeded) as err:
        embed_texts_openai(ctx, MODEL, _texts(ctx.spark, [_words(i) for i in range(5)]))
    assert "--set embed.openai.budget_usd=" in str(err.value) and "nothing was sent" in str(err.value)
    assert server.requests == []
    assert not lake.exists("embedding_cache")


def test_each_fault_costs_exactly_one_more_attempt(ctx, conf, server):
    conf.timeout_s = 1.0
    conf.max_retries = 4
    server.slow_s = 3.0
    faults = ["429", "500", "slow", "malformed"]
    server.fail_next(*faults)
    texts = ["alpha beta", "gamma delta"]
    result = embed_texts_openai(ctx, MODEL, _texts(ctx.spark, texts))
    sent = server.embedding_requests()
    assert [r.fault for r in sent] == [*faults, "ok"]
    assert all(sorted(r.inputs) == texts for r in sent)
    assert sent[1].at - sent[0].at >= server.retry_after_s * 0.95
    assert sent[3].at - sent[2].at >= conf.timeout_s * 0.95
    assert result.count() == 2


def test_permanent_client_errors_are_not_retried(ctx, conf, server):
    server.fail_next("too_long")
    with pytest.raises(OpenAIEmbedError, match="HTTP 400: .*maximum context length.*max_tokens_per_input"):
        embed_texts_openai(ctx, MODEL, _texts(ctx.spark, ["one two", "three four"]))
    assert len(server.embedding_requests()) == 1


def test_a_run_stopped_midway_resumes_with_only_the_missing_texts(ctx, conf, server, lake):
    conf.chunk_texts = 5
    conf.max_retries = 1
    texts = [_words(i) for i in range(10)]
    df = _texts(ctx.spark, texts)
    server.fail_next("ok", "500", "500")
    with pytest.raises(OpenAIEmbedError, match="chunk 2/2 could not be embedded.*HTTP 500.*re-run"):
        embed_texts_openai(ctx, MODEL, df)
    first = server.embedding_requests()
    assert [r.fault for r in first] == ["ok", "500", "500"]
    cached = {r["text_hash"] for r in _cache_rows(lake)}
    assert {hashlib.sha256(t.encode()).hexdigest() for t in first[0].inputs} == cached
    assert 0 < len(cached) < 10

    result = embed_texts_openai(ctx, MODEL, df)
    resumed = server.embedding_requests()[len(first):]
    missing = [t for t in texts if hashlib.sha256(t.encode()).hexdigest() not in cached]
    assert sorted(t for r in resumed for t in r.inputs) == sorted(missing)
    assert result.count() == 10
    assert len(_cache_rows(lake)) == 10
    assert len(lake.history("embedding_cache")) == 2


def test_a_failed_request_stops_its_task_and_the_rest_of_the_chunk_is_cached(ctx, conf, server, lake):
    conf.max_inputs_per_request = 1
    conf.concurrency = 1
    conf.max_retries = 0
    server.fail_next("500")
    texts = [_words(i) for i in range(6)]
    with pytest.raises(OpenAIEmbedError, match=r"chunk 1/1 could not be embedded.*: HTTP 500: ") as err:
        embed_texts_openai(ctx, MODEL, _texts(ctx.spark, texts))
    sent = server.embedding_requests()
    assert [r.fault for r in sent] == ["500"] + ["ok"] * (len(sent) - 1)
    assert len(sent) < 6, "the failed request's task sent nothing more"
    cached = {r["text_hash"] for r in _cache_rows(lake)}
    assert cached == {hashlib.sha256(r.inputs[0].encode()).hexdigest() for r in sent[1:]}
    assert f"{6 - len(cached)} texts of chunk 1/1" in str(err.value)


def test_the_api_key_stays_secret(ctx, conf, server, lake, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    df = _texts(ctx.spark, ["red green", "green blue"])
    server.api_key = "sk-another-key"
    with pytest.raises(OpenAIEmbedError) as err:
        embed_texts_openai(ctx, MODEL, df)
    text = "".join(traceback.format_exception(err.value))
    assert "HTTP 401" in text and "$OPENAI_API_KEY" in text and "<redacted>" in text
    assert KEY not in text and "SECRET123" not in text
    assert len(server.embedding_requests()) == 1

    server.api_key = KEY
    embed_texts_openai(ctx, MODEL, df)
    assert all(r.auth_present and "authorization" not in r.headers for r in server.requests)
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


def test_fake_chat_completions_follow_the_json_schema(server):
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    schema = {"type": "object", "properties": {"sentence": {"type": "string"}, "keywords": {"type": "array"}}}
    reply = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "Shoppers browsing sports news daily"}],
        response_format={"type": "json_schema", "json_schema": {"name": "cluster", "schema": schema}},
    )
    assert json.loads(reply.choices[0].message.content) == {
        "sentence": "Shoppers browsing sports news daily", "keywords": ["browsing", "daily", "news"]}
    (request,) = server.requests
    assert request.path == "/v1/chat/completions" and request.auth_present
    assert "authorization" not in request.headers
