"""Clustering: the k rule and stability as pure functions, the sweep through real Spark MLlib."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T
from sklearn.metrics import adjusted_rand_score

from beha2vec.cluster import (
    Fit,
    assignments,
    best_of_restarts,
    choose,
    estimator,
    mark_chosen,
    restart_seeds,
    score_fits,
    selected_model,
    small_threshold,
    stability,
    sweep,
    validate,
)
from beha2vec.config import ClusterConfig, ConfigError
from beha2vec.evaluate import persona_recovery

VECTORS = T.StructType([T.StructField("user_id", T.StringType()),
                        T.StructField("vector", T.ArrayType(T.FloatType()))])


def test_choose_prefers_the_best_fit_of_a_stable_k():
    scores = pd.DataFrame({
        "k": [3, 3, 4, 4, 5, 5, 6, 6],
        "seed": [1, 2, 1, 2, 1, 2, 1, 2],
        "silhouette": [0.50, 0.52, 0.70, 0.66, 0.40, 0.62, 0.58, 0.59],
        "stability": [0.9, 0.9, 0.3, 0.3, 0.8, 0.8, 0.8, 0.8],
    })
    # k=4 has the best fit but is unstable; k=6 has the best mean, k=5 the best fit among stable k
    assert choose(scores, 0.6) == (5, 2, True)
    assert choose(scores, 0.0) == (4, 1, True)
    assert choose(scores, 0.95) == (4, 1, False)  # nothing stable: the best fit overall


def test_a_k_at_the_top_of_the_range_is_reported(caplog):
    labels = np.array([0, 0, 1, 1, 2, 2])

    def scores(*silhouettes: float) -> pd.DataFrame:
        """A sweep of k = 2, 3, ... with one seed each and these silhouettes."""
        return score_fits([Fit("kmeans", k, 1, None, s, 1.0, 3, 0.1, [2] * k, labels)
                           for k, s in enumerate(silhouettes, start=2)], "m", 6)

    conf = ClusterConfig(k_min=2, k_max=4, seeds=[1])
    with caplog.at_level(logging.WARNING, logger="beha2vec.cluster"):
        marked = mark_chosen(scores(0.3, 0.4, 0.5), "m", conf)
    assert marked.loc[marked["chosen"], "k"].tolist() == [4]
    assert "k=4 is the largest k swept (cluster.k_max)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="beha2vec.cluster"):
        mark_chosen(scores(0.3, 0.6, 0.5), "m", conf)
        mark_chosen(scores(0.3), "m", ClusterConfig(k_min=2, k_max=2, seeds=[1]))  # k fixed by the user
    assert "largest k" not in caplog.text


def test_stability_is_label_permutation_invariant():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert stability([a, (a + 1) % 3, a]) == pytest.approx(1.0)
    assert np.isnan(stability([a]))
    assert stability([a, np.array([0, 1, 2, 0, 1, 2])]) < 0.1


def test_small_threshold_and_selection():
    conf = ClusterConfig(min_users=5, min_share=0.01)
    assert small_threshold(100, conf) == 5 and small_threshold(10_000, conf) == 100
    assert selected_model(["minilm", "combined"], conf, "combined") == "combined"
    assert selected_model(["minilm", "tfidf"], conf, "combined") == "minilm"
    with pytest.raises(ConfigError, match="cluster.select_model 'x'"):
        selected_model(["minilm"], ClusterConfig(select_model="x"), "combined")
    with pytest.raises(ConfigError, match="cluster.k_min"):
        validate(ClusterConfig(k_min=5, k_max=4))


def blobs(seed: int = 0) -> tuple[list[tuple[str, list[float]]], dict[str, int]]:
    """Three clear groups of 30, 25 and 8 users in 4 dimensions."""
    rng = np.random.default_rng(seed)
    centres = np.array([[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 9, 9]], dtype=float)
    rows, truth = [], {}
    for group, size in enumerate((30, 25, 8)):
        for i in range(size):
            user = f"g{group}u{i:02d}"
            rows.append((user, (centres[group] + rng.normal(0, 0.5, 4)).astype(np.float32).tolist()))
            truth[user] = group
    return rows, truth


def test_sweep_finds_the_planted_groups_and_marks_the_small_one(spark):
    rows, truth = blobs()
    vectors = spark.createDataFrame(rows, VECTORS)
    conf = ClusterConfig(k_min=2, k_max=5, seeds=[1, 2], min_users=10, parallel_fits=4, max_iter=20)
    scores, chosen = sweep(vectors, conf, "m")
    assert len(scores) == 2 * 4 * 2
    assert set(scores.columns) >= {"silhouette", "stability", "cost", "iterations", "smallest", "largest"}
    assert scores["n_users"].eq(63).all()
    for algorithm, fit in chosen.items():
        assert fit.k == 3, algorithm
        at_k = scores[(scores["algorithm"] == algorithm) & (scores["k"] == 3)]
        assert at_k["chosen_k"].all() and at_k["chosen"].sum() == 1
        assert at_k["stability"].iloc[0] == pytest.approx(1.0)

    fit = chosen["kmeans"]
    labelled = assignments(vectors, "m", fit, conf).toPandas().set_index("user_id")
    assert adjusted_rand_score([truth[u] for u in labelled.index], labelled["cluster"]) == 1.0
    small = labelled.loc[[u for u in labelled.index if u.startswith("g2")], "is_small"]
    assert small.all() and labelled["is_small"].sum() == 8
    centres = np.asarray(fit.model.clusterCenters())
    points = np.asarray([r[1] for r in sorted(rows)], dtype=np.float64)
    expected = np.linalg.norm(points - centres[labelled.sort_index()["cluster"].to_numpy()], axis=1)
    np.testing.assert_allclose(labelled.sort_index()["distance"], expected, rtol=1e-5)


def test_persona_recovery_from_counts_in_spark(spark):
    rows, truth = blobs()
    vectors = spark.createDataFrame(rows, VECTORS)
    conf = ClusterConfig(k_min=3, k_max=3, seeds=[1], algorithms=["kmeans"], min_users=1)
    _, chosen = sweep(vectors, conf, "m")
    clusters = assignments(vectors, "m", chosen["kmeans"], conf)
    truth_df = spark.createDataFrame(pd.DataFrame({"user_id": list(truth), "persona": list(truth.values())}))
    result = persona_recovery(clusters, truth_df).set_index("metric")
    assert result.loc["persona_ari", "value"] == pytest.approx(1.0)
    assert result.loc["persona_nmi", "value"] == pytest.approx(1.0)
    assert result.loc["persona_ari", "model"] == "m/kmeans" and result.loc["persona_ari", "n_users"] == 63


def test_large_inputs_go_to_mllib_from_the_table_with_the_same_result(spark, monkeypatch):
    import beha2vec.cluster as cluster

    rows, _ = blobs()
    vectors = spark.createDataFrame(rows, VECTORS)
    conf = ClusterConfig(k_min=3, k_max=3, seeds=[1], algorithms=["kmeans"], min_users=1)
    packed, _ = sweep(vectors, conf, "m")
    monkeypatch.setattr(cluster, "PACK_BELOW", 0)
    unpacked, _ = sweep(vectors, conf, "m")
    columns = ["k", "seed", "silhouette", "cost", "smallest", "largest"]
    pd.testing.assert_frame_equal(packed[columns], unpacked[columns])


def test_small_inputs_reach_mllib_packed_and_not_cached(spark):
    """MLlib re-runs its slow NaN check on every iteration of a cached input (cluster module doc)."""
    from pyspark import StorageLevel
    from pyspark.ml.functions import array_to_vector

    import beha2vec.cluster as cluster

    rows, _ = blobs()
    data = spark.createDataFrame(rows, VECTORS).repartition(3).select(
        "user_id", array_to_vector("vector").alias("features"))
    prepared = cluster._prepared(data, len(rows))
    assert prepared.rdd.getNumPartitions() == 1 and prepared.count() == len(rows)
    assert prepared.storageLevel == StorageLevel.NONE


def test_sweep_on_a_sample_scores_the_chosen_fit_on_every_user(spark):
    rows, truth = blobs()
    vectors = spark.createDataFrame(rows, VECTORS)
    conf = ClusterConfig(k_min=2, k_max=4, seeds=[1, 2], min_users=10, sweep_users=40)
    scores, chosen = sweep(vectors, conf, "m")
    swept, every = scores[~scores["all_users"]], scores[scores["all_users"]]
    assert len(swept) == 2 * 3 * 2 and swept["n_users"].nunique() == 1
    assert 25 <= swept["n_users"].iloc[0] < 63  # the seeded sample, about sweep_users
    assert not swept["chosen"].any() and swept["chosen_k"].sum() == 2 * 2
    assert sorted(every["algorithm"]) == ["bisecting", "kmeans"]
    assert every["n_users"].eq(63).all() and every["chosen"].all() and every["k"].eq(3).all()
    assert every["stability"].notna().all()
    for algorithm, fit in chosen.items():
        assert sum(fit.sizes) == 63, algorithm
        labelled = assignments(vectors, "m", fit, conf).toPandas()
        assert adjusted_rand_score(labelled["user_id"].map(truth), labelled["cluster"]) == 1.0
    again, _ = sweep(vectors, conf, "m")
    assert again["n_users"].tolist() == scores["n_users"].tolist()  # the sample is seeded, not random
    with pytest.raises(ConfigError, match="cluster.sweep_users"):
        validate(ClusterConfig(sweep_users=-1))


def test_restarts_keep_the_lowest_cost_of_their_initialisations(spark):
    from pyspark.ml.functions import array_to_vector

    assert restart_seeds(5, 1) == [5]
    seeds = restart_seeds(5, 3)
    assert seeds[0] == 5 and len(set(seeds)) == 3 and min(seeds[1:]) >= 2**32
    rng = np.random.default_rng(0)  # structureless points: every initialisation ends somewhere else
    rows = [(f"u{i:03d}", rng.uniform(0, 1, 4).astype(np.float32).tolist()) for i in range(80)]
    data = spark.createDataFrame(rows, VECTORS).select("user_id", array_to_vector("vector").alias("features"))
    conf = ClusterConfig(n_init=3, max_iter=5, init_mode="random")
    for algorithm in ("kmeans", "bisecting"):
        costs = [estimator(algorithm, 6, s, conf).fit(data).summary.trainingCost for s in seeds]
        assert int(np.argmin(costs)) != 0, (algorithm, costs)  # or keeping the first would pass too
        assert best_of_restarts(data, algorithm, 6, 5, conf).summary.trainingCost == min(costs), algorithm
        plain = best_of_restarts(data, algorithm, 6, 5, replace(conf, n_init=1))
        assert plain.summary.trainingCost == costs[0], algorithm
    with pytest.raises(ConfigError, match="n_init"):
        validate(ClusterConfig(n_init=0))
