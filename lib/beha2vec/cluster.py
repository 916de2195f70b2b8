"""Cluster users: a k sweep with Spark MLlib, k chosen by silhouette among stable solutions.

For every model and algorithm (``KMeans``, ``BisectingKMeans``), every k in ``k_min..k_max`` is
fitted once per seed, keeping the lowest-cost of ``n_init`` initialisations. Each fit is scored
by MLlib's ``ClusteringEvaluator`` (silhouette with squared euclidean distance, computed in one pass
from cluster sums, so it scales to any number of users). The stability of a k is the mean adjusted
Rand index between the seeds' assignments of a fixed sample of users: a k whose clusters change
with the seed describes noise, not segments.

The rule for k (stated once, in :func:`choose`): among the k whose stability is at least
``min_stability``, the one whose best seed has the highest silhouette; when no k is that stable,
the highest best-seed silhouette overall (reported as such). That seed's fit gives the users'
clusters, so k is ranked by the clustering it would deliver: a seed stuck in a poor local optimum
is a failed restart, not evidence against its k, and stability already measures how far the seeds
agree. Clusters with fewer users than ``max(min_users, min_share × users)`` are
marked ``is_small``: kept in the tables, left out of interpretation. Above ``sweep_users`` users the
sweep runs on a seeded sample, and each algorithm's chosen fit assigns and is scored on every user
(docs/clustering.md gives the sample silhouette's error bound).

Speed, measured here (docs/clustering.md, docs/benchmarks.md): an MLlib fit is a chain of small
Spark jobs, one per iteration. MLlib checks the input for NaN with an interpreted higher-order
function (slow in Spark 4.2: it builds a SQL conf per array element) and caches the checked copy
itself only when the input is not cached; on a cached input (or one derived from a cached one) the
check re-runs on every iteration. So the fits never get a cached input. Inputs of up to
``PACK_BELOW`` users are packed into one partition and local-checkpointed (materialised once, not
cached), so every fit reads them from memory in one task per job and checks them once: 12× faster
than a cached input for a bisecting fit of 8,415 users × 383 dimensions (8.4 s against 99 s) and
1.8× for KMeans of 2,100 × 64. Larger inputs go to MLlib straight from the table (2.6× faster than
cached at 100,000 users), which keeps one copy per running fit rather than another in memory.
``parallel_fits`` fits run at once from driver threads to keep every core busy.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.ml.clustering import BisectingKMeans, KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from sklearn.metrics import adjusted_rand_score
from tqdm.auto import tqdm

from beha2vec.config import ClusterConfig, ConfigError
from beha2vec.spark import release

log = logging.getLogger(__name__)

ALGORITHMS = ("kmeans", "bisecting")
PACK_BELOW = 50_000


@dataclass
class Fit:
    """One fitted (algorithm, k, seed) and what it scored."""

    algorithm: str
    k: int
    seed: int
    model: object = field(repr=False)
    silhouette: float
    cost: float
    iterations: int
    fit_s: float
    sizes: list[int]
    sample_labels: np.ndarray = field(repr=False)


def validate(conf: ClusterConfig) -> None:
    """Reject settings that cannot produce a clustering, naming the key."""
    problems = [
        (set(conf.algorithms) <= set(ALGORITHMS) and conf.algorithms,
         f"cluster.algorithms must be a non-empty list of {', '.join(ALGORITHMS)}, got {conf.algorithms}"),
        (2 <= conf.k_min <= conf.k_max, f"cluster.k_min and k_max need 2 <= k_min <= k_max, got "
                                         f"{conf.k_min} and {conf.k_max}"),
        (len(conf.seeds) >= 1 and len(set(conf.seeds)) == len(conf.seeds),
         f"cluster.seeds must be distinct and non-empty, got {conf.seeds}"),
        (conf.init_mode in ("k-means||", "random"), f"cluster.init_mode must be k-means|| or random, "
                                                    f"got {conf.init_mode}"),
        (conf.max_iter >= 1 and conf.parallel_fits >= 1 and conf.n_init >= 1,
         "cluster.max_iter, parallel_fits and n_init must be >= 1"),
        (0 <= conf.min_stability <= 1, f"cluster.min_stability must be in [0, 1], got {conf.min_stability}"),
        (0 <= conf.min_share < 1, f"cluster.min_share must be in [0, 1), got {conf.min_share}"),
        (conf.sweep_users >= 0, f"cluster.sweep_users must be >= 0 (0: every user), got {conf.sweep_users}"),
    ]
    for ok, message in problems:
        if not ok:
            raise ConfigError(message)


def estimator(algorithm: str, k: int, seed: int, conf: ClusterConfig):
    """The MLlib estimator of one fit."""
    if algorithm == "kmeans":
        return KMeans(k=k, seed=seed, maxIter=conf.max_iter, tol=conf.tol, initMode=conf.init_mode,
                      initSteps=conf.init_steps)
    return BisectingKMeans(k=k, seed=seed, maxIter=conf.max_iter, minDivisibleClusterSize=1.0)


def restart_seeds(seed: int, n_init: int) -> list[int]:
    """The seeds of one (k, seed)'s initialisations: ``seed`` itself first, so ``n_init`` 1 is the
    plain fit, then ``seed + i·2³²``, which no other 32-bit seed of the sweep can equal."""
    return [seed + i * 2**32 for i in range(n_init)]


def best_of_restarts(data: DataFrame, algorithm: str, k: int, seed: int, conf: ClusterConfig):
    """The lowest-cost model of ``n_init`` initialisations, as scikit-learn's ``n_init`` keeps.

    MLlib's seeds reach worse local optima, and disagree more with each other, than
    scikit-learn's k-means++ (docs/benchmarks.md, clustering); keeping the best of several
    initialisations per (k, seed) is what closes that gap, at ``n_init`` times the fits."""
    models = [estimator(algorithm, k, s, conf).fit(data) for s in restart_seeds(seed, conf.n_init)]
    return min(models, key=lambda m: m.summary.trainingCost)


def fit_one(data: DataFrame, sample: DataFrame, algorithm: str, k: int, seed: int,
            conf: ClusterConfig) -> Fit:
    """Fit, score by silhouette, and label the stability sample (rows ordered by ``user_id``)."""
    started = time.perf_counter()
    fitted = best_of_restarts(data, algorithm, k, seed, conf)
    summary = fitted.summary
    silhouette = ClusteringEvaluator().evaluate(summary.predictions)
    labels = fitted.transform(sample).select("user_id", "prediction").toPandas()
    return Fit(algorithm, k, seed, fitted, float(silhouette), float(summary.trainingCost),
               int(summary.numIter), time.perf_counter() - started, [int(s) for s in summary.clusterSizes],
               labels.sort_values("user_id")["prediction"].to_numpy())


def stability(labels: list[np.ndarray]) -> float:
    """Mean adjusted Rand index over all pairs of seeds' labelings; NaN with one seed."""
    pairs = list(itertools.combinations(labels, 2))
    if not pairs:
        return float("nan")
    return float(np.mean([adjusted_rand_score(a, b) for a, b in pairs]))


def choose(scores: pd.DataFrame, min_stability: float) -> tuple[int, int, bool]:
    """(k, seed, stable) by the module's rule from one algorithm's ``k, seed, silhouette, stability``."""
    by_k = scores.groupby("k").agg(silhouette=("silhouette", "max"), stability=("stability", "first"))
    stable = by_k[by_k["stability"].isna() | (by_k["stability"] >= min_stability)]
    pool = stable if len(stable) else by_k
    k = int(pool["silhouette"].idxmax())
    at_k = scores[scores["k"] == k].sort_values(["silhouette", "seed"], ascending=[False, True])
    return k, int(at_k["seed"].iloc[0]), bool(len(stable))


def small_threshold(n_users: int, conf: ClusterConfig) -> int:
    """Fewest users a cluster needs to be interpreted."""
    return max(conf.min_users, math.ceil(conf.min_share * n_users))


def sweep_rows(data: DataFrame, n_users: int, conf: ClusterConfig) -> DataFrame:
    """The users the k sweep fits: all of them, or about ``sweep_users`` chosen by seeded hash.

    A hash filter rather than a sort, so the sample costs one streaming pass and every fit can
    recompute it from the table instead of caching it.
    """
    if not conf.sweep_users or n_users <= conf.sweep_users:
        return data
    buckets = 1_000_000
    keep = math.ceil(conf.sweep_users / n_users * buckets)
    return data.where(F.pmod(F.xxhash64(F.lit(conf.seeds[0]), "user_id"), F.lit(buckets)) < keep)


def _prepared(data: DataFrame, n_users: int) -> DataFrame:
    """Small inputs packed into one local-checkpointed partition, large ones as they are (module doc)."""
    if n_users <= PACK_BELOW:
        return data.repartition(1).localCheckpoint(eager=True)
    return data


def sweep(vectors: DataFrame, conf: ClusterConfig, name: str) -> tuple[pd.DataFrame, dict[str, Fit]]:
    """Every fit of one model's ``user_vectors`` rows: (scores, chosen fit per algorithm).

    With more than ``sweep_users`` users the sweep runs on a seeded sample of them, and the chosen
    fit of each algorithm then assigns every user and is scored on all of them (a second row with
    ``all_users`` true; fitting again on every user would cost MLlib's per-element NaN check of the
    whole input: unfinished after 20 minutes for one fit of 600,000 users × 144 dimensions).
    ``vectors`` should not be cached by the caller (see the module doc).
    """
    validate(conf)
    n_users = vectors.count()
    data = vectors.select("user_id", array_to_vector("vector").alias("features"))
    swept = sweep_rows(data, n_users, conf)
    n_swept = swept.count() if swept is not data else n_users
    fit_data = _prepared(swept, n_swept)
    sample = (data.orderBy(F.xxhash64(F.lit(conf.seeds[0]), "user_id"), "user_id")
              .limit(conf.stability_sample).coalesce(1).persist(StorageLevel.MEMORY_AND_DISK))
    ks = [k for k in range(conf.k_min, conf.k_max + 1) if k < n_swept]
    if not ks:
        raise ValueError(f"model '{name}': {n_swept} users cannot form {conf.k_min} or more clusters")
    if n_swept < n_users:
        log.info("cluster %s: k sweep on %d of %d users (cluster.sweep_users)", name, n_swept, n_users)
    jobs = list(itertools.product(conf.algorithms, ks, conf.seeds))
    fits: list[Fit] = []
    try:
        with ThreadPoolExecutor(conf.parallel_fits) as pool:
            futures = [pool.submit(fit_one, fit_data, sample, a, k, s, conf) for a, k, s in jobs]
            for future in tqdm(as_completed(futures), total=len(futures), desc=f"cluster {name}",
                               unit="fit", leave=False):
                fits.append(future.result())
        scores = mark_chosen(score_fits(fits, name, n_swept), name, conf)
        by_key = {(f.algorithm, f.k, f.seed): f for f in fits}
        chosen = {r.algorithm: by_key[(r.algorithm, r.k, r.seed)]
                  for r in scores[scores["chosen"]].itertuples()}
        if n_swept < n_users:
            chosen = {a: on_every_user(data, f) for a, f in chosen.items()}
            scores["chosen"] = False
            every = score_fits(list(chosen.values()), name, n_users)
            swept_stability = scores.groupby(["algorithm", "k"])["stability"].first()
            every["stability"] = [swept_stability[(r.algorithm, r.k)] for r in every.itertuples()]
            every["chosen_k"] = every["chosen"] = every["all_users"] = True
            scores = pd.concat([scores, every], ignore_index=True)
    finally:
        release(sample)
    return scores.sort_values(["algorithm", "all_users", "k", "seed"], ignore_index=True), chosen


def on_every_user(data: DataFrame, fit: Fit) -> Fit:
    """``fit`` (from the sample) assigning every user: its silhouette and cluster sizes over all of
    them. The cost is not recomputed (NaN): MLlib reports it only for the data a model was fitted on."""
    started = time.perf_counter()
    predictions = fit.model.transform(data)
    silhouette = ClusteringEvaluator().evaluate(predictions)
    counts = dict(predictions.groupBy("prediction").count().collect())
    sizes = [int(counts.get(i, 0)) for i in range(len(fit.model.clusterCenters()))]
    return replace(fit, silhouette=float(silhouette), cost=float("nan"), sizes=sizes,
                   fit_s=fit.fit_s + time.perf_counter() - started)


def score_fits(fits: list[Fit], name: str, n_users: int) -> pd.DataFrame:
    """One row per fit, with its k's stability (mean ARI between seeds); nothing chosen yet."""
    scores = pd.DataFrame([{"model": name, "algorithm": f.algorithm, "k": f.k, "seed": f.seed,
                            "silhouette": f.silhouette, "cost": f.cost, "iterations": f.iterations,
                            "fit_s": f.fit_s, "n_users": n_users, "smallest": min(f.sizes),
                            "largest": max(f.sizes)} for f in fits])
    scores["stability"] = np.nan
    for (algorithm, k), group in itertools.groupby(sorted(fits, key=lambda f: (f.algorithm, f.k, f.seed)),
                                                   key=lambda f: (f.algorithm, f.k)):
        at = (scores["algorithm"] == algorithm) & (scores["k"] == k)
        scores.loc[at, "stability"] = stability([f.sample_labels for f in group])
    scores["chosen_k"] = scores["chosen"] = scores["all_users"] = False
    return scores


def mark_chosen(scores: pd.DataFrame, name: str, conf: ClusterConfig) -> pd.DataFrame:
    """``scores`` with each algorithm's k and fit chosen by :func:`choose` marked; warns where the
    choice is weak: no k stable enough, or k at the top of a swept range (the silhouette may still
    be rising there, so the chosen k is the range's edge rather than the data's)."""
    for algorithm, group in scores.groupby("algorithm"):
        k, seed, stable = choose(group, conf.min_stability)
        if not stable:
            log.warning("cluster %s/%s: no k reaches stability %.2f; k=%d has the best silhouette",
                        name, algorithm, conf.min_stability, k)
        if k == conf.k_max > conf.k_min:
            log.warning("cluster %s/%s: k=%d is the largest k swept (cluster.k_max); a larger k may "
                        "fit better: widen the range to see", name, algorithm, k)
        at_k = (scores["algorithm"] == algorithm) & (scores["k"] == k)
        scores.loc[at_k, "chosen_k"] = True
        scores.loc[at_k & (scores["seed"] == seed), "chosen"] = True
    return scores


def center_distances(vectors: pd.Series, clusters: pd.Series, centers: np.ndarray) -> pd.Series:
    """Euclidean distance of each vector to its cluster's centre; pure, for the pandas UDF (numpy,
    not Spark's higher-order functions, which Spark 4.2 interprets element by element)."""
    if not len(vectors):
        return pd.Series([], index=vectors.index, dtype=np.float64)
    matrix = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
    return pd.Series(np.linalg.norm(matrix - centers[clusters.to_numpy()], axis=1), index=vectors.index)


def assignments(vectors: DataFrame, name: str, fit: Fit, conf: ClusterConfig) -> DataFrame:
    """Each user's cluster in ``fit``, the euclidean distance to its centre, and ``is_small``."""
    centers = np.asarray(fit.model.clusterCenters(), dtype=np.float64)

    def distance(vector: pd.Series, cluster: pd.Series) -> pd.Series:
        return center_distances(vector, cluster, centers)

    data = vectors.select("user_id", "vector", array_to_vector("vector").alias("features"))
    labelled = fit.model.transform(data).withColumn("cluster", F.col("prediction").cast("int"))
    small = [i for i, size in enumerate(fit.sizes) if size < small_threshold(sum(fit.sizes), conf)]
    return labelled.select(
        "user_id", F.lit(name).alias("model"), F.lit(fit.algorithm).alias("algorithm"),
        F.lit(fit.k).alias("k"), F.lit(fit.seed).alias("seed"), "cluster",
        F.pandas_udf(distance, T.DoubleType())("vector", "cluster").alias("distance"),
        F.col("cluster").isin(small).alias("is_small"))


def selected_model(models: list[str], conf: ClusterConfig, combined: str) -> str:
    """The model whose clustering the later stages use: configured, else ``combined``, else the first."""
    if conf.select_model:
        if conf.select_model not in models:
            raise ConfigError(f"cluster.select_model '{conf.select_model}' was not clustered; "
                              f"clustered models: {', '.join(models)}")
        return conf.select_model
    return combined if combined in models else models[0]
