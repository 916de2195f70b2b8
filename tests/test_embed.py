"""Embedders on real Spark and a real lake: sentence-transformers UDF, TF-IDF, dedup."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F
from test_sessionize import ev

from beha2vec import stages
from beha2vec.config import EmbedConfig, SessionizeConfig
from beha2vec.embed import inference_partitions, kind_of, text_prefix, visit_tokens
from beha2vec.sessionize import sessionize
from beha2vec.tables import EVENTS


@pytest.fixture
def sessions_lake(ctx):
    """Six sessions of three users whose texts repeat: three distinct texts."""
    rows = []
    for user in ("a", "b", "c"):
        for k in range(2):
            t = k * 86_400 * 7  # same weekday and time a week apart: same text
            rows += [ev(user, t, f"/shop/{user}/item", line=1), ev(user, t + 10, "/cart", line=2)]
    events = ctx.spark.createDataFrame(rows, EVENTS)
    ctx.lake.write(sessionize(events, SessionizeConfig()), "sessions")
    return ctx


def test_model_names_choose_embedders():
    assert [kind_of(m) for m in ("minilm", "tfidf", "features", "openai:text-embedding-3-small",
                                 "/models/e5-base", "intfloat/e5-small-v2")] == [
        "sentence-transformers", "tfidf", "features", "openai", "sentence-transformers",
        "sentence-transformers"]
    conf = EmbedConfig()
    assert text_prefix("intfloat/e5-small-v2", conf) == "query: "
    assert text_prefix("minilm", conf) == ""
    assert text_prefix("intfloat/e5-small-v2", EmbedConfig(prefixes={"intfloat/e5-small-v2": "passage: "})) \
        == "passage: "


def test_inference_partitions_fill_every_core_in_whole_waves_of_at_most_one_batch():
    assert inference_partitions(1_853, cores=2, batch_rows=2_048) == 2
    assert inference_partitions(5_000, cores=2, batch_rows=2_048) == 4  # not 3: no half-empty wave
    assert inference_partitions(0, cores=2, batch_rows=2_048) == 2
    assert inference_partitions(668_560, cores=100, batch_rows=2_048) == 400
    assert all(inference_partitions(n, 2, 2_048) * 2_048 >= n for n in (1, 4_096, 4_097, 10**6))


def test_minilm_udf_loads_once_per_worker_dedups_and_matches_direct_encode(sessions_lake):
    ctx = sessions_lake
    ctx.config.embed.arrow_batch_size = 1  # many batches per task: the model must still load once
    (report,) = stages.embed(ctx, ["minilm"])
    assert report["distinct_texts"] == 3 and report["rows_out"] == 6
    assert report["tasks"] == 3  # 4 partitions of one text at most (Arrow batches of 1): not coalesced
    assert set(report["model_loads_per_worker"].values()) == {1}
    rows = ctx.lake.read("session_embeddings").join(ctx.lake.read("sessions"), ["session_id", "user_id"])
    got = {r.sequence_text: np.array(r.embedding) for r in rows.collect()}
    assert len(got) == 3 and all(v.shape == (384,) for v in got.values())

    from sentence_transformers import SentenceTransformer

    from beha2vec.models import model_path

    direct = SentenceTransformer(model_path("minilm"), device="cpu")
    texts = sorted(got)
    expected = direct.encode(texts, normalize_embeddings=True)
    for text, vector in zip(texts, expected, strict=True):
        np.testing.assert_allclose(got[text], vector, atol=1e-5)
    run = ctx.lake.read("runs").where("stage = 'embed'").first()
    assert run.rows_in == run.rows_out == 6


def test_a_model_that_fails_in_its_tasks_leaves_nothing_cached(sessions_lake, tmp_path):
    ctx = sessions_lake
    ctx.spark.catalog.clearCache()
    with pytest.raises(Exception, match="no-model"):  # no such folder: the workers cannot load it
        stages.embed(ctx, [str(tmp_path / "no-model")])
    assert ctx.spark._jsparkSession.sharedState().cacheManager().isEmpty()


def test_tfidf_is_sparse_normalised_and_replaces_only_its_partition(sessions_lake):
    ctx = sessions_lake
    ctx.config.embed.tfidf_min_df = 1
    stages.embed(ctx, ["minilm"])
    stages.embed(ctx, ["tfidf"])
    stages.embed(ctx, ["tfidf"])
    table = ctx.lake.read("session_embeddings")
    counts = {r.model: r["count"] for r in table.groupBy("model").count().collect()}
    assert counts == {"minilm": 6, "tfidf": 6}
    tfidf = table.where(F.col("model") == "tfidf").collect()
    assert all(r.embedding is None and r.dim == 4 for r in tfidf)
    for r in tfidf:
        assert len(r.indices) == len(r.values) == 2
        assert np.isclose(np.linalg.norm(r.values), 1.0, atol=1e-6)


def test_path_segments_add_site_sections(spark):
    df = spark.createDataFrame([("s", "u", ["/shop/a/item", "google.com", "/cart"])],
                               "session_id string, user_id string, domains array<string>")
    (row,) = visit_tokens(df, path_segments=True).collect()
    assert row.tokens == ["/shop/a/item", "google.com", "/cart", "/shop/", "/shop/a/"]
    (plain,) = visit_tokens(df, path_segments=False).collect()
    assert plain.tokens == ["/shop/a/item", "google.com", "/cart"]
