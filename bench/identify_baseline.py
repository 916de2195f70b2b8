"""Experiment: how well does counting a user's pages identify them? Naive Bayes next to the models.

Why: issue 4 asks the encoder to identify held-out users "by a wide margin" better than the other
models. A classic, model-free identifier shows how much of a user the sessions themselves reveal
on any data set, real or synthetic: a multinomial naive Bayes over each session's visit units
(the ``domains`` column: domains, GA4 page paths, msnbc categories), alone and with the pairs of
consecutive units (a first-order view of order). Each user's unit shares are estimated on the
train split of ``evaluate``'s own sample and split, shrunk towards the pooled shares with a
strength chosen on an inner split of the train sessions only; a held-out session goes to the user
under whom it is most likely. It is scored on the same held-out sessions as the models, whose
figures from the lake's ``evaluation`` table are printed beside it.

    python bench/identify_baseline.py --lake LAKE [--set evaluate.holdout_by=time ...]

Recall@k here is the share of held-out sessions whose user is among the k most likely; the
models' recall@k ranks users' train centroids by cosine instead (``evaluate.centroid_retrieval``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import functions as F
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer

from beha2vec import evaluate as ev
from beha2vec.config import load_config
from beha2vec.context import Context

STRENGTHS = (0.1, 1.0, 10.0, 100.0, 1000.0)  # pseudo-visits of the pooled shares per user
MODEL_METRICS = ("id_accuracy", "recall_at_1", "recall_at_5")


def unit_counts(units: pd.Series, pairs: bool) -> sparse.csr_matrix:
    """Sessions x units (and pairs of consecutive units) count matrix."""
    def tokens(seq) -> list[str]:
        seq = [str(u) for u in seq]
        return seq + ([f"{a}\u0001{b}" for a, b in zip(seq, seq[1:], strict=False)] if pairs else [])

    vectorizer = CountVectorizer(analyzer=tokens, lowercase=False)
    return vectorizer.fit_transform(units).tocsr().astype(np.float64)


def log_likelihoods(counts: sparse.csr_matrix, user: np.ndarray, train: np.ndarray, n_users: int,
                    strength: float) -> np.ndarray:
    """``[session, user]`` log-likelihood under each user's shrunk unit shares from ``train`` rows."""
    pooled = np.asarray(counts[train].sum(0)).ravel() + 1.0  # one pseudo-count: no zero share
    pooled /= pooled.sum()
    onehot = sparse.csr_matrix((np.ones(train.sum()), (user[train], np.flatnonzero(train))),
                               shape=(n_users, counts.shape[0]))
    per_user = np.asarray((onehot @ counts).todense())
    shares = (per_user + strength * pooled) / (per_user.sum(1, keepdims=True) + strength)
    return np.asarray(counts @ np.log(shares).T)


def choose_strength(counts: sparse.csr_matrix, user: np.ndarray, train: np.ndarray, n_users: int,
                    seed: int, test_fraction: float) -> float:
    """The shrinkage with the best accuracy on an inner split of the train sessions only."""
    rows = np.flatnonzero(train)
    inner_test = np.zeros(len(user), dtype=bool)
    inner_test[rows] = ev.split_by_user(user[rows], seed + 1, test_fraction)
    inner_train = train & ~inner_test
    accuracy = {s: np.mean(ev.true_rank(log_likelihoods(counts, user, inner_train, n_users, s)[inner_test],
                                 user[inner_test]) == 1) for s in STRENGTHS}
    return max(STRENGTHS, key=lambda s: (accuracy[s], -s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", nargs="+", default=["conf/local.yaml"])
    parser.add_argument("--lake", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    ctx = Context(load_config(args.conf, [*args.set, "spark.progress_bar=false"], str(args.lake)))
    conf = ctx.config.evaluate
    sessions = ctx.lake.read("sessions")
    ids = (ev.sample_sessions(ctx.lake.read("session_embeddings"), conf, sessions)
           .select("session_id", "user_id").distinct())
    rows = (sessions.join(ids, ["session_id", "user_id"]).select("session_id", "user_id", "domains")
            .toPandas().sort_values(["user_id", "session_id"], ignore_index=True))
    evaluation = (ctx.lake.read("evaluation").where(F.col("metric").isin(*MODEL_METRICS)).toPandas()
                  if ctx.lake.exists("evaluation") else pd.DataFrame())

    users = rows["user_id"].to_numpy()
    candidates, user = np.unique(users, return_inverse=True)
    test = ev.split_by_user(users, conf.seed, conf.test_fraction)
    print(f"{len(rows)} sampled sessions of {len(candidates)} users, {test.sum()} held out "
          f"(chance {1 / len(candidates):.3f})")
    for name, pairs in (("naive Bayes, units", False), ("naive Bayes, units + consecutive pairs", True)):
        counts = unit_counts(rows["domains"], pairs)
        strength = choose_strength(counts, user, ~test, len(candidates), conf.seed, conf.test_fraction)
        rank = ev.true_rank(log_likelihoods(counts, user, ~test, len(candidates), strength)[test], user[test])
        print(f"{name} ({counts.shape[1]:,} columns, shrinkage {strength:g}): id accuracy (= recall@1) "
              f"{np.mean(rank == 1):.3f}, recall@5 {np.mean(rank <= 5):.3f}")
    if not evaluation.empty:  # evaluate overwrites the table: one run's rows
        print("the models in the lake's evaluation table (the same held-out sessions):")
        print(evaluation.pivot(index="model", columns="metric", values="value").round(3).to_string())


if __name__ == "__main__":
    main()
