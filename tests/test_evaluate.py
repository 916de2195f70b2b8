"""Evaluation metrics against hand-computed cases and scikit-learn, and the Spark sample."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from scipy import sparse
from sklearn.metrics import silhouette_score

from beha2vec.config import ConfigError, EvaluateConfig
from beha2vec.evaluate import (
    centroid_retrieval,
    comparison_table,
    evaluate_models,
    identification,
    neighbour_purity,
    sample_sessions,
    silhouette,
    split_by_user,
    true_rank,
)
from beha2vec.tables import SESSION_EMBEDDINGS


def blobs(n_users=3, per_user=24, dim=6, spread=0.3, seed=0):
    """Users as well-separated Gaussian blobs, float32 like the table; labels u0, u1, ..."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_users, dim)) * 10
    labels = np.repeat([f"u{i}" for i in range(n_users)], per_user)
    X = centres[np.repeat(np.arange(n_users), per_user)] + rng.normal(size=(len(labels), dim)) * spread
    return X.astype(np.float32).astype(np.float64), labels


def rows(model, X, labels, *, sparse_form=False, prefix="s"):
    """session_embeddings rows for one model; session ids are shared across models."""
    out = []
    for i, (vec, user) in enumerate(zip(X, labels, strict=True)):
        row = dict.fromkeys(SESSION_EMBEDDINGS.fieldNames())
        row.update(session_id=f"{prefix}{i:04d}", user_id=str(user), model=model, dim=len(vec))
        if sparse_form:
            nz = np.flatnonzero(vec)
            row.update(indices=[int(j) for j in nz], values=[float(vec[j]) for j in nz])
        else:
            row.update(embedding=[float(v) for v in vec])
        out.append(tuple(row[c] for c in SESSION_EMBEDDINGS.fieldNames()))
    return out


def conf(**kw):
    base = dict(min_sessions=4, max_users=10, max_sessions_per_user=100, neighbours=3, holdout_fraction=0.0)
    return EvaluateConfig(**(base | kw))


# --- metrics on known cases ------------------------------------------------------------------


def test_silhouette_matches_the_definition_by_hand():
    X = np.array([[0.0], [1.0], [10.0], [11.0]])
    labels = ["a", "a", "b", "b"]
    # point 0: a = 1 (own cluster), b = mean(10, 11); the others mirror it
    by_hand = np.mean([1 - 1 / 10.5, 1 - 1 / 9.5, 1 - 1 / 9.5, 1 - 1 / 10.5])
    assert silhouette(X, labels, "euclidean") == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="cosine"):
        silhouette(X, labels, "manhattan")


def test_separated_users_are_identified_and_retrieved():
    X, labels = blobs()
    assert silhouette(X, labels, "euclidean") == pytest.approx(silhouette_score(X, labels))
    assert silhouette(X, labels, "euclidean") > 0.8
    assert silhouette(X, labels, "cosine") == pytest.approx(silhouette_score(X, labels, metric="cosine"))
    assert identification(X, labels, seed=1, test_fraction=0.25) == (1.0, 1.0)
    assert centroid_retrieval(X, labels, seed=1, test_fraction=0.25) == {1: 1.0, 5: 1.0}


def test_random_vectors_score_near_chance():
    rng = np.random.default_rng(3)
    labels = np.repeat([f"u{i}" for i in range(10)], 40)
    X = rng.normal(size=(len(labels), 16))
    accuracy, macro_f1 = identification(X, labels, seed=0, test_fraction=0.25)
    recall = centroid_retrieval(X, labels, seed=0, test_fraction=0.25)
    assert accuracy < 0.3 and macro_f1 < 0.3  # chance is 0.1 over 100 held-out sessions
    assert recall[1] < 0.3 and 0.3 < recall[5] < 0.75  # chance 0.1 and 0.5
    assert -0.1 < silhouette(X, labels, "cosine") < 0.02  # noise sits slightly closer to other users


def test_a_fit_stopped_by_lr_max_iter_is_logged_with_the_setting_to_raise(caplog):
    rng = np.random.default_rng(3)
    labels = np.repeat([f"u{i}" for i in range(10)], 40)
    X = rng.normal(size=(len(labels), 16))
    with caplog.at_level(logging.WARNING, logger="beha2vec.evaluate"):
        identification(X, labels, seed=0, test_fraction=0.25)
    assert not caplog.records  # 100 iterations are enough here
    with caplog.at_level(logging.WARNING, logger="beha2vec.evaluate"):
        stopped = identification(X, labels, seed=0, test_fraction=0.25, max_iter=2)
    assert "max_iter=2 before converging; raise evaluate.lr_max_iter" in caplog.text
    assert stopped != identification(X, labels, seed=0, test_fraction=0.25)


def test_split_holds_out_a_share_of_every_user_and_is_seeded():
    labels = np.array(["a"] * 8 + ["b"] * 4 + ["c"] * 2 + ["d"])
    test = split_by_user(labels, seed=7, test_fraction=0.25)
    assert [int(test[labels == u].sum()) for u in "abcd"] == [2, 1, 1, 0]
    assert np.array_equal(test, split_by_user(labels, seed=7, test_fraction=0.25))
    assert any(not np.array_equal(test, split_by_user(labels, seed=s, test_fraction=0.25)) for s in range(5))


def test_retrieval_counts_ties_against_the_right_user():
    # users a and b point one way each; c's sessions are empty vectors, similar to no centroid
    X = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4 + [[0.0, 0.0]] * 4)
    labels = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert centroid_retrieval(X, labels, seed=0, test_fraction=0.25, ks=(1, 2, 3)) == {
        1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


def test_true_rank_counts_ties_against_the_truth():
    scores = np.array([[3.0, 1.0, 2.0], [1.0, 1.0, 1.0], [0.0, 5.0, 5.0]])
    assert true_rank(scores, np.array([0, 1, 2])).tolist() == [1, 3, 2]


def test_neighbour_purity_by_hand():
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert neighbour_purity(X, ["x", "x", "y", "y"], k=1) == 1.0
    # the second neighbour of every point lies across the gap
    assert neighbour_purity(X, ["x", "x", "y", "y"], k=2) == 0.5
    assert neighbour_purity(X, ["x", "y", "x", "y"], k=1) == 0.0
    # k beyond the others is capped: x sees only y's (0), each y sees one x and two y's (2/3)
    assert neighbour_purity(X, ["x", "y", "y", "y"], k=10) == pytest.approx(0.5)


def test_sparse_input_gives_the_dense_numbers():
    rng = np.random.default_rng(5)
    labels = np.repeat(["a", "b", "c", "d"], 20)
    dense = sparse.random(80, 50, density=0.2, random_state=rng).toarray()
    dense += np.repeat(np.eye(4, 50) * 0.5, 20, axis=0)  # a faint per-user signal
    csr = sparse.csr_matrix(dense)
    for metric in ("cosine", "euclidean"):
        assert silhouette(csr, labels, metric) == pytest.approx(silhouette(dense, labels, metric), abs=1e-9)
    assert identification(csr, labels, 2, 0.25) == pytest.approx(identification(dense, labels, 2, 0.25),
                                                                 abs=0.05)
    assert centroid_retrieval(csr, labels, 2, 0.25) == centroid_retrieval(dense, labels, 2, 0.25)
    personas = np.where(np.isin(labels, ["a", "b"]), "p", "q")
    assert neighbour_purity(csr, personas, 5) == pytest.approx(neighbour_purity(dense, personas, 5))


# --- the Spark sample and the whole evaluation -----------------------------------------------


@pytest.fixture(scope="module")
def population(spark):
    """Users u0..u5 with 2, 3, 5, 6, 8, 9 sessions in two models; model m2 misses one of u5's."""
    rng = np.random.default_rng(11)
    labels = np.repeat([f"u{i}" for i in range(6)], [2, 3, 5, 6, 8, 9])
    X = rng.normal(size=(len(labels), 4)).astype(np.float32)
    m1 = rows("m1", X, labels)
    m2 = [r for r in rows("m2", X, labels, sparse_form=True) if r[0] != "s0032"]
    return spark.createDataFrame(m1 + m2, SESSION_EMBEDDINGS)


def keys(df):
    picked = df.select("model", "user_id", "session_id").collect()
    return sorted((r.model, r.user_id, r.session_id) for r in picked)


def test_sample_respects_the_limits_and_is_shared_by_every_model(population):
    c = conf(min_sessions=5, max_users=3, max_sessions_per_user=6)
    got = keys(sample_sessions(population, c))
    per_model = {m: sorted((u, s) for mm, u, s in got if mm == m) for m in ("m1", "m2")}
    assert per_model["m1"] == per_model["m2"]
    users = pd.Series([u for u, _ in per_model["m1"]]).value_counts().to_dict()
    # u5 has 8 sessions shared by both models (s0032 is m1's only), u4 8, u3 6, u2 5
    assert len(users) == 3 and set(users) <= {"u2", "u3", "u4", "u5"}
    assert all(n == min({"u2": 5, "u3": 6, "u4": 8, "u5": 8}[u], 6) for u, n in users.items())
    assert ("u5", "s0032") not in per_model["m1"]


def test_sample_is_deterministic_whatever_the_partitioning(population):
    c = conf(min_sessions=3, max_users=2, max_sessions_per_user=4)
    first = keys(sample_sessions(population, c))
    shuffled = population.repartition(3).orderBy("session_id", ascending=False)
    assert keys(sample_sessions(shuffled, c)) == first
    reseeded = (keys(sample_sessions(population, conf(min_sessions=3, max_users=2, max_sessions_per_user=4,
                                                      seed=s))) for s in range(6))
    assert any(pick != first for pick in reseeded)  # the seed, not the data order, decides


def test_holdout_samples_only_test_users_or_each_users_latest_sessions(spark, population):
    from beha2vec.splits import session_parts, user_part

    c = conf(min_sessions=2, max_users=10, holdout_fraction=0.5)
    users = {r.user_id for r in sample_sessions(population, c).select("user_id").distinct().collect()}
    parts = population.select("user_id", user_part(F.col("user_id"), c.seed, 0.5).alias("part")).distinct()
    test_users = {r.user_id for r in parts.where("part = 'test'").collect()}
    assert users and users <= test_users
    sessions = population.select("session_id", "user_id").distinct().withColumn(
        "start_ts", F.to_timestamp(F.lit("2024-01-01")) + F.make_interval(
            days=F.substring("session_id", 2, 4).cast("int")))
    by_time = conf(min_sessions=2, max_users=10, holdout_fraction=0.5, holdout_by="time")
    picked = {r.session_id for r in sample_sessions(population, by_time, sessions).collect()}
    parts = session_parts(sessions, "time", c.seed, 0.5)
    latest = {r.session_id for r in parts.where("part = 'test'").collect()}
    assert picked and picked <= latest
    with pytest.raises(ValueError, match="needs the sessions table"):
        sample_sessions(population, by_time)


def test_too_few_users_says_how_many_sessions_are_needed(population):
    with pytest.raises(ValueError, match=r"at least 2 users with at least 9 sessions.*min_sessions"):
        evaluate_models(population, conf(min_sessions=9))
    with pytest.raises(ConfigError, match="test_fraction"):
        evaluate_models(population, conf(test_fraction=1.0))
    with pytest.raises(ConfigError, match="lr_max_iter must be at least 1"):
        evaluate_models(population, conf(lr_max_iter=0))


def test_evaluate_models_end_to_end(spark):
    X, labels = blobs(n_users=3, per_user=12, dim=5)
    noise = np.random.default_rng(2).normal(size=X.shape).astype(np.float32)
    df = spark.createDataFrame(rows("blobs", X, labels) + rows("blobs_sparse", X, labels, sparse_form=True)
                               + rows("noise", noise, labels), SESSION_EMBEDDINGS)
    truth = pd.DataFrame({"user_id": ["u0", "u1", "u2", "stranger"], "persona": ["p", "p", "q", "q"]})
    results = evaluate_models(df, conf(), truth)

    assert list(results.columns) == ["model", "metric", "value", "n_users", "n_sessions", "params"]
    assert not results.duplicated(["model", "metric"]).any()
    assert set(results["n_users"]) == {3} and set(results["n_sessions"]) == {36}
    value = results.set_index(["model", "metric"])["value"]
    assert value["blobs", "silhouette_euclidean"] == pytest.approx(silhouette_score(X, labels))
    assert value["blobs", "silhouette_cosine"] == pytest.approx(silhouette_score(X, labels, metric="cosine"))
    assert value["blobs", "id_accuracy"] == 1.0 and value["blobs", "recall_at_1"] == 1.0
    assert value["blobs", "id_accuracy_chance"] == pytest.approx(1 / 3)
    assert value["blobs", "recall_at_5_chance"] == 1.0
    # u0 and u1 share persona p: 23 of the other 35 sessions share a p session's persona, 11 a q one's
    assert value["blobs", "persona_purity_at_3"] == 1.0
    assert value["blobs", "persona_purity_at_3_chance"] == pytest.approx((24 * 23 / 35 + 12 * 11 / 35) / 36)
    # 3 held-out sessions per user: u0's and u1's share persona p with one other user, u2's has q alone
    assert value["blobs", "id_accuracy_persona_chance"] == pytest.approx((3 / 2 + 3 / 2 + 3 / 1) / 9)
    blobs_values = results[results.model == "blobs"].set_index("metric")["value"]
    sparse_values = results[results.model == "blobs_sparse"].set_index("metric")["value"]
    pd.testing.assert_series_equal(blobs_values, sparse_values, atol=1e-9)
    assert value["noise", "silhouette_euclidean"] < 0.1
    params = json.loads(results.set_index(["model", "metric"]).loc[("noise", "recall_at_5"), "params"])
    assert params | {"seed": 42, "k": 5, "test_fraction": 0.25, "n_test": 9} == params
    classifier = json.loads(results.set_index(["model", "metric"]).loc[("noise", "id_accuracy"), "params"])
    assert "max_iter=100" in classifier["classifier"]

    table = comparison_table(results)
    assert list(table.index) == ["blobs", "blobs_sparse", "noise"]
    assert list(table.columns[:3]) == ["silhouette_cosine", "silhouette_euclidean", "id_accuracy"]
    assert table.loc["noise", "id_accuracy_chance"] == pytest.approx(1 / 3)
    assert table.shape == (3, 12)
