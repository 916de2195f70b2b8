"""Evaluate: how well each embedding model separates and identifies users, on identical data.

Every model is scored on the same sessions. A fixed-seed sample is drawn in Spark from the sessions
that *every* model embedded: users with at least ``min_sessions`` such sessions, the first
``max_users`` of them ranked by a seeded hash of ``user_id``, and for each the first
``max_sessions_per_user`` sessions ranked by a seeded hash of ``session_id``. With
``holdout_fraction`` > 0 only held-out sessions are sampled (``splits``): by default those of test
users, whom no trained model (the sequence encoder) has seen, so every model is scored on unseen
users; with ``holdout_by: time``, each user's latest sessions. Only that bounded
sample reaches the driver; the metrics are plain numpy/scikit-learn functions, each usable alone.

Geometry, stated once:

* silhouette by user, on the raw vectors: with cosine distance (1 - cosine similarity, so a row's
  length does not matter) and with euclidean distance (length and column scale do matter);
* user identification: multinomial logistic regression over columns scaled to unit variance on the
  train split (dense columns are also centred; sparse ones are not, which keeps them sparse and
  leaves the optimum unchanged because the intercept is not penalised);
* retrieval and neighbours: cosine similarity of L2-normalised rows. A zero vector is similar to
  nothing, and ties count against the right answer, so an empty vector never scores by luck.

The train/held-out split is per user (see :func:`split_by_user`), identical for every model because
rows are ordered by (user_id, session_id) before scoring.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from scipy import sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, silhouette_score
from sklearn.preprocessing import StandardScaler, normalize

from beha2vec.config import ConfigError, EvaluateConfig
from beha2vec.splits import session_parts, user_part

log = logging.getLogger(__name__)

Matrix = np.ndarray | sparse.csr_matrix

RETRIEVAL_KS = (1, 5)
NEIGHBOUR_BLOCK = 1024  # rows of the similarity matrix held at once
COLUMNS = ["model", "metric", "value", "n_users", "n_sessions", "params"]
METRIC_ORDER = [
    "silhouette_cosine", "silhouette_euclidean",
    "id_accuracy", "id_accuracy_chance", "id_macro_f1",
    *[f"recall_at_{k}{suffix}" for k in RETRIEVAL_KS for suffix in ("", "_chance")],
]


def validate(conf: EvaluateConfig) -> None:
    """Reject settings that would leave a user without a train or a held-out session."""
    problems = [
        (conf.min_sessions >= 2, f"evaluate.min_sessions must be at least 2, got {conf.min_sessions}"),
        (conf.max_sessions_per_user >= 2,
         f"evaluate.max_sessions_per_user must be at least 2, got {conf.max_sessions_per_user}"),
        (conf.max_users >= 2, f"evaluate.max_users must be at least 2, got {conf.max_users}"),
        (0 < conf.test_fraction < 1,
         f"evaluate.test_fraction must be between 0 and 1 (exclusive), got {conf.test_fraction}"),
        (conf.neighbours >= 1, f"evaluate.neighbours must be at least 1, got {conf.neighbours}"),
        (conf.lr_max_iter >= 1, f"evaluate.lr_max_iter must be at least 1, got {conf.lr_max_iter}"),
    ]
    for ok, message in problems:
        if not ok:
            raise ConfigError(message)


def _seeded_hash(seed: int, column: str) -> Column:
    return F.xxhash64(F.lit(seed), F.col(column))


def sample_sessions(embeddings: DataFrame, conf: EvaluateConfig,
                    sessions: DataFrame | None = None) -> DataFrame:
    """The ``session_embeddings`` rows of a fixed-seed sample of sessions shared by every model.

    Ranking by a seeded hash (ties broken by the id) makes the choice independent of partitioning
    and input order; keeping only sessions that every model embedded makes the comparison fair.
    """
    validate(conf)
    usable = embeddings.where(
        F.col("session_id").isNotNull() & F.col("user_id").isNotNull() & F.col("model").isNotNull()
        & (F.col("embedding").isNotNull() | F.col("indices").isNotNull())
    )
    if conf.holdout_fraction > 0 and conf.holdout_by == "users":
        usable = usable.where(user_part(F.col("user_id"), conf.seed, conf.holdout_fraction) == "test")
    elif conf.holdout_fraction > 0:
        if sessions is None:
            raise ValueError("evaluate.holdout_by=time needs the sessions table (their start times)")
        parts = session_parts(sessions, conf.holdout_by, conf.seed, conf.holdout_fraction)
        test = parts.where(F.col("part") == "test")
        usable = usable.join(test.select("session_id"), "session_id", "left_semi")
    n_models = usable.agg(F.countDistinct("model").alias("n_models"))
    common = (
        usable.groupBy("session_id", "user_id").agg(F.countDistinct("model").alias("n"))
        .crossJoin(F.broadcast(n_models))
        .where(F.col("n") == F.col("n_models"))
        .select("session_id", "user_id")
    )
    users = (
        common.groupBy("user_id").agg(F.count(F.lit(1)).alias("sessions"))
        .where(F.col("sessions") >= conf.min_sessions)
        .orderBy(_seeded_hash(conf.seed, "user_id"), "user_id")
        .limit(conf.max_users)
        .select("user_id")
    )
    by_hash = Window.partitionBy("user_id").orderBy(_seeded_hash(conf.seed, "session_id"), "session_id")
    chosen = (
        common.join(F.broadcast(users), "user_id")
        .withColumn("rank", F.row_number().over(by_hash))
        .where(F.col("rank") <= conf.max_sessions_per_user)
        .select("session_id", "user_id")
    )
    return usable.join(F.broadcast(chosen), ["session_id", "user_id"], "left_semi")


def vectors(rows: pd.DataFrame, model: str) -> Matrix:
    """One model's rows as float64: dense from ``embedding``, CSR from ``indices``/``values``."""
    dense = rows["embedding"].notna()
    if dense.all():
        lengths = set(rows["embedding"].map(len))
        if len(lengths) != 1:
            raise ValueError(f"model '{model}': dense vectors of different lengths {sorted(lengths)}")
        return np.stack(rows["embedding"].to_list()).astype(np.float64)
    if dense.any():
        raise ValueError(f"model '{model}': some rows are dense and some sparse; expected one kind")
    dims = set(rows["dim"].dropna().astype(int))
    if len(dims) != 1:
        raise ValueError(f"model '{model}': sparse rows need one `dim` (vector size), found {sorted(dims)}")
    lengths = rows["indices"].map(len).to_numpy()
    if not np.array_equal(lengths, rows["values"].map(len).to_numpy()):
        raise ValueError(f"model '{model}': `indices` and `values` differ in length")
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate([np.asarray(i, dtype=np.int64) for i in rows["indices"]])
    values = np.concatenate([np.asarray(v, dtype=np.float64) for v in rows["values"]])
    matrix = sparse.csr_matrix((values, indices, indptr), shape=(len(rows), dims.pop()))
    matrix.sum_duplicates()
    return matrix


def dense(m: Any) -> np.ndarray:
    return m.toarray() if sparse.issparse(m) else np.asarray(m)


def split_by_user(labels: Sequence | np.ndarray, seed: int, test_fraction: float) -> np.ndarray:
    """Held-out mask: for each user a seeded shuffle of their sessions, ``round(n * test_fraction)``
    held out but at least one and never all, so every user is both learned and tested."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for user in np.unique(labels):
        rows = np.flatnonzero(labels == user)
        n_test = min(max(1, round(len(rows) * test_fraction)), len(rows) - 1)
        test[rng.permutation(rows)[:n_test]] = True
    return test


def silhouette(X: Matrix, labels: Sequence | np.ndarray, metric: str) -> float:
    """Mean silhouette of sessions grouped by user (scikit-learn's definition) on the raw vectors."""
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"silhouette metric must be 'cosine' or 'euclidean', got '{metric}'")
    return float(silhouette_score(X, np.asarray(labels), metric=metric))


def identification(X: Matrix, labels: Sequence | np.ndarray, seed: int, test_fraction: float,
                   quiet: bool = False, max_iter: int = EvaluateConfig.lr_max_iter) -> tuple[float, float]:
    """Accuracy and macro-F1 of predicting the user of held-out sessions with logistic regression."""
    labels = np.asarray(labels)
    test = split_by_user(labels, seed, test_fraction)
    train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    scaler = StandardScaler(with_mean=not sparse.issparse(X)).fit(X[train_rows])
    classifier = LogisticRegression(max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(scaler.transform(X[train_rows]), labels[train_rows])
    if classifier.n_iter_.max() >= max_iter:
        (log.debug if quiet else log.warning)(
            "logistic regression stopped at max_iter=%d before converging; "
            "raise evaluate.lr_max_iter for a converged fit", max_iter)
    predicted = classifier.predict(scaler.transform(X[test_rows]))
    truth = labels[test_rows]
    macro_f1 = f1_score(truth, predicted, labels=np.unique(truth), average="macro", zero_division=0)
    return float(np.mean(predicted == truth)), float(macro_f1)


def centroid_retrieval(X: Matrix, labels: Sequence | np.ndarray, seed: int, test_fraction: float,
                       ks: Sequence[int] = RETRIEVAL_KS) -> dict[int, float]:
    """Recall@k of held-out sessions against users' train centroids (mean unit vector), by cosine.

    A session is found at k when fewer than k other users' centroids are at least as similar as its
    own user's centroid.
    """
    users, y = np.unique(np.asarray(labels), return_inverse=True)
    test = split_by_user(labels, seed, test_fraction)
    train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    unit = normalize(X)
    membership = sparse.csr_matrix(
        (np.ones(len(train_rows)), (y[train_rows], np.arange(len(train_rows)))),
        shape=(len(users), len(train_rows)),
    )
    centroids = normalize(membership @ unit[train_rows])
    rank = true_rank(dense(unit[test_rows] @ centroids.T), y[test_rows])
    return {k: float(np.mean(rank <= k)) for k in ks}


def true_rank(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1 + how many other candidates score at least as high as the true one (``scores[row, truth]``):
    ties count against the right answer, so an empty or constant row never ranks first by luck."""
    own = scores[np.arange(len(truth)), truth]
    return (scores >= own[:, None]).sum(axis=1)


def neighbour_purity(X: Matrix, personas: Sequence | np.ndarray, k: int) -> float:
    """Mean share of each session's k nearest other sessions (cosine) that have its persona."""
    n = X.shape[0]
    if n < 2:
        raise ValueError("neighbour purity needs at least 2 sessions")
    k = min(k, n - 1)
    _, group = np.unique(np.asarray(personas), return_inverse=True)
    unit = normalize(X)
    shares = []
    for start in range(0, n, NEIGHBOUR_BLOCK):
        stop = min(start + NEIGHBOUR_BLOCK, n)
        sims = dense(unit[start:stop] @ unit.T)
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        shares.append((group[nearest] == group[start:stop, None]).mean(axis=1))
    return float(np.concatenate(shares).mean())


def _purity_chance(personas: np.ndarray) -> float:
    """Expected purity of random neighbours: the share of the other sessions with one's persona."""
    _, group, counts = np.unique(personas, return_inverse=True, return_counts=True)
    return float(np.mean((counts[group] - 1) / (len(personas) - 1)))


def _score_model(model: str, X: Matrix, users: np.ndarray, personas: np.ndarray | None,
                 conf: EvaluateConfig) -> list[dict[str, Any]]:
    """Every metric of one model, with the settings that produced it."""
    size = (len(np.unique(users)), len(users))
    sample = {"seed": conf.seed, "min_sessions": conf.min_sessions, "max_users": conf.max_users,
              "max_sessions_per_user": conf.max_sessions_per_user}
    held_out = split_by_user(users, conf.seed, conf.test_fraction)
    split = sample | {"test_fraction": conf.test_fraction, "split": "per user, seeded shuffle",
                      "n_test": int(held_out.sum())}
    rows: list[dict[str, Any]] = []

    def add(metric: str, value: float, params: dict[str, Any], counts: tuple[int, int] = size) -> None:
        rows.append({"model": model, "metric": metric, "value": float(value), "n_users": counts[0],
                     "n_sessions": counts[1], "params": json.dumps(params, sort_keys=True)})

    log.info("evaluate %s: %d users, %d sessions, %d dimensions", model, *size, X.shape[1])
    for metric in ("cosine", "euclidean"):
        add(f"silhouette_{metric}", silhouette(X, users, metric), sample | {"distance": metric})
    accuracy, macro_f1 = identification(X, users, conf.seed, conf.test_fraction, max_iter=conf.lr_max_iter)
    classifier = split | {"classifier": f"logistic regression (lbfgs, C=1, max_iter={conf.lr_max_iter}) "
                                        "on unit-variance columns"}
    add("id_accuracy", accuracy, classifier)
    add("id_accuracy_chance", 1 / size[0], classifier | {"baseline": "1 / n_users"})
    add("id_macro_f1", macro_f1, classifier)
    for k, recall in centroid_retrieval(X, users, conf.seed, conf.test_fraction, RETRIEVAL_KS).items():
        retrieval = split | {"k": k, "similarity": "cosine to the L2-normalised mean of train sessions"}
        add(f"recall_at_{k}", recall, retrieval)
        add(f"recall_at_{k}_chance", min(k, size[0]) / size[0], retrieval | {"baseline": "k / n_users"})
    if personas is not None:
        known = np.flatnonzero(pd.notna(personas))
        labelled = personas[known].astype(str)
        k = min(conf.neighbours, len(known) - 1)
        purity = sample | {"k": k, "similarity": "cosine", "n_personas": len(np.unique(labelled))}
        counts = (len(np.unique(users[known])), len(known))
        name = f"persona_purity_at_{conf.neighbours}"
        add(name, neighbour_purity(X[known], labelled, k), purity, counts)
        add(f"{name}_chance", _purity_chance(labelled),
            purity | {"baseline": "share of other sessions with the same persona"}, counts)
        add("id_accuracy_persona_chance", persona_chance(users[known], labelled, held_out[known]),
            classifier | {"baseline": "1 / users of the held-out session's persona"}, counts)
    return rows


def persona_chance(users: np.ndarray, personas: np.ndarray, test: np.ndarray) -> float:
    """Identification accuracy of knowing each held-out session's persona and nothing else
    (a uniform guess among the users of that persona): what a model that captures behaviour types
    but no person scores, so the distance above it is what a model knows of the person."""
    frame = pd.DataFrame({"user": users, "persona": personas})
    users_per_persona = frame.drop_duplicates("user")["persona"].value_counts()
    return float(np.mean(1 / frame.loc[test, "persona"].map(users_per_persona).to_numpy()))


def _personas(users: pd.Series, truth: pd.DataFrame) -> np.ndarray:
    """Each sampled session's persona from ``truth`` (user_id, persona); NaN where unknown."""
    missing = {"user_id", "persona"} - set(truth.columns)
    if missing:
        raise ValueError(f"truth needs columns user_id and persona; missing {sorted(missing)}")
    lookup = truth.assign(user_id=truth["user_id"].astype(str)).drop_duplicates("user_id")
    personas = users.astype(str).map(lookup.set_index("user_id")["persona"]).to_numpy(dtype=object)
    if not pd.notna(personas).any():
        raise ValueError(f"the truth file names none of the {users.nunique()} sampled users; "
                         "is evaluate.truth_users_file from this data set?")
    return personas


def evaluate_models(embeddings: DataFrame, conf: EvaluateConfig, truth: pd.DataFrame | None = None,
                    sessions: DataFrame | None = None) -> pd.DataFrame:
    """One row per (model, metric) over the shared sample: ``model, metric, value, n_users,
    n_sessions, params``; persona purity rows only when ``truth`` (user_id, persona) is given.
    ``sessions`` (with ``start_ts``) is needed only for ``holdout_by: time``."""
    sample = (
        sample_sessions(embeddings, conf, sessions)
        .select("model", "user_id", "session_id", "dim", "embedding", "indices", "values")
        .toPandas()
        .sort_values(["model", "user_id", "session_id"], ignore_index=True)
    )
    n_users = sample["user_id"].nunique()
    if n_users < 2:
        raise ValueError(
            f"evaluate needs at least 2 users with at least {conf.min_sessions} sessions embedded by "
            f"every model, found {n_users}; lower evaluate.min_sessions "
            f"(e.g. --set evaluate.min_sessions=5) or embed more sessions"
        )
    repeated = sample.duplicated(["model", "session_id"])
    if repeated.any():
        models = sorted(sample.loc[repeated, "model"].unique())
        raise ValueError(f"session_embeddings holds {int(repeated.sum())} repeated (model, session_id) rows "
                         f"in the sample (models {models}); expected one vector per session and model")
    rows = []
    for model, group in sample.groupby("model", sort=True):
        personas = None if truth is None else _personas(group["user_id"], truth)
        rows += _score_model(str(model), vectors(group, str(model)), group["user_id"].to_numpy(),
                             personas, conf)
    return pd.DataFrame(rows, columns=COLUMNS).astype({"n_users": "int64", "n_sessions": "int64"})


def split_comparison(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of session embeddings, rows of clusterings named ``model/algorithm``), each without the
    other's empty columns."""
    clusterings = table.index.str.contains("/")
    return (table[~clusterings].dropna(axis=1, how="all"), table[clusterings].dropna(axis=1, how="all"))


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per model, one column per metric (known metrics first), for printing."""
    table = results.pivot(index="model", columns="metric", values="value")
    known = [m for m in METRIC_ORDER if m in table.columns]
    return table[known + sorted(set(table.columns) - set(known))].rename_axis(columns=None)


def recovery_scores(contingency: np.ndarray) -> tuple[float, float]:
    """Adjusted Rand index and NMI (arithmetic mean of entropies) from a clusters × personas table.

    From counts rather than labels, so Spark can build the table over any number of users.
    """
    table = np.asarray(contingency, dtype=np.float64)
    n = table.sum()

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    rows, cols = table.sum(axis=1), table.sum(axis=0)
    expected = pairs(rows) * pairs(cols) / (n * (n - 1) / 2)
    top = (pairs(rows) + pairs(cols)) / 2
    ari = 1.0 if top == expected else (pairs(table) - expected) / (top - expected)

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0] / n
        return float(-(p * np.log(p)).sum())

    nz = table > 0
    mutual = float((table[nz] / n * np.log(table[nz] * n / np.outer(rows, cols)[nz])).sum())
    mean_h = (entropy(rows) + entropy(cols)) / 2
    return float(ari), (1.0 if mean_h == 0 else mutual / mean_h)


def persona_recovery(user_clusters: DataFrame, truth: DataFrame) -> pd.DataFrame:
    """ARI and NMI of each (model, algorithm) clustering against the planted personas.

    ``truth`` has ``user_id, persona``; only users present in both count.
    """
    counts = (user_clusters.join(truth.select(F.col("user_id").cast("string"), "persona"), "user_id")
              .groupBy("model", "algorithm", "k", "seed", "cluster", "persona").count().toPandas())
    rows = []
    for (model, algorithm, k, seed), group in counts.groupby(["model", "algorithm", "k", "seed"]):
        table = group.pivot_table(index="cluster", columns="persona", values="count", fill_value=0)
        ari, nmi = recovery_scores(table.to_numpy())
        params = json.dumps({"k": int(k), "seed": int(seed), "n_personas": int(table.shape[1])})
        n_users = int(group["count"].sum())
        for metric, value in (("persona_ari", ari), ("persona_nmi", nmi)):
            rows.append({"model": f"{model}/{algorithm}", "metric": metric, "value": value,
                         "n_users": n_users, "n_sessions": 0, "params": params})
    return pd.DataFrame(rows, columns=COLUMNS)
