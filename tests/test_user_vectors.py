"""User vectors: aggregation, projection, rejection and combination through real Spark."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T

from beha2vec.config import ConfigError, UserVectorsConfig
from beha2vec.tables import SESSION_EMBEDDINGS
from beha2vec.user_vectors import COMBINED, project_sparse, projection, unit_scaled, user_vectors, validate

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
SESSIONS = T.StructType([T.StructField("session_id", T.StringType()),
                         T.StructField("start_ts", T.TimestampType()),
                         T.StructField("is_bot", T.BooleanType())])


def _tables(spark):
    """User a: 3 sessions (days 0, 14, 28); b: 2; c: 1 (too few); d: 2, all bot-like."""
    dense = {  # session -> (user, day, vector)
        "a1": ("a", 0, [1.0, 0.0, 0.0]), "a2": ("a", 14, [0.0, 1.0, 0.0]), "a3": ("a", 28, [0.0, 0.0, 4.0]),
        "b1": ("b", 0, [2.0, 2.0, 0.0]), "b2": ("b", 1, [0.0, 2.0, 2.0]),
        "c1": ("c", 0, [1.0, 1.0, 1.0]),
        "d1": ("d", 0, [5.0, 5.0, 5.0]), "d2": ("d", 0, [5.0, 5.0, 5.0]),
    }
    rows, sessions = [], []
    for sid, (user, day, vector) in dense.items():
        rows.append((sid, user, "dense", 3, vector, None, None, None))
        # the same sessions in a sparse model of 5 dimensions: index 4 holds the first coordinate
        rows.append((sid, user, "sparse", 5, None, [4, 0], [vector[0], vector[1]], None))
        sessions.append((sid, T0 + dt.timedelta(days=day), user == "d"))
    return (spark.createDataFrame(rows, SESSION_EMBEDDINGS), spark.createDataFrame(sessions, SESSIONS))


def _collect(frame) -> dict[tuple[str, str], np.ndarray]:
    return {(r["model"], r["user_id"]): np.asarray(r["vector"], dtype=np.float64) for r in frame.collect()}


def test_projection_is_seeded_and_keeps_small_sparse_vectors_exact():
    assert np.array_equal(projection(1000, 16, 7), projection(1000, 16, 7))
    assert not np.array_equal(projection(1000, 16, 7), projection(1000, 16, 8))
    frame = pd.DataFrame({"dim": [5, 1000], "indices": [[4, 0], [3, 999]],
                          "values": [[2.0, 1.0], [1.0, 2.0]]})
    small, large = project_sparse(frame, 16, 7)
    assert small.tolist() == [1.0, 0.0, 0.0, 0.0, 2.0]
    matrix = projection(1000, 16, 7)
    np.testing.assert_allclose(large, matrix[3] + 2 * matrix[999], rtol=1e-6)


def test_unit_scaled_keeps_zero_vectors_and_float32():
    out = unit_scaled(pd.Series([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0, 0.0]], index=[5, 6, 7]), 2.0)
    assert out.index.tolist() == [5, 6, 7]
    np.testing.assert_allclose(out[5], [1.2, 1.6], rtol=1e-6)
    assert out[6].tolist() == [0.0, 0.0] and out[7].tolist() == [2.0, 0.0, 0.0]
    assert all(v.dtype == np.float32 for v in out)


def test_random_projection_keeps_distances_roughly():
    rng = np.random.default_rng(0)
    dim, out = 5000, 256
    rows = [rng.choice(dim, 40, replace=False) for _ in range(30)]
    frame = pd.DataFrame({"dim": dim, "indices": rows, "values": [rng.random(40) for _ in rows]})
    dense = np.zeros((30, dim))
    for i, (idx, val) in enumerate(zip(frame["indices"], frame["values"], strict=True)):
        dense[i, idx] = val
    projected = np.stack(project_sparse(frame, out, 1).to_list())
    before = np.linalg.norm(dense[:, None] - dense[None], axis=2)[np.triu_indices(30, 1)]
    after = np.linalg.norm(projected[:, None] - projected[None], axis=2)[np.triu_indices(30, 1)]
    assert np.abs(after / before - 1).max() < 0.3


def test_mean_rejects_and_normalisation(spark):
    embeddings, sessions = _tables(spark)
    conf = UserVectorsConfig(min_sessions=2, normalize=False)
    vectors, rejected = user_vectors(embeddings, sessions, conf, ["dense", "sparse"])
    got = _collect(vectors)
    assert sorted(got) == [("dense", "a"), ("dense", "b"), ("sparse", "a"), ("sparse", "b")]
    np.testing.assert_allclose(got[("dense", "a")], [1 / 3, 1 / 3, 4 / 3], rtol=1e-6)
    np.testing.assert_allclose(got[("sparse", "b")], [2.0, 0, 0, 0, 1.0], rtol=1e-6)
    counts = {(r["model"], r["user_id"]): r["n_sessions"] for r in vectors.collect()}
    assert counts[("dense", "a")] == 3 and counts[("dense", "b")] == 2
    reasons = {(r["model"], r["user_id"]): r["reason"] for r in rejected.collect()}
    assert reasons[("dense", "c")] == "fewer than 2 sessions (1)"
    assert reasons[("dense", "d")] == "bot-like user: every session is flagged is_bot"
    assert len(reasons) == 4  # c and d of both models: every user is kept or rejected
    normalised = _collect(user_vectors(embeddings, sessions, UserVectorsConfig(), ["dense"])[0])
    np.testing.assert_allclose(np.linalg.norm(normalised[("dense", "a")]), 1.0, rtol=1e-6)


def test_std_recency_and_median_concatenate_in_order(spark):
    embeddings, sessions = _tables(spark)
    conf = UserVectorsConfig(aggregations=["recency", "std", "median"], normalize=False,
                             recency_half_life_days=14.0)
    vectors = _collect(user_vectors(embeddings, sessions, conf, ["dense"])[0])
    a = vectors[("dense", "a")]
    assert a.shape == (9,)
    weights = np.array([0.25, 0.5, 1.0])  # 28, 14 and 0 days before a's latest session
    sessions_a = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 4.0]])
    np.testing.assert_allclose(a[:3], weights @ sessions_a / weights.sum(), rtol=1e-5)
    np.testing.assert_allclose(a[3:6], sessions_a.std(axis=0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(a[6:], [0, 0, 0], atol=1e-6)


def test_standardize_and_combination(spark):
    embeddings, sessions = _tables(spark)
    conf = UserVectorsConfig(min_sessions=1, include_bots=True, standardize=True, normalize=False)
    got = _collect(user_vectors(embeddings, sessions, conf, ["dense"])[0])
    matrix = np.stack([got[("dense", u)] for u in "abcd"])
    np.testing.assert_allclose(matrix.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(matrix.std(axis=0, ddof=1), 1, rtol=1e-5)

    combined_conf = UserVectorsConfig(min_sessions=1, combine={"dense": 3.0, "sparse": 1.0})
    vectors = _collect(user_vectors(embeddings, sessions, combined_conf, ["dense", "sparse"])[0])
    a, b = vectors[(COMBINED, "a")], vectors[(COMBINED, "b")]
    assert a.shape == (8,)
    np.testing.assert_allclose(np.linalg.norm(a[:3]), math.sqrt(3), rtol=1e-5)  # blocks by model name
    np.testing.assert_allclose(np.linalg.norm(a[3:]), 1.0, rtol=1e-5)
    per_model = {m: np.sum((vectors[(m, "a")] - vectors[(m, "b")]) ** 2) for m in ("dense", "sparse")}
    np.testing.assert_allclose(np.sum((a - b) ** 2), 3 * per_model["dense"] + per_model["sparse"], rtol=1e-5)
    heavier = UserVectorsConfig(min_sessions=1, combine={"dense": 1.0, "sparse": 3.0})
    other = _collect(user_vectors(embeddings, sessions, heavier, ["dense", "sparse"])[0])
    assert not np.allclose(other[(COMBINED, "a")], a)


@pytest.mark.parametrize("change, key", [
    ({"aggregations": ["mode"]}, "aggregations"), ({"min_sessions": 0}, "min_sessions"),
    ({"combine": {"a": 0.0}}, "combine"), ({"combine": {COMBINED: 1.0}}, "combine"),
])
def test_bad_settings_name_the_key(change, key):
    with pytest.raises(ConfigError, match=f"user_vectors.{key}"):
        validate(UserVectorsConfig(**change))
