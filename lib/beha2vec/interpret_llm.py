"""Cluster descriptions by an LLM: sampled sessions and profile numbers in, a sentence and 3 keywords out.

For each cluster that is not small and each seed of ``interpret.seeds`` (one replicate per seed):

* **Sample** (in Spark): the cluster's non-bot sessions, at most ``max_sessions_per_user`` per user
  picked by a seeded hash, dealt round-robin across users in a seeded order: every user's first
  session comes before anyone's second, so heavy users cannot dominate. The texts are redacted
  (:mod:`beha2vec.redact`, each user's own id masked too), counted with ``llm.tokenizer``, and
  taken in that order until ``sample_tokens`` is reached.
* **Prompt**: the cluster's size and profile numbers against all users (the same numbers the report
  shows: behaviour, distinctive pages or domains with share and lift, peak hours, weekend share,
  devices), then the sampled sessions, one per line. No user id is sent.
* **Answer**: JSON with a ``summary`` (one sentence) and exactly 3 ``keywords``, per the schema.

Consistency across replicates, per cluster: ``keyword_overlap`` is the mean pairwise Jaccard index
of the keyword sets; ``summary_similarity`` the mean pairwise cosine similarity of the summaries'
embeddings (``interpret.similarity_model``, MiniLM by default); ``consistency`` their mean.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from beha2vec.config import InterpretConfig
from beha2vec.llm import ChatRequest, Malformed
from beha2vec.openai_api import count_tokens
from beha2vec.redact import redact

BASELINE = -1
SAMPLE_MARGIN = 1.5
SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "description": "one sentence describing the users of the cluster"},
        "keywords": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3,
                     "description": "exactly three short lower-case keywords"},
    },
    "required": ["summary", "keywords"],
    "additionalProperties": False,
}
SYSTEM = (
    "You are an analyst who explains segments of website users found by clustering their browsing "
    "sessions. You get one cluster's numbers against all users and a sample of its sessions, one per "
    "line as 'weekday time, Visits: page (dwell) -> page (dwell)'. Describe what sets these users apart: "
    "what they visit, when, and how they browse. Use only the evidence given; quote no number that is "
    "not in it. Answer in JSON: 'summary' is one sentence of at most 30 words, 'keywords' exactly three "
    "distinct lower-case keywords of one to three words each."
)
SUMMARY_KEYS = ("users", "sessions_per_user", "page_views_per_session", "median_session_duration_s",
                "engagement_s_per_session", "purchase_rate", "revenue_per_user", "bot_share")
UNIT_FACETS = ("unit_distinctive", "domain_distinctive", "path_distinctive")


@dataclass(frozen=True)
class Sample:
    """The sessions one replicate sends for one cluster."""

    cluster: int
    seed: int
    lines: tuple[str, ...]
    users: int
    tokens: int


def candidate_sessions(clusters: DataFrame, sessions: DataFrame, seed: int,
                       conf: InterpretConfig) -> DataFrame:
    """``cluster, user_id, text, tokens`` in round-robin order per cluster, a little over the budget.

    ``tokens`` are sessionize's counts; the exact cut happens after redaction in :func:`take_sample`.
    """
    user_order = F.xxhash64(F.lit(seed), F.col("user_id"))
    per_user = Window.partitionBy("user_id").orderBy(F.xxhash64(F.lit(seed), F.col("session_id")))
    picked = (
        sessions.where(~F.coalesce(F.col("is_bot"), F.lit(False)) & F.col("sequence_text").isNotNull())
        .select("user_id", "session_id", F.col("sequence_text").alias("text"),
                F.coalesce(F.col("text_tokens"), F.lit(1)).alias("tokens"))
        .join(clusters.select("user_id", "cluster"), "user_id")
        .withColumn("turn", F.row_number().over(per_user))
        .where(F.col("turn") <= conf.max_sessions_per_user)
    )
    order = Window.partitionBy("cluster").orderBy("turn", user_order, "session_id")
    running = F.sum("tokens").over(order.rowsBetween(Window.unboundedPreceding, Window.currentRow))
    return (picked.withColumn("position", F.row_number().over(order))
            .withColumn("before", running - F.col("tokens"))
            .where(F.col("before") < F.lit(conf.sample_tokens * SAMPLE_MARGIN))
            .select("cluster", "user_id", "text", "position"))


def take_sample(candidates: pd.DataFrame, cluster: int, seed: int, budget: int, tokenizer: str) -> Sample:
    """The redacted lines of one cluster, in order, while their tokens fit ``budget``."""
    rows = candidates[candidates["cluster"] == cluster].sort_values("position")
    texts = [redact(str(t), (u,)) for t, u in zip(rows["text"], rows["user_id"], strict=True)]
    counts = count_tokens(tokenizer, texts, "llm.tokenizer")
    lines, users, used = [], set(), 0
    for text, n, user in zip(texts, counts, rows["user_id"], strict=True):
        if used + n + 1 > budget:
            continue
        lines.append(text)
        users.add(user)
        used += n + 1
    return Sample(cluster, seed, tuple(lines), len(users), used)


def profile_facts(profiles: pd.DataFrame, cluster: int, top_n: int) -> list[str]:
    """The cluster's numbers against all users, as short lines with redacted keys."""
    mine = profiles[profiles["cluster"] == cluster]
    base = profiles[profiles["cluster"] == BASELINE]
    facts = []
    summary, everyone = _summary(mine), _summary(base)
    for key in SUMMARY_KEYS:
        if key in summary and pd.notna(summary[key]):
            facts.append(f"{key}: {_fmt(summary[key])} (all users {_fmt(everyone.get(key))})")
    for facet in UNIT_FACETS:
        rows = mine[mine["facet"] == facet].sort_values("rank").head(top_n)
        if len(rows):
            listed = "; ".join(f"{redact(str(r.key))} {r.share:.1%} ({r.lift:.1f}x)"
                               for r in rows.itertuples())
            kind = facet.split("_")[0]
            facts.append(f"most distinctive {kind}s (share of visits, lift vs all users): {listed}")
            break
    hours = mine[mine["facet"] == "hour"].sort_values("lift", ascending=False).head(3)
    if len(hours):
        facts.append("hours of day most over-represented (share of session starts, lift): " + "; ".join(
            f"{int(float(r.key)):02d}h {r.share:.1%} ({r.lift:.1f}x)" for r in hours.itertuples()))
    weekend = mine[(mine["facet"] == "weekday") & mine["key"].isin(["Saturday", "Sunday"])]
    base_weekend = base[(base["facet"] == "weekday") & base["key"].isin(["Saturday", "Sunday"])]
    if len(weekend):
        facts.append(f"weekend share of sessions: {weekend['share'].sum():.1%} "
                     f"(all users {base_weekend['share'].sum():.1%})")
    for facet in ("device_category", "country"):
        rows = mine[mine["facet"] == facet].sort_values("rank").head(3)
        if len(rows):
            facts.append(f"{facet} (share of users): " + "; ".join(
                f"{redact(str(r.key))} {r.share:.0%}" for r in rows.itertuples()))
    return facts


def _summary(rows: pd.DataFrame) -> dict[str, float]:
    facet = rows[rows["facet"] == "summary"]
    return dict(zip(facet["key"], facet["value"], strict=True))


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    number = float(value)
    return f"{number:,.0f}" if abs(number) >= 100 else f"{number:.3g}"


def request(sample: Sample, facts: list[str], users: int, total_users: int, k: int) -> ChatRequest:
    """The chat request for one cluster and seed (the seed only shows through its sample)."""
    share = users / max(total_users, 1)
    head = f"Cluster {sample.cluster} of {k}: {users:,} of {total_users:,} users ({share:.1%})."
    body = "\n".join([head, "Numbers against all users:", *(f"- {f}" for f in facts),
                      f"Sample of {len(sample.lines)} sessions from {sample.users} users:", *sample.lines])
    return ChatRequest("interpret", SYSTEM, body, "cluster_interpretation", SCHEMA)


def parse_interpretation(answer: dict) -> dict:
    """``summary`` and exactly 3 distinct keywords, or :class:`Malformed` (the request is retried)."""
    summary = answer.get("summary")
    keywords = answer.get("keywords")
    if not isinstance(summary, str) or not summary.strip():
        raise Malformed("the answer has no 'summary' sentence")
    if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
        raise Malformed("the answer's 'keywords' is not a list of strings")
    unique = list(dict.fromkeys(" ".join(k.split()).lower().strip(" .,;:") for k in keywords))
    unique = [k for k in unique if k]
    if len(unique) < 3:
        raise Malformed(f"the answer has {len(unique)} distinct keywords, not 3")
    return {"summary": " ".join(summary.split()), "keywords": unique[:3]}


def consistency(answers: list[dict], embed: Callable[[list[str]], np.ndarray]
                ) -> tuple[float | None, float | None, float | None]:
    """``(keyword_overlap, summary_similarity, consistency)`` over the replicates of one cluster."""
    if len(answers) < 2:
        return None, None, None
    sets = [set(a["keywords"]) for a in answers]
    overlap = float(np.mean([len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2)]))
    vectors = np.asarray(embed([a["summary"] for a in answers]), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = float(np.mean([vectors[i] @ vectors[j]
                                for i, j in itertools.combinations(range(len(vectors)), 2)]))
    return overlap, similarity, (overlap + similarity) / 2

