"""The offline cluster comparison: how two clusters differ, in one sentence and a few cited numbers.

It backs ``beha2vec compare`` when no LLM endpoint is configured: deterministic (the same
``cluster_profiles`` rows always give the same words), needs no network, and every difference it
states cites both clusters' numbers from the profile. Input is every ``cluster_profiles`` row of one
clustering, the baseline (cluster -1) included; each pair of clusters that are neither the baseline
nor small is compared. Topics, times and the cleaning of keys are read as
:mod:`beha2vec.interpret_offline` reads them.

The differences, each weighed so that they can be ranked together (``p``, ``q``: the two shares;
``(p - q) · ln(p / q)`` is the pair's term of the symmetric Kullback–Leibler divergence):

* **Topic**: of the first of ``unit``, ``domain``, ``path`` that both clusters have, every key listed
  in the facet or its ``_distinctive`` twin becomes a topic named as the interpreter names it, and a
  topic's share of visits sums its listed keys (each key once, so it is a lower bound). Where a
  cluster lists no key of a topic, each of its keys there has at most the share of the cluster's
  least visited listed key: the topic is compared at that bound (cited as ``≤2%``, or ``≤2% ... per
  page`` for page paths, as many pages may add up), or not at all when the other cluster's share is
  no larger. Weight ``(p - q) · ln(p / q)`` (shares floored at 0.1%); clear from 0.02 on (10% vs 5%
  is 0.035).
* **Behaviour** (facet ``summary``): median session duration, page views per session, engagement per
  session, purchase rate and sessions per user; clear where the larger value is at least 1.5× the
  smaller (or the smaller is 0). Weight ``0.2 · ln(ratio)``, the ratio capped at 20, so that a 1.5×
  difference weighs about as much as 20% vs 10% of visits.
* **Time**: each cluster's peak hours, as the interpreter finds them against the baseline (only a
  window with a lift of at least 1.3), unless the other cluster's peak falls in the same part of the
  day; clear where the window's share of session starts is at least 1.3× the other cluster's share of
  the same hours. The Saturday + Sunday share of session starts, clear from a ratio of 1.2. Weight
  ``(p - q) · ln(p / q)`` of those shares.
* **Device and country** (share of users): clear only where one cluster's share is at least twice
  the other's and 10 points above it (a value the other does not list counts as its least listed
  share). Weight ``(p - q) · ln(p / q)``.

A difference whose two numbers read the same as cited is left out. Evidence lists the clear
differences by weight, at most three topics and six in all; where fewer than two are clear it is
filled up with the largest unclear ones (then the cluster sizes), so that it holds two wherever the
profile has two numbers to compare. The sentence is built from the first three clear differences
(two, then one, where it would be longer than 45 words): "Cluster 1 <what sets it apart>, while
Cluster 3 <what sets that one apart>." ("Compared with Cluster 3, Cluster 1 ..." where all of them
set one cluster apart). Without a clear difference it says that the two differ little in these
numbers and cites the largest differences anyway. The pairs kept by ``max_pairs`` are those with the
largest sum of the weights of their clear differences.

Nothing from the data reaches the text but topic names, device categories, countries and numbers:
a key loses any ``?query`` or ``#fragment``, and keys that look like e-mail addresses (``@`` or
``%40``) are never used.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import pandas as pd

from beha2vec.interpret_offline import (
    BASELINE,
    BEHAVIOUR_RATIO,
    EMAIL_LIKE,
    HOURS_LIFT,
    MAX_TOPIC_WORDS,
    TOPIC_FACETS,
    WEEKEND,
    WEEKEND_LEAN,
    Topic,
    as_number,
    clean_key,
    day_part,
    duration_text,
    facet_rows,
    hour_window,
    path_folders,
    percent,
    summary_values,
    topic_of,
    topic_phrase,
)

SHARE_FLOOR = 0.001
CLEAR_TOPIC = 0.02
BEHAVIOUR_WEIGHT = 0.2
MAX_RATIO = 20.0
CATEGORY_RATIO, CATEGORY_POINTS = 2.0, 0.10
MAX_TOPICS, MAX_EVIDENCE, MIN_EVIDENCE, SUMMARY_ITEMS = 3, 6, 2, 3
MAX_WORDS = 45
# summary key, evidence label, phrase of the cluster with the larger value ({x} its value, {y} the other's)
_METRICS = (
    ("median_session_duration_s", "median session", "has longer sessions (median {x} vs {y})"),
    ("page_views_per_session", "pages per session", "views more pages per session ({x} vs {y})"),
    ("engagement_s_per_session", "engagement per session", "is more engaged ({x} vs {y} per session)"),
    ("purchase_rate", "purchase rate", "buys more often ({x} of users vs {y})"),
    ("sessions_per_user", "sessions per user", "returns more often ({x} vs {y} sessions per user)"),
)
# facet, evidence label, phrase of the cluster with the larger share
_CATEGORIES = (("device_category", "device {v}", "is more often on {v}"),
               ("country", "country {v}", "is more often from {v}"))


@dataclass(frozen=True)
class Comparison:
    """How clusters ``cluster_a`` < ``cluster_b`` differ: one sentence and 2 to 6 cited differences."""

    cluster_a: int
    cluster_b: int
    summary: str
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class _Facts:
    """What one cluster's profile says, read once for all its pairs."""

    family: set[str]  # which of unit, domain, path it has
    topics: dict[str, dict[tuple[str, str, str | None], float]]  # family → topic → share of visits
    cutoffs: dict[str, float]  # family → share of the least visited listed key
    summary: dict[str, float]
    hours: dict[int, float]  # hour → share of session starts
    window: tuple[int, int, int] | None  # (first hour, hours, peak hour) of a clear peak, else None
    weekend: float | None
    categories: dict[str, tuple[dict[str, float], float]]  # facet → (value → share of users, cutoff)


@dataclass(frozen=True)
class _Difference:
    """One difference: ``numbers`` cite cluster a's first, ``phrase`` the cluster that stands out first."""

    weight: float
    clear: bool
    side: int  # 0: cluster a stands out, 1: cluster b
    label: str
    numbers: str
    phrase: str
    is_topic: bool = False

    @property
    def evidence(self) -> str:
        return f"{self.label}: {self.numbers}"


@dataclass(frozen=True)
class _Cited:
    """A share as compared and as cited: a listed share, or the bound on an unlisted one."""

    value: float
    text: str  # '41%', '≤6.0%'
    suffix: str = ""  # ' per page' for a bound on a topic of pages

    def of(self, unit: str) -> str:
        return f"{self.text} of {unit}{self.suffix}"


# ---------------------------------------------------------------------------------------------
# Reading one cluster.
# ---------------------------------------------------------------------------------------------


def _label(key: object) -> str | None:
    """A device category or country as shown: no query or fragment, letters of any script, never an
    e-mail; None for unknown values."""
    if clean_key(key) is None or EMAIL_LIKE.search(str(key)):
        return None
    text = re.split(r"[?#]", str(key), maxsplit=1)[0]
    words = "".join(c if c.isalnum() or c in ".&'-" else " " for c in text).split()
    return " ".join(words[:MAX_TOPIC_WORDS]) or None


def _shares(rows: list[dict]) -> dict[str, float]:
    return {str(r["key"]): s for r in rows if (s := as_number(r.get("share"))) is not None}


def _read_topics(profile: pd.DataFrame, cluster: int, family: str, folders: set[tuple[str, str]],
                 categories: dict[str, str]) -> tuple[dict[tuple[str, str, str | None], float], float | None]:
    """Topic → summed share of the listed keys of ``family``, and the share of the least visited key."""
    by_share = facet_rows(profile, cluster, family)
    seen: set[str] = set()
    topics: dict[tuple[str, str, str | None], float] = {}
    for row in by_share + facet_rows(profile, cluster, f"{family}_distinctive"):
        key, share = clean_key(row.get("key")), as_number(row.get("share"))
        if str(row.get("key")) in seen or key is None or share is None:
            continue
        seen.add(str(row.get("key")))
        topic = topic_of(key, folders, categories)
        if topic is not None:
            topics[topic] = topics.get(topic, 0.0) + share
    shares = [s for r in by_share if (s := as_number(r.get("share"))) is not None]
    return topics, min(shares) if shares else None


def _read(profile: pd.DataFrame, cluster: int, folders: dict[str, set[tuple[str, str]]],
          categories: dict[str, str]) -> _Facts:
    facets = set(profile.loc[profile["cluster"] == cluster, "facet"])
    family = {f.removesuffix("_distinctive") for f in TOPIC_FACETS
              if {f, f.removesuffix("_distinctive")} & facets}
    topics, cutoffs = {}, {}
    for name in family:
        topics[name], cutoff = _read_topics(profile, cluster, name, folders[name], categories)
        if cutoff is not None:
            cutoffs[name] = cutoff
    hours = {int(k): s for k, s in _shares(facet_rows(profile, cluster, "hour")).items()
             if k.isdigit() and int(k) < 24}
    window = hour_window(profile, cluster)
    days = _shares(facet_rows(profile, cluster, "weekday"))
    by_facet = {}
    for facet, _, _ in _CATEGORIES:
        rows = facet_rows(profile, cluster, facet)
        listed = [s for r in rows if (s := as_number(r.get("share"))) is not None]
        values = {v: s for k, s in _shares(rows).items() if (v := _label(k)) is not None}
        if listed:
            by_facet[facet] = (values, min(listed))
    return _Facts(
        family=family, topics=topics, cutoffs=cutoffs, summary=summary_values(profile, cluster), hours=hours,
        window=window[:3] if window is not None and window[3] >= HOURS_LIFT else None,
        weekend=sum(days.get(d, 0.0) for d in WEEKEND) if days else None, categories=by_facet)


# ---------------------------------------------------------------------------------------------
# Differences between two clusters.
# ---------------------------------------------------------------------------------------------


def _divergence(p: float, q: float) -> float:
    """(p - q) · ln(p / q) with both shares floored: 0 for equal shares, larger the more they differ."""
    p, q = max(p, SHARE_FLOOR), max(q, SHARE_FLOOR)
    return (p - q) * math.log(p / q)


def _cited(share: float) -> _Cited:
    return _Cited(share, percent(share))


def _bounded(p: float | None, q: float | None, cutoffs: tuple[float | None, float | None],
             suffix: str) -> tuple[_Cited, _Cited] | None:
    """Two shares where an unlisted one (None) is at most its cluster's cutoff, or None when the
    bound leaves them not comparable."""
    out = []
    for share, other, cutoff in ((p, q, cutoffs[0]), (q, p, cutoffs[1])):
        if share is not None:
            out.append(_cited(share))
        elif cutoff is None or other is None or other <= cutoff:
            return None
        else:
            out.append(_Cited(cutoff, f"≤{percent(cutoff)}", suffix))
    return out[0], out[1]


def _share_difference(x: _Cited, y: _Cited, clear: bool, label: str, unit: str, phrase: str,
                      detail: str = "") -> _Difference | None:
    """Cluster a's share ``x`` against b's ``y``; None where the two read the same as cited."""
    if (x.text, x.suffix) == (y.text, y.suffix):
        return None
    side = 0 if x.value >= y.value else 1
    mine, other = (x, y) if side == 0 else (y, x)
    return _Difference(_divergence(x.value, y.value), clear, side, label,
                       f"{x.of(unit)} vs {y.text}{y.suffix}",
                       f"{phrase} ({detail}{mine.of(unit)} vs {other.text}{other.suffix})")


def _topic_differences(a: _Facts, b: _Facts) -> list[_Difference]:
    family = next((f.removesuffix("_distinctive") for f in TOPIC_FACETS
                   if f.removesuffix("_distinctive") in a.family & b.family), None)
    if family is None:
        return []
    out = []
    mine, theirs = a.topics[family], b.topics[family]
    for topic in sorted(mine.keys() | theirs.keys()):
        name, kind, category = topic
        cutoffs = (a.cutoffs.get(family), b.cutoffs.get(family))
        shares = _bounded(mine.get(topic), theirs.get(topic), cutoffs, " per page" if kind == "path" else "")
        if shares is None:
            continue
        pages = topic_phrase([Topic(name, kind, category, max(s.value for s in shares), None, math.inf)])
        found = _share_difference(*shares, False, pages, "visits", f"visits {pages} more")
        if found is not None:
            out.append(replace(found, clear=found.weight >= CLEAR_TOPIC, is_topic=True))
    return out


def _behaviour_differences(a: _Facts, b: _Facts) -> list[_Difference]:
    out = []
    for key, label, phrase in _METRICS:
        x, y = a.summary.get(key), b.summary.get(key)
        show = {"median_session_duration_s": duration_text, "engagement_s_per_session": duration_text,
                "purchase_rate": percent}.get(key, lambda v: f"{v:.1f}")
        if x is None or y is None or x < 0 or y < 0 or show(x) == show(y):
            continue
        low, high = sorted((x, y))
        ratio = high / low if low else math.inf
        mine, other = (x, y) if x > y else (y, x)
        out.append(_Difference(BEHAVIOUR_WEIGHT * math.log(min(ratio, MAX_RATIO)), ratio >= BEHAVIOUR_RATIO,
                               0 if x > y else 1, label, f"{show(x)} vs {show(y)}",
                               phrase.format(x=show(mine), y=show(other))))
    return out


def _time_differences(a: _Facts, b: _Facts) -> list[_Difference | None]:
    out = []
    if a.hours and b.hours:
        for side, (mine, other) in enumerate(((a, b), (b, a))):
            if mine.window is None:
                continue
            first, size, peak = mine.window
            if other.window and day_part(other.window[2]) == day_part(peak):
                continue  # the same part of the day
            hours = [(first + i) % 24 for i in range(size)]
            p, q = (sum(f.hours.get(h, 0.0) for h in hours) for f in (mine, other))
            if p <= q:
                continue
            part, window = day_part(peak)[1], f"{first:02d}–{(first + size) % 24:02d} h"
            x, y = (p, q) if side == 0 else (q, p)
            out.append(_share_difference(_cited(x), _cited(y), p >= HOURS_LIFT * q, f"{part} {window}",
                                         "session starts", f"is more active {part}", f"{window}: "))
    if a.weekend is not None and b.weekend is not None:
        low, high = sorted((a.weekend, b.weekend))
        out.append(_share_difference(_cited(a.weekend), _cited(b.weekend), high >= WEEKEND_LEAN[1] * low,
                                     "weekend", "session starts", "is more active at weekends"))
    return out


def _category_differences(a: _Facts, b: _Facts) -> list[_Difference | None]:
    out = []
    for facet, label, phrase in _CATEGORIES:
        if facet not in a.categories or facet not in b.categories:
            continue
        (mine, cut_a), (theirs, cut_b) = a.categories[facet], b.categories[facet]
        for value in sorted(mine.keys() | theirs.keys()):
            shares = _bounded(mine.get(value), theirs.get(value), (cut_a, cut_b), "")
            if shares is None:
                continue
            low, high = sorted(s.value for s in shares)
            clear = high >= CATEGORY_RATIO * low and high - low >= CATEGORY_POINTS
            out.append(_share_difference(*shares, clear, label.format(v=value), "users",
                                         phrase.format(v=value)))
    return out


def _differences(a: _Facts, b: _Facts) -> list[_Difference]:
    """Every difference of the pair, heaviest first (ties in this order: topics, behaviour, time, device
    and country)."""
    found = (_topic_differences(a, b) + _behaviour_differences(a, b) + _time_differences(a, b)
             + _category_differences(a, b))
    return sorted((d for d in found if d is not None), key=lambda d: -d.weight)  # stable sort


# ---------------------------------------------------------------------------------------------
# Evidence and sentence.
# ---------------------------------------------------------------------------------------------


def _evidence(differences: list[_Difference], sizes: tuple[float | None, float | None]) -> list[_Difference]:
    """The clear differences (at most :data:`MAX_TOPICS` topics), filled up to :data:`MIN_EVIDENCE`."""
    chosen: list[_Difference] = []
    for d in differences:
        if d.clear and not (d.is_topic and sum(c.is_topic for c in chosen) == MAX_TOPICS):
            chosen.append(d)
    chosen = chosen[:MAX_EVIDENCE]
    filler = [d for d in differences if not d.clear and d.weight > 0]
    if None not in sizes:
        filler.append(_Difference(0.0, False, 0, "users", f"{sizes[0]:.0f} vs {sizes[1]:.0f}", ""))
    return chosen + filler[:max(0, MIN_EVIDENCE - len(chosen))]


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _sentence(a: int, b: int, shown: list[_Difference]) -> str:
    names = (f"Cluster {a}", f"Cluster {b}")
    first = shown[0].side
    sides = [[d.phrase for d in shown if d.side == s] for s in (first, 1 - first)]
    if not sides[1]:
        return f"Compared with {names[1 - first]}, {names[first]} {_join(sides[0])}."
    return f"{names[first]} {_join(sides[0])}, while {names[1 - first]} {_join(sides[1])}."


def _summary_text(a: int, b: int, evidence: list[_Difference]) -> str:
    clear = [d for d in evidence if d.clear]
    if not clear:
        text = f"Cluster {a} and Cluster {b} differ little in these numbers"
        largest = [f"{d.label} ({d.numbers})" for d in evidence]
        return text + (f"; the largest differences are {_join(largest)}." if largest else ".")
    texts = [_sentence(a, b, clear[:n]) for n in range(min(SUMMARY_ITEMS, len(clear)), 0, -1)]
    return next((t for t in texts if len(t.split()) <= MAX_WORDS), texts[-1])


def _compare(a: int, b: int, facts: dict[int, _Facts]) -> tuple[float, Comparison]:
    """The pair's comparison, and its score: the summed weight of its clear differences."""
    differences = _differences(facts[a], facts[b])
    evidence = _evidence(differences, (facts[a].summary.get("users"), facts[b].summary.get("users")))
    score = sum(d.weight for d in differences if d.clear)
    return score, Comparison(a, b, _summary_text(a, b, evidence), tuple(d.evidence for d in evidence))


def compare_all(profiles: pd.DataFrame, categories: dict[str, str] | None = None,
                max_pairs: int | None = None) -> list[Comparison]:
    """A :class:`Comparison` for every pair a < b of the clusters of one clustering's ``cluster_profiles``
    rows that are neither the baseline nor small, by (a, b).

    ``categories`` maps registrable domains to categories (None: the bundled map); ``max_pairs``
    keeps only that many pairs, those that differ most (see the module rules), still by (a, b).
    """
    if max_pairs is not None and max_pairs < 0:
        raise ValueError(f"max_pairs must not be negative, got {max_pairs}")
    if categories is None:
        from beha2vec.features import load_categories

        categories = load_categories("")
    small = profiles["is_small"] if "is_small" in profiles else pd.Series(False, index=profiles.index)
    small = small.astype("boolean").fillna(False).astype(bool)
    skipped = {int(c) for c in profiles.loc[small, "cluster"]} | {BASELINE}
    clusters = sorted({int(c) for c in profiles["cluster"]} - skipped)
    folders = {}
    for facet in TOPIC_FACETS:
        family = facet.removesuffix("_distinctive")
        listed = profiles[profiles["facet"].isin([facet, family])]["key"].dropna().map(clean_key).dropna()
        folders[family] = path_folders(k for k in listed if k.startswith("/"))
    facts = {c: _read(profiles, c, folders, categories) for c in clusters}
    scored = [_compare(a, b, facts) for i, a in enumerate(clusters) for b in clusters[i + 1:]]
    if max_pairs is not None:
        scored = sorted(scored, key=lambda s: (-s[0], s[1].cluster_a, s[1].cluster_b))[:max_pairs]
    return sorted((c for _, c in scored), key=lambda c: (c.cluster_a, c.cluster_b))
