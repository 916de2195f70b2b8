"""The offline cluster interpreter: one sentence and three keywords per cluster, from its profile alone.

It is the interpreter used when no LLM endpoint is configured (and by ``make run``): deterministic
(the same ``cluster_profiles`` rows always give the same words), needs no network, and cites the
numbers it relies on. Input is every ``cluster_profiles`` row of one clustering, the baseline
(cluster -1, every clustered user) included; see docs/clustering.md for the facets.

The rules, each set against the baseline:

* **Topic**: of the first of ``unit``, ``domain``, ``path`` that the cluster has, the keys of its
  distinctive facet (``unit_distinctive``: top keys by lift) with a lift above 1, and the keys of its
  by-share facet (``unit``: the most visited) with a lift of at least 1.5. Each key becomes a
  readable topic name:

  - a page path: its first segment, plus the second one when that second segment is a folder, i.e.
    a word (letters, 3 to 20) under which some listed path of the clustering goes deeper
    (``/news/world/some-article`` → ``news world``, ``/category/electronics`` → ``category
    electronics`` if ``/category/electronics/men`` is listed; ``/sale/flash-deals`` → ``sale``,
    ``/`` → ``home``);
  - a registrable domain: the domain itself, named with its category where the domain → category map
    knows it (``video site youtube.com``; the keyword is then the category);
  - anything else (msnbc's page categories): the name, ``_`` and ``-`` read as spaces.

  Keys of one topic are added up: its share and base share sum over every listed key of that topic
  in both facets, each key once; its lift is their ratio (a topic whose lift is then not above 1 is
  dropped). As the profile lists only its top keys,
  the share is a lower bound (the sentence says ``≥``). Topics are ordered by how much they set the
  cluster apart, ``share × ln(lift)`` (a topic's term of the Kullback–Leibler divergence from the
  baseline), then by share, best rank of their keys and name. The sentence names the first topic,
  and the second when its score is at least half the first's, and cites their joint share and lift.
* **Time**: the hour (facet ``hour``) whose share of session starts most exceeds the baseline's,
  widened to the neighbouring hour of larger excess while that excess is at least half the peak's,
  up to 4 hours; it is named (late nights 22–01 h, nights 02–04, mornings 05–10, middays 11–13,
  afternoons 14–17, evenings 18–21, by the peak hour) only when the window's lift is at least 1.3.
  Weekday or weekend lean: the Saturday + Sunday share of session starts against the baseline's,
  named only beyond 1.2× (weekends) or under 0.8× (weekdays).
* **Behaviour** (facet ``summary``), in this order of priority, at most two of them: purchase rate
  at least 1.5× the baseline (``buyers``); median session duration 1.5× or more / 1/1.5 or less
  (``long sessions`` / ``quick visits``); page views per session likewise (``many pages`` / ``few
  pages``); engagement per session likewise (``engaged`` / ``skimmers``); a purchase rate at most
  half the baseline's (``rare buyers``).
* **Keywords**, exactly three distinct lower-case ones: the first topic (a domain's category where
  known; ``no clear topic`` without one); the time pattern when there is one, else the second topic;
  the first behaviour word. Where one is missing or repeats, the next of: the weekday/weekend lean,
  the other topics, the other behaviour words, ``any time`` (no time pattern nor lean, where the
  source has a clock), ``typical sessions`` (no clear behaviour).
* **Sentence**: "Users who visit <topics> pages (≥<share> of their visits, <lift>× all users),
  especially <weekday/weekend> <part of day> (<hours>), with <behaviour> and <behaviour>." ("mostly at
  weekends" for a lean without a clear hour), in at most 40 words (the second behaviour is dropped,
  then the second topic, when longer).

Nothing from the data reaches the text but topic names and numbers: a key loses any ``?query`` or
``#fragment``, and path segments or keys that look like e-mail addresses (``@`` or ``%40``) are
never used as names.

The public helpers (topic naming, key cleaning, hour windows, number formats) are shared with the
offline comparison (:mod:`beha2vec.compare_offline`) and answers (:mod:`beha2vec.ask_offline`), so
all three name and cite things the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

OFFLINE_MODEL = "offline-rules-v1"
BASELINE = -1
TOPIC_FACETS = ("unit_distinctive", "domain_distinctive", "path_distinctive")
CLEAR_TOPIC_LIFT = 1.5
SECOND_TOPIC_SCORE = 0.5
HOURS_LIFT = 1.3
WEEKEND_LEAN = (0.8, 1.2)
BEHAVIOUR_RATIO = 1.5
LOW_PURCHASE_RATIO = 0.5
MAX_HOURS = 4
MAX_WORDS = 40
MAX_TOPIC_WORDS = 4
NO_TOPIC, ANY_TIME, TYPICAL = "no clear topic", "any time", "typical sessions"
LAST_RESORT = ("browsing", "visitors", "segment")
WEEKEND = ("Saturday", "Sunday")
NOT_SET = ("(not set)", "unknown", "")

EMAIL_LIKE = re.compile(r"@|%40", re.IGNORECASE)
_DOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$")
_FOLDER = re.compile(r"^[a-z]{3,20}$")
_SEPARATORS = re.compile(r"[\s_+\-]+")
_UNSAFE = re.compile(r"[^a-z0-9 .&'-]")
# (first hour, last hour, name, phrase) by the peak hour; late nights wrap around midnight
DAY_PARTS = ((22, 1, "late night", "late nights"), (2, 4, "night", "nights"),
              (5, 10, "mornings", "mornings"), (11, 13, "midday", "middays"),
              (14, 17, "afternoons", "afternoons"), (18, 21, "evenings", "evenings"))


@dataclass(frozen=True)
class Interpretation:
    """What the interpreter says about one cluster: one sentence and three distinct keywords."""

    cluster: int
    summary: str
    keywords: list[str]


@dataclass(frozen=True)
class Topic:
    name: str
    kind: str  # path, domain or name
    category: str | None
    share: float
    base_share: float | None
    best_rank: float

    @property
    def lift(self) -> float | None:
        return self.share / self.base_share if self.base_share else None

    @property
    def score(self) -> float:
        """share × ln(lift): large for a topic both frequent and over-represented; 0 without a lift."""
        lift = self.lift
        return self.share * math.log(lift) if lift else 0.0

    @property
    def keyword(self) -> str:
        return self.category or self.name


@dataclass(frozen=True)
class _Time:
    phrase: str | None  # e.g. 'weekday mornings (07–09 h)'
    keyword: str | None  # e.g. 'mornings'
    lean: str | None  # 'weekend' or 'weekdays'
    timed: bool = True  # False when the source has no clock (msnbc): nothing may be said of hours


@dataclass(frozen=True)
class _Behaviour:
    phrase: str
    keyword: str


# ---------------------------------------------------------------------------------------------
# Reading the profile.
# ---------------------------------------------------------------------------------------------


def as_number(value: object) -> float | None:
    """A finite float, or None for null, NaN and non-numbers."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def facet_rows(profile: pd.DataFrame, cluster: int, facet: str) -> list[dict]:
    """The rows of one facet of one cluster, by rank then key."""
    rows = profile[(profile["cluster"] == cluster) & (profile["facet"] == facet)].to_dict("records")
    return sorted(rows, key=lambda r: (as_number(r.get("rank")) or math.inf, str(r.get("key"))))


def summary_values(profile: pd.DataFrame, cluster: int) -> dict[str, float]:
    return {str(r["key"]): v for r in facet_rows(profile, cluster, "summary")
            if (v := as_number(r.get("value"))) is not None}


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


# ---------------------------------------------------------------------------------------------
# Topics.
# ---------------------------------------------------------------------------------------------


def clean_key(key: object) -> str | None:
    """The key without query string or fragment, lower-case; None when nothing usable is left."""
    text = re.split(r"[?#]", str(key), maxsplit=1)[0].strip().lower()
    return None if text in NOT_SET else text


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def _name(text: str) -> str:
    """Readable words: separators as spaces, other odd characters dropped, at most a few words."""
    words = _UNSAFE.sub("", _SEPARATORS.sub(" ", text)).split()
    return " ".join(words[:MAX_TOPIC_WORDS])


def path_folders(keys: Iterable[str]) -> set[tuple[str, str]]:
    """(first, second) path segments under which some listed path goes deeper."""
    found = set()
    for key in keys:
        parts = _segments(key)
        if len(parts) >= 3 and _FOLDER.match(parts[1]) and not EMAIL_LIKE.search(parts[0]):
            found.add((parts[0], parts[1]))
    return found


def topic_of(key: str, folders: set[tuple[str, str]],
              categories: dict[str, str]) -> tuple[str, str, str | None] | None:
    """(name, kind, category) of a cleaned key, or None when it cannot name anything safely."""
    if key.startswith("/"):
        parts = _segments(key)
        if not parts:
            return "home", "path", None
        if EMAIL_LIKE.search(parts[0]):
            return None
        words = parts[:2] if len(parts) >= 2 and (parts[0], parts[1]) in folders else parts[:1]
        name = _name(" ".join(words))
        return (name, "path", None) if name else None
    if EMAIL_LIKE.search(key):
        return None
    if _DOMAIN.match(key):
        domain = key.removeprefix("www.")
        return domain, "domain", categories.get(domain)
    name = _name(key)
    return (name, "name", None) if name else None


def cluster_topics(profile: pd.DataFrame, cluster: int, categories: dict[str, str]) -> list[Topic]:
    """The cluster's over-represented topics, most distinctive first (see the module rules)."""
    mine = set(profile.loc[profile["cluster"] == cluster, "facet"])
    facet = next((f for f in TOPIC_FACETS if {f, f.removesuffix("_distinctive")} & mine), None)
    if facet is None:
        return []
    by_share = facet.removesuffix("_distinctive")
    listed = profile[profile["facet"].isin([facet, by_share])]["key"].dropna().map(clean_key).dropna()
    folders = path_folders(k for k in listed if k.startswith("/"))

    def named(rows: list[dict]) -> list[tuple[dict, tuple[str, str, str | None]]]:
        out = []
        for row in rows:
            key = clean_key(row.get("key"))
            topic = topic_of(key, folders, categories) if key else None
            if topic is not None:
                out.append((row, topic))
        return out

    def lift(row: dict) -> float:
        return as_number(row.get("lift")) or 0.0

    distinctive = [(r, t) for r, t in named(facet_rows(profile, cluster, facet)) if lift(r) > 1]
    top = named(facet_rows(profile, cluster, by_share))
    wanted = {t for _, t in distinctive} | {t for r, t in top if lift(r) >= CLEAR_TOPIC_LIFT}
    seen = {str(r.get("key")) for r, _ in distinctive}
    extra = [(r, t) for r, t in top if t in wanted and str(r.get("key")) not in seen]
    totals: dict[tuple[str, str, str | None], list[float]] = {}
    for row, topic in distinctive + extra:
        share, base = as_number(row.get("share")) or 0.0, as_number(row.get("base_share"))
        rank = (as_number(row.get("rank")) or math.inf) if row.get("facet") == facet else math.inf
        total = totals.setdefault(topic, [0.0, 0.0, math.inf, 1.0])
        total[0] += share
        if base is None:
            total[3] = 0.0  # a base share is missing: no lift for this topic
        else:
            total[1] += base
        total[2] = min(total[2], rank)
    topics = [Topic(name, kind, category, share, base if known else None, rank)
              for (name, kind, category), (share, base, rank, known) in totals.items()]
    topics = [t for t in topics if t.lift is None or t.lift > 1]
    return sorted(topics, key=lambda t: (-t.score, -t.share, t.best_rank, t.name))


def topic_phrase(topics: list[Topic]) -> str:
    """'news world and news business pages', 'video sites youtube.com and netflix.com'..."""
    if all(t.kind == "domain" for t in topics):
        categories = {t.category for t in topics}
        domains = " and ".join(t.name for t in topics)
        if len(categories) == 1 and None not in categories:
            return f"{topics[0].category} site{'s' if len(topics) > 1 else ''} {domains}"
        return " and ".join(f"{t.category} site {t.name}" if t.category else t.name for t in topics)
    return " and ".join(t.name for t in topics) + " pages"


def percent(share: float) -> str:
    """12%, 4.5%: one decimal under 10%."""
    return f"{share * 100:.0f}%" if share >= 0.1 or share == 0 else f"{share * 100:.1f}%"


def times_text(value: float) -> str:
    return f"{value:.1f}×"


def _topic_clause(topics: list[Topic]) -> str:
    if not topics:
        return "Users with no clearly distinctive pages or sites"
    share = sum(t.share for t in topics)
    bases = [t.base_share for t in topics]
    lift = share / sum(bases) if all(b is not None for b in bases) and sum(bases) else None
    numbers = f"≥{percent(share)} of their visits" + (f", {times_text(lift)} all users" if lift else "")
    return f"Users who visit {topic_phrase(topics)} ({numbers})"


# ---------------------------------------------------------------------------------------------
# Time of day and week.
# ---------------------------------------------------------------------------------------------


def distribution(profile: pd.DataFrame, cluster: int, facet: str) -> dict[str, tuple[float, float]]:
    """key → (share, base share); the base share from the row, else from the baseline's rows."""
    base = {str(r["key"]): as_number(r.get("share")) for r in facet_rows(profile, BASELINE, facet)}
    out = {}
    for row in facet_rows(profile, cluster, facet):
        key = str(row["key"])
        share = as_number(row.get("share"))
        base_share = as_number(row.get("base_share"))
        base_share = base_share if base_share is not None else base.get(key)
        if share is not None and base_share is not None:
            out[key] = (share, base_share)
    return out


def day_part(hour: int) -> tuple[str, str]:
    for first, last, keyword, phrase in DAY_PARTS:
        if (first <= hour <= last) if first <= last else (hour >= first or hour <= last):
            return keyword, phrase
    raise AssertionError(hour)  # pragma: no cover - the parts cover 0..23


def hour_window(profile: pd.DataFrame, cluster: int) -> tuple[int, int, int, float] | None:
    """(first hour, hours, peak hour, lift) of the window of excess session starts, or None."""
    shares: dict[int, tuple[float, float]] = {}
    for key, value in distribution(profile, cluster, "hour").items():
        try:
            hour = int(float(key))
        except ValueError:
            continue
        if 0 <= hour < 24:
            shares[hour] = value
    if not shares:
        return None
    excess = [shares[h][0] - shares[h][1] if h in shares else 0.0 for h in range(24)]
    peak = max(range(24), key=lambda h: (excess[h], -h))
    if excess[peak] <= 0:
        return None
    first, size = peak, 1
    while size < MAX_HOURS:
        left, right = (first - 1) % 24, (first + size) % 24
        take_right = excess[right] >= excess[left]
        if excess[right if take_right else left] < excess[peak] / 2:
            break
        first = first if take_right else left
        size += 1
    hours = [(first + i) % 24 for i in range(size)]
    share = sum(shares[h][0] for h in hours if h in shares)
    base = sum(shares[h][1] for h in hours if h in shares)
    return (first, size, peak, share / base) if base else None


def _time(profile: pd.DataFrame, cluster: int) -> _Time:
    lean = None
    week = distribution(profile, cluster, "weekday")
    if week:
        weekend = sum(week[d][0] for d in WEEKEND if d in week)
        base = sum(week[d][1] for d in WEEKEND if d in week)
        ratio = _ratio(weekend, base)
        if ratio is not None and ratio > WEEKEND_LEAN[1]:
            lean = "weekend"
        elif ratio is not None and ratio < WEEKEND_LEAN[0]:
            lean = "weekdays"
    window = hour_window(profile, cluster)
    if window is None or window[3] < HOURS_LIFT:
        phrase = {"weekend": "at weekends", "weekdays": "on weekdays", None: None}[lean]
        return _Time(phrase, None, lean, timed=bool(week or distribution(profile, cluster, "hour")))
    first, size, peak, _ = window
    keyword, part = day_part(peak)
    day = {"weekend": "weekend ", "weekdays": "weekday ", None: ""}[lean]
    return _Time(f"{day}{part} ({first:02d}–{(first + size) % 24:02d} h)", keyword, lean)


# ---------------------------------------------------------------------------------------------
# Behaviour.
# ---------------------------------------------------------------------------------------------


def duration_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _clear(ratio: float | None) -> bool:
    return ratio is not None and (ratio >= BEHAVIOUR_RATIO or ratio <= 1 / BEHAVIOUR_RATIO)


def _behaviours(profile: pd.DataFrame, cluster: int) -> list[_Behaviour]:
    """Clear differences from the baseline, in the module's order of priority."""
    mine, base = summary_values(profile, cluster), summary_values(profile, BASELINE)
    ratio = {key: _ratio(mine.get(key), base.get(key)) for key in (
        "purchase_rate", "median_session_duration_s", "page_views_per_session", "engagement_s_per_session")}
    out: list[_Behaviour] = []
    purchase = ratio["purchase_rate"]
    if purchase is not None and purchase >= BEHAVIOUR_RATIO:
        rate = percent(mine["purchase_rate"])
        out.append(_Behaviour(f"a purchase rate of {rate} ({times_text(purchase)} all users)", "buyers"))
    duration = ratio["median_session_duration_s"]
    if _clear(duration):
        median = duration_text(mine["median_session_duration_s"])
        numbers = f"(median {median}, {times_text(duration)} all users)"
        out.append(_Behaviour(f"long sessions {numbers}", "long sessions") if duration > 1
                   else _Behaviour(f"short sessions {numbers}", "quick visits"))
    pages = ratio["page_views_per_session"]
    if _clear(pages):
        numbers = f"({mine['page_views_per_session']:.1f} vs {base['page_views_per_session']:.1f})"
        out.append(_Behaviour(f"many pages per session {numbers}", "many pages") if pages > 1
                   else _Behaviour(f"few pages per session {numbers}", "few pages"))
    engagement = ratio["engagement_s_per_session"]
    if _clear(engagement):
        per_session = duration_text(mine["engagement_s_per_session"])
        numbers = f"({per_session} per session, {times_text(engagement)} all users)"
        out.append(_Behaviour(f"high engagement {numbers}", "engaged") if engagement > 1
                   else _Behaviour(f"low engagement {numbers}", "skimmers"))
    if purchase is not None and purchase <= LOW_PURCHASE_RATIO:
        rates = f"{percent(mine['purchase_rate'])} vs {percent(base['purchase_rate'])}"
        out.append(_Behaviour(f"few purchases ({rates})", "rare buyers"))
    return out


# ---------------------------------------------------------------------------------------------
# Sentence and keywords.
# ---------------------------------------------------------------------------------------------


def _sentence(topics: list[Topic], time: _Time, behaviours: list[_Behaviour]) -> str:
    parts = [_topic_clause(topics)]
    if time.phrase:
        parts.append(f"especially {time.phrase}" if time.keyword else f"mostly {time.phrase}")
    if behaviours:
        parts.append("with " + " and ".join(b.phrase for b in behaviours))
    elif not time.phrase:
        parts.append("at ordinary hours and with typical sessions" if time.timed else "with typical sessions")
    return ", ".join(parts) + "."


def _summary_text(topics: list[Topic], time: _Time, behaviours: list[_Behaviour]) -> str:
    """The richest sentence within :data:`MAX_WORDS` words."""
    named = topics[:2] if len(topics) > 1 and topics[1].score >= SECOND_TOPIC_SCORE * topics[0].score \
        else topics[:1]
    options = [(named, behaviours[:2]), (named, behaviours[:1]), (named[:1], behaviours[:1])]
    text = ""
    for shown, said in options:
        text = _sentence(shown, time, said)
        if len(text.split()) <= MAX_WORDS:
            return text
    return text


def _keywords(topics: list[Topic], time: _Time, behaviours: list[_Behaviour]) -> list[str]:
    """Exactly three distinct lower-case keywords (see the module rules)."""
    topic_words = [t.keyword for t in topics] or [NO_TOPIC]
    behaviour_words = [b.keyword for b in behaviours]
    lean = [time.lean] if time.lean else []
    second = [time.keyword] if time.keyword else topic_words[1:2]
    fallback = ([] if time.phrase or not time.timed else [ANY_TIME]) + ([] if behaviours else [TYPICAL])
    candidates = [topic_words[0], *second, *behaviour_words[:1], *lean, *topic_words[1:],
                  *behaviour_words[1:], *fallback, *LAST_RESORT]
    out: list[str] = []
    for word in candidates:
        word = _UNSAFE.sub("", word.lower()).strip()
        if word and word not in out and not EMAIL_LIKE.search(word):
            out.append(word)
    return out[:3]


def interpret_cluster(profile: pd.DataFrame, cluster: int,
                      categories: dict[str, str] | None = None) -> Interpretation:
    """The sentence and keywords for ``cluster`` of one clustering's ``cluster_profiles`` rows.

    ``profile`` holds every row of the clustering, the baseline (cluster -1) included;
    ``categories`` maps registrable domains to categories (None: the bundled map).
    """
    if not (profile["cluster"] == cluster).any():
        raise ValueError(f"cluster {cluster} has no rows in the profile")
    if categories is None:
        from beha2vec.features import load_categories

        categories = load_categories("")
    topics = cluster_topics(profile, cluster, categories)
    time = _time(profile, cluster)
    behaviours = _behaviours(profile, cluster)
    return Interpretation(int(cluster), _summary_text(topics, time, behaviours),
                          _keywords(topics, time, behaviours))


def interpret_all(profile: pd.DataFrame, categories: dict[str, str] | None = None) -> list[Interpretation]:
    """An :class:`Interpretation` for every cluster of the profile that is neither the baseline nor
    small, by cluster number."""
    if categories is None:
        from beha2vec.features import load_categories

        categories = load_categories("")
    small = (profile["is_small"] if "is_small" in profile else pd.Series(False, index=profile.index))
    small = small.astype("boolean").fillna(False).astype(bool)
    skipped = {int(c) for c in profile.loc[small, "cluster"]} | {BASELINE}
    clusters = sorted({int(c) for c in profile["cluster"]} - skipped)
    return [interpret_cluster(profile, c, categories) for c in clusters]
