"""Cluster comparisons by an LLM: two clusters' numbers and their measured differences in, a sentence out.

The offline comparison (:mod:`beha2vec.compare_offline`) picks the differences and their numbers;
the model only phrases them, next to both clusters' profile numbers and descriptions, so every
number it may quote is in its prompt. The answer follows a schema: ``summary`` (one sentence naming
both clusters) and ``evidence`` (1 to 6 short strings, each one difference with its numbers).
"""

from __future__ import annotations

import pandas as pd

from beha2vec.interpret_llm import profile_facts
from beha2vec.llm import ChatRequest, Malformed
from beha2vec.redact import redact

MAX_EVIDENCE = 6
SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "description": "one sentence on how the two clusters differ"},
        "evidence": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_EVIDENCE,
                     "description": "the differences, each with the numbers of both clusters"},
    },
    "required": ["summary", "evidence"],
    "additionalProperties": False,
}
SYSTEM = (
    "You compare two segments (clusters) of website users. You get each cluster's numbers against all "
    "users, its description, and the largest measured differences between them. Say how the two differ "
    "in one sentence of at most 40 words that names both as 'Cluster N'. Quote only numbers given. Answer "
    "in JSON: 'summary' (the sentence) and 'evidence' (one to six short strings, each one difference with "
    "both clusters' numbers)."
)


def request(profiles: pd.DataFrame, a: int, b: int, offline_evidence: tuple[str, ...],
            descriptions: dict[int, str], top_n: int) -> ChatRequest:
    """The chat request comparing clusters ``a`` and ``b``."""
    lines = []
    for cluster in (a, b):
        users = profiles.loc[profiles["cluster"] == cluster, "users"].iloc[0]
        lines.append(f"Cluster {cluster} ({int(users):,} users)"
                     + (f": {redact(descriptions[cluster])}" if cluster in descriptions else ""))
        lines += [f"- {fact}" for fact in profile_facts(profiles, cluster, top_n)]
    lines.append(f"Largest measured differences between Cluster {a} and Cluster {b}:")
    lines += [f"- {redact(e)}" for e in offline_evidence]
    return ChatRequest("compare", SYSTEM, "\n".join(lines), "cluster_comparison", SCHEMA)


def parse_comparison(answer: dict) -> dict:
    """``summary`` and 1 to 6 evidence strings, or :class:`Malformed` (the request is retried)."""
    summary, evidence = answer.get("summary"), answer.get("evidence")
    if not isinstance(summary, str) or not summary.strip():
        raise Malformed("the answer has no 'summary' sentence")
    if not isinstance(evidence, list) or not all(isinstance(e, str) for e in evidence):
        raise Malformed("the answer's 'evidence' is not a list of strings")
    kept = [" ".join(e.split()) for e in evidence if e.strip()][:MAX_EVIDENCE]
    if not kept:
        raise Malformed("the answer has no evidence")
    return {"summary": " ".join(summary.split()), "evidence": kept}
