"""Per-user vectors: session embeddings aggregated per user, optionally combined across models.

Aggregation runs in Spark with MLlib's ``Summarizer`` (one pass over the sessions, no per-user
Python): ``mean``, ``std``, ``min`` and ``max`` per coordinate, and ``recency``, a mean weighted by
``2^(-age / half_life)`` where age is how long before the user's latest session a session started.
``median`` needs a per-coordinate quantile and costs a shuffle of one row per coordinate, so it is
opt-in. The chosen aggregations are concatenated in the configured order.

Sparse models (TF-IDF) become dense by a seeded Gaussian random projection to ``sparse_dim``
coordinates, applied per session. Projection is linear, so the mean of projected sessions equals
the projection of the mean; by Johnson-Lindenstrauss, 256 coordinates keep the users' pairwise
distances within about ±20% (ε ≈ 1 / √(k / 8 ln n)) whatever the vocabulary size.

Combination: each model's user vector is L2-normalised and scaled by ``√weight``, then the blocks
are concatenated, so the squared euclidean distance of two combined vectors is the weighted sum of
the models' squared distances (each ``2 - 2·cosine``): no model dominates by its dimension or scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import pandas as pd
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from beha2vec.config import ConfigError, UserVectorsConfig

SUMMARIZED = ("mean", "std", "min", "max")
AGGREGATIONS = (*SUMMARIZED, "recency", "median")
COMBINED = "combined"


def validate(conf: UserVectorsConfig) -> None:
    """Reject settings that cannot produce a vector, naming the key."""
    unknown = sorted(set(conf.aggregations) - set(AGGREGATIONS))
    if unknown or not conf.aggregations:
        raise ConfigError(f"user_vectors.aggregations must be a non-empty list of {', '.join(AGGREGATIONS)}; "
                          f"got {conf.aggregations}")
    if conf.min_sessions < 1:
        raise ConfigError(f"user_vectors.min_sessions must be at least 1, got {conf.min_sessions}")
    if conf.recency_half_life_days <= 0:
        raise ConfigError("user_vectors.recency_half_life_days must be positive")
    if conf.sparse_dim < 2:
        raise ConfigError(f"user_vectors.sparse_dim must be at least 2, got {conf.sparse_dim}")
    if any(w <= 0 for w in conf.combine.values()):
        raise ConfigError(f"user_vectors.combine weights must be positive, got {conf.combine}")
    if COMBINED in conf.combine:
        raise ConfigError(f"user_vectors.combine cannot name '{COMBINED}', the combined model itself")


@lru_cache(maxsize=4)
def projection(dim: int, out_dim: int, seed: int) -> np.ndarray:
    """The ``dim × out_dim`` Gaussian projection, scaled so expected squared lengths are kept."""
    rng = np.random.default_rng([seed, dim, out_dim])
    return (rng.standard_normal((dim, out_dim)) / math.sqrt(out_dim)).astype(np.float32)


def project_sparse(frame: pd.DataFrame, out_dim: int, seed: int) -> pd.Series:
    """Dense ``out_dim`` vectors of sparse rows (``dim``, ``indices``, ``values``); pure, for the UDF."""
    out = []
    for dim, indices, values in zip(frame["dim"], frame["indices"], frame["values"], strict=True):
        indices = np.asarray(indices, dtype=np.int64)
        if int(dim) <= out_dim:
            dense = np.zeros(int(dim), dtype=np.float32)
            np.add.at(dense, indices, np.asarray(values, dtype=np.float32))
        else:
            dense = np.asarray(values, dtype=np.float32) @ projection(int(dim), out_dim, seed)[indices]
        out.append(dense)
    return pd.Series(out)


def dense_sessions(embeddings: DataFrame, out_dim: int, seed: int) -> DataFrame:
    """``session_embeddings`` with every row dense in ``embedding`` (sparse ones projected)."""
    schema = T.StructType([*(f for f in embeddings.schema if f.name != "embedding"),
                           T.StructField("embedding", T.ArrayType(T.FloatType()))])

    def densify(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            sparse = batch["embedding"].isna().to_numpy()
            if sparse.any():
                projected = iter(project_sparse(batch[sparse], out_dim, seed))
                batch = batch.assign(embedding=[next(projected) if s else v
                                                for s, v in zip(sparse, batch["embedding"], strict=True)])
            yield batch[schema.fieldNames()]

    return embeddings.mapInPandas(densify, schema)


def _recency_weight(half_life_days: float):
    latest = F.max("start_ts").over(Window.partitionBy("model", "user_id"))
    age_days = (F.unix_micros(latest) - F.unix_micros("start_ts")) / 86_400e6
    return F.pow(F.lit(0.5), age_days / half_life_days)


def aggregate(sessions: DataFrame, aggregations: list[str], half_life_days: float) -> DataFrame:
    """One row per (model, user_id): the concatenated aggregations and the session count.

    ``sessions`` has ``model, user_id, start_ts, embedding`` (dense).
    """
    rows = sessions.withColumn("features", array_to_vector("embedding"))
    columns = [F.count(F.lit(1)).alias("n_sessions")]
    summarized = [a for a in aggregations if a in SUMMARIZED]
    if summarized:
        columns.append(Summarizer.metrics(*summarized).summary(F.col("features")).alias("summary"))
    if "recency" in aggregations:
        rows = rows.withColumn("weight", _recency_weight(half_life_days))
        columns.append(Summarizer.mean(F.col("features"), F.col("weight")).alias("recency"))
    grouped = rows.groupBy("model", "user_id").agg(*columns)
    if "median" in aggregations:
        grouped = grouped.join(_medians(sessions), ["model", "user_id"])

    def part(name: str):
        if name == "median":
            return F.col("median")
        vector = F.col("recency") if name == "recency" else F.col(f"summary.{name}")
        return vector_to_array(vector, "float32")

    return grouped.select("model", "user_id", "n_sessions",
                          F.concat(*(part(a) for a in aggregations)).alias("vector"))


def _medians(sessions: DataFrame) -> DataFrame:
    """Per-coordinate medians (``percentile_approx``, relative error 1/10,000) per user."""
    exploded = sessions.select("model", "user_id", F.posexplode("embedding").alias("pos", "x"))
    per_coordinate = exploded.groupBy("model", "user_id", "pos").agg(
        F.percentile_approx("x", 0.5, 10_000).alias("x"))
    return per_coordinate.groupBy("model", "user_id").agg(
        F.transform(F.array_sort(F.collect_list(F.struct("pos", "x"))), lambda s: s["x"].cast("float"))
        .alias("median"))


def unit_scaled(vectors: pd.Series, scale: float = 1.0) -> pd.Series:
    """Each vector divided by its euclidean length and times ``scale``; a zero vector stays zero.

    Pure, for the pandas UDF: in numpy rather than in Spark's higher-order functions, which Spark 4.2
    interprets element by element (they made this stage the slowest one at 600,000 users).
    """
    out = []
    for vector in vectors:
        v = np.asarray(vector, dtype=np.float32)
        norm = float(np.linalg.norm(v))
        out.append(v * np.float32(scale / norm) if norm > 0 else v)
    return pd.Series(out, index=vectors.index, dtype=object)


def l2_normalize(vector, scale: float = 1.0):
    """The column's vectors at unit length times ``scale`` (:func:`unit_scaled`)."""
    def normalized(vectors: pd.Series) -> pd.Series:
        return unit_scaled(vectors, scale)

    return F.pandas_udf(normalized, T.ArrayType(T.FloatType()))(vector)


def standardize(vectors: DataFrame) -> DataFrame:
    """Every coordinate of each model scaled to mean 0 and unit variance over its users."""
    stats = (vectors.withColumn("features", array_to_vector("vector"))
             .groupBy("model").agg(Summarizer.metrics("mean", "std").summary(F.col("features")).alias("s"))
             .select("model", vector_to_array("s.mean").alias("mu"), vector_to_array("s.std").alias("sd")))
    scaled = F.transform("vector", lambda x, i: ((x - F.col("mu")[i])
                                                 / F.when(F.col("sd")[i] > 0, F.col("sd")[i]).otherwise(1.0))
                         .cast("float"))
    return (vectors.join(F.broadcast(stats), "model")
            .withColumn("vector", scaled).drop("mu", "sd"))


def combine(vectors: DataFrame, weights: dict[str, float]) -> DataFrame:
    """``combined`` vectors of the users present in every weighted model (see module doc)."""
    blocks = [
        vectors.where(F.col("model") == name).select(
            "user_id",
            l2_normalize(F.col("vector"), math.sqrt(w)).alias(f"v{i}"),
            F.col("n_sessions").alias(f"n{i}"))
        for i, (name, w) in enumerate(sorted(weights.items()))
    ]
    joined = blocks[0]
    for block in blocks[1:]:
        joined = joined.join(block, "user_id")
    n = len(blocks)
    return joined.select(
        "user_id", F.lit(COMBINED).alias("model"),
        F.concat(*(F.col(f"v{i}") for i in range(n))).alias("vector"),
        F.least(*(F.col(f"n{i}") for i in range(n))).alias("n_sessions") if n > 1 else F.col("n0")
        .alias("n_sessions"))


def user_vectors(embeddings: DataFrame, sessions: DataFrame, conf: UserVectorsConfig,
                 models: list[str]) -> tuple[DataFrame, DataFrame]:
    """(``user_vectors`` rows, (model, user_id, reason) of every user left out).

    ``sessions`` gives each session's ``start_ts`` and ``is_bot``; a bot-like session is left out
    unless ``include_bots``, and a user left with fewer than ``min_sessions`` sessions of a model is
    rejected with the reason, never dropped silently.
    """
    validate(conf)
    rows = (embeddings.where(F.col("model").isin(*models))
            .join(sessions.select("session_id", "start_ts", "is_bot"), "session_id"))
    counted = rows.groupBy("model", "user_id").agg(
        F.count(F.lit(1)).alias("n_all"),
        F.sum(F.when(F.coalesce(F.col("is_bot"), F.lit(False)) & F.lit(not conf.include_bots), 0)
              .otherwise(1)).alias("n_kept"))
    rejected = counted.where(F.col("n_kept") < conf.min_sessions).select(
        "model", "user_id",
        F.when(F.col("n_kept") == 0, F.lit("bot-like user: every session is flagged is_bot"))
        .otherwise(F.format_string(f"fewer than {conf.min_sessions} sessions (%d)", F.col("n_kept")))
        .alias("reason"))
    if not conf.include_bots:
        rows = rows.where(~F.coalesce(F.col("is_bot"), F.lit(False)))
    kept = rows.join(rejected.select("model", "user_id"), ["model", "user_id"], "left_anti")
    columns = ("model", "user_id", "start_ts", "dim", "embedding", "indices", "values")
    dense = dense_sessions(kept.select(*columns), conf.sparse_dim, conf.seed)
    vectors = aggregate(dense, conf.aggregations, conf.recency_half_life_days)
    if conf.standardize:
        vectors = standardize(vectors)
    if conf.normalize:
        vectors = vectors.withColumn("vector", l2_normalize(F.col("vector")))
    if conf.combine:
        vectors = vectors.unionByName(combine(vectors, conf.combine))
    return vectors.withColumn("dim", F.size("vector")), rejected
