"""The question answerer behind ``beha2vec ask`` when no LLM endpoint is configured.

Without an endpoint the command still answers what the tables answer by themselves, deterministically
(the same question on the same frames always gives the same text) and citing where each number comes
from: ``cluster_profiles`` (one clustering, the all-users baseline cluster -1 included), and where
given ``cluster_interpretations`` and ``cluster_comparisons``. Every number in an answer is read from
those frames. A question it cannot read gets ``answered=False``, the list below and how to configure
an endpoint.

Questions it understands (English, case-insensitive, keyword matching; N, A, B are cluster numbers,
X a domain, path, page category or topic word):

* ``help``: this list;
* ``how many clusters are there?``, ``how many users?``, ``how many users are in cluster N?``;
* ``which cluster is the largest?`` / ``the smallest?``: users and share of all clustered users;
* ``describe cluster N`` / ``what is cluster N?``: its interpretation (sentence and keywords) where one
  exists, users and share, most distinctive topics (share of visits, lift), median session duration
  and pages per session against all users;
* ``which cluster visits X most?``: X is matched word by word against the listed keys of the first of
  the ``unit``, ``domain``, ``path`` facets that has a match, and against their topic names and domain
  categories; the clusters with the highest share of visits to the matching keys, top 3;
* ``what is cluster N's top domain?`` (or page, unit), ``which cluster's top domain is X?``;
* ``which cluster has the longest sessions?`` (shortest sessions, most or fewest pages per session, most
  or least engaged, highest purchase rate, most revenue, most sessions per user, most bots), from the
  ``summary`` facet, and ``what is cluster N's purchase rate?`` (or any of those);
* ``when is cluster N active?``: the hours whose share of session starts most exceeds all users' and
  the weekend share against all users; ``which cluster is most active at night?`` (late night,
  night, morning, midday, afternoon, evening, weekend, weekdays);
* ``compare cluster A and B``: from ``cluster_comparisons`` where it holds the pair, else their summary
  numbers side by side.

A cluster number the profile lacks is answered with the list of clusters; small clusters take part
and are flagged "(small)". Interpretations and comparisons written for another clustering (their
``clustering`` is not the profile's ``model/algorithm/k``) are ignored. Shares of visits are lower
bounds (``≥``), as the profile lists only each cluster's top keys. Keys are shown as the offline
interpreter cleans them (no ``?query`` or ``#fragment``), and keys that look like e-mail addresses are
never shown nor matched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd

from beha2vec.interpret_offline import (
    BASELINE,
    DAY_PARTS,
    EMAIL_LIKE,
    TOPIC_FACETS,
    WEEKEND,
    as_number,
    clean_key,
    cluster_topics,
    day_part,
    distribution,
    duration_text,
    facet_rows,
    hour_window,
    path_folders,
    percent,
    summary_values,
    times_text,
    topic_of,
)

QUESTIONS = (
    "help",
    "how many clusters are there? / how many users? / how many users are in cluster N?",
    "which cluster is the largest? / the smallest?",
    "describe cluster N / what is cluster N?",
    "which cluster visits X most? (X: a domain, path, page category or topic word)",
    "what is cluster N's top domain? (or top page, top unit) / which cluster's top domain is X?",
    "which cluster has the longest sessions? (or shortest sessions, most or fewest pages, most or least "
    "engaged, highest purchase rate, most revenue, most sessions per user, most bots) / what is cluster "
    "N's purchase rate?",
    "when is cluster N active? / which cluster is most active at night? (or late night, in the morning, "
    "midday, afternoon, evening, at weekends, on weekdays)",
    "compare cluster A and B",
)
ENDPOINT_SETUP = ("set --set llm.base_url=<url> and --set llm.model=<model>, with the API key in the "
                  "environment variable named by llm.api_key_env")
NEEDS_ENDPOINT = f"`beha2vec ask` needs an LLM endpoint for this question: {ENDPOINT_SETUP}."
TOP = 3
MAX_KEY_CHARS = 80
VISIT_FAMILIES = tuple(f.removesuffix("_distinctive") for f in TOPIC_FACETS)  # unit, domain, path
FACET_NOUN = {"unit": "visit unit", "domain": "domain", "path": "page"}

_CLUSTER = re.compile(r"\b(?:cluster|segment|group)s?\s*(?:#|no\.?|number)?\s*(-?\d+)\b")
_PAIR = re.compile(r"(-?\d+)\s*(?:and|&|vs\.?|versus|with|to|from|,)\s*(?:cluster\s*)?#?\s*(-?\d+)\b")
_HELP = re.compile(r"(help|usage|\?|what can (i|you) (ask|answer|do)( you)?( offline)?|"
                   r"what questions can (i|you) ask( you)?)")
_COMPARE = re.compile(r"\b(compare|comparison|differ\w*|vs|versus|contrast)\b")
_WHEN = re.compile(r"\b(when|what time|active|peak|busiest|hours?|time of (the )?day|day of (the )?week)\b")
_PART = re.compile(r"\b(?:at|in|during|on|over|by)\s+(?:the\s+)?(late[ -]?nights?|nights?|mornings?|midday|"
                   r"noon|lunch ?time|afternoons?|evenings?|weekends?|weekdays?|work ?days?)\b")
_TOP = re.compile(r"\b(?:top|most (?:visited|popular|common|frequent)|main|favou?rite)\s+(?:\d+\s+)?"
                  r"(domain|site|website|page|path|url|unit|category|section|topic)s?\b")
_COUNT = re.compile(r"\bhow many\b|\bnumber of (clusters|segments|groups|users|people|visitors)\b")
_PEOPLE = re.compile(r"\b(users|people|visitors|members)\b")
_DOING = re.compile(r"\b(visit\w*|read\w*|watch\w*|buy\w*|bought|purchas\w*|uses?|using|go|goes|click\w*|"
                    r"views?|viewed|comes?)\b")
_SIZE = re.compile(r"\b(largest|biggest|smallest|tiniest)\b(?!\s+share)|\b(most|fewest|least) "
                   r"(users|people|members|visitors)\b|\bsizes?\b")
_SMALLEST = re.compile(r"\b(smallest|tiniest|fewest|least)\b")
_DESCRIBE = re.compile(r"\b(describe|description|what is|what's|what are|who is|who are|tell me|about|"
                       r"explain|summar\w*|profile|characteri[sz]\w*|look like)\b")
_VISITS = re.compile(r"\b(most|more|mostly|highest share|favou?rs?|prefers?)\b")
_WHICH = re.compile(r"\b(which|what|who|whose)\b")
_LOW = re.compile(r"\b(least|lowest|shortest|shorter|fewest|fewer|smallest|minimum|less|lower|worst|rarely|"
                  r"few|short)\b")
_WORD = re.compile(r"[a-z0-9]+")
_FILLER = frozenset("""
    which what who whose cluster clusters segment segments group groups users user people visitors
    visit visits visited visiting read reads reading watch watches watching use uses using browse browses
    go goes to like likes into is are was has have had the a an of on most more mostly highest largest
    biggest share does do at pages page site sites section sections content articles about for in with by
    from than others other often frequently spend spends spending time its their prefer prefers favour
    favours favor favors as top domain domains path paths url urls unit units category categories website
    websites
""".split())
_PART_WORDS = (("late", "late night"), ("night", "night"), ("morning", "mornings"), ("midday", "midday"),
               ("noon", "midday"), ("lunch", "midday"), ("afternoon", "afternoons"), ("evening", "evenings"),
               ("weekend", "weekend"), ("weekday", "weekdays"), ("work", "weekdays"))
_TOP_FACETS = {"domain": ("domain", "unit", "path"), "site": ("domain", "unit", "path"),
               "website": ("domain", "unit", "path"), "page": ("path", "unit", "domain"),
               "path": ("path", "unit", "domain"), "url": ("path", "unit", "domain")}


@dataclass(frozen=True)
class Answer:
    """One reply of ``beha2vec ask``: the text, where its numbers come from, and whether it answers
    (False: the question needs an LLM endpoint)."""

    text: str
    sources: tuple[str, ...]
    answered: bool


@dataclass(frozen=True)
class _Metric:
    key: str
    noun: str
    high: str
    low: str
    pattern: re.Pattern[str]
    show: Callable[[float], str]
    missing: str  # why a profile may lack the key


def _decimal(value: float) -> str:
    return f"{value:.1f}"


def _usd(value: float) -> str:
    return f"{value:,.2f} USD"


_METRICS = (
    _Metric("sessions_per_user", "sessions per user", "the most sessions per user",
            "the fewest sessions per user",
            re.compile(r"sessions? per user|\b(most|fewest|least|more|fewer) sessions\b|\bmost often\b|"
                       r"\bhow often\b|\b(loyal|frequent|returning)\b|\bcomes? back\b"),
            _decimal, "no session was profiled"),
    _Metric("median_session_duration_s", "median session duration", "the longest sessions",
            "the shortest sessions",
            re.compile(r"\b(long|longest|longer|short|shortest|shorter)\s+(sessions?|visits?)\b|"
                       r"\bsessions?\s+(length|duration)s?\b|\b(sessions?|visits?) (are|is) (the )?(longest|"
                       r"shortest|long|short)\b|\bhow long\b|\bduration\b|\bstays? (the )?longest\b"),
            duration_text, "no session was profiled"),
    _Metric("page_views_per_session", "page views per session", "the most pages per session",
            "the fewest pages per session",
            re.compile(r"\b(most|fewest|least|more|fewer|many|few)\s+(pages|page ?views)\b|"
                       r"\bpages? ?(views? )?per (session|visit)\b"),
            _decimal, "no session was profiled"),
    _Metric("engagement_s_per_session", "engagement per session", "the most engaged users",
            "the least engaged users", re.compile(r"\bengag\w*"),
            duration_text, "engagement keys appear only where events carry an engagement time"),
    _Metric("revenue_per_user", "revenue per user", "the most revenue per user", "the least revenue per user",
            re.compile(r"\brevenue\b|\bmoney\b|\bspends? (the )?most\b"),
            _usd, "purchase keys appear only where some clustered user purchased"),
    _Metric("purchase_rate", "purchase rate", "the highest purchase rate", "the lowest purchase rate",
            re.compile(r"\b(purchas\w*|buy\w*|buyers?|bought|convert\w*|conversion)\b"),
            percent, "purchase keys appear only where some clustered user purchased"),
    _Metric("bot_share", "share of bot sessions", "the most bot sessions", "the fewest bot sessions",
            re.compile(r"\bbots?\b"), percent, "no session was profiled"),
)
_COMPARED = ("median_session_duration_s", "page_views_per_session", "engagement_s_per_session",
             "purchase_rate", "sessions_per_user")


@dataclass(frozen=True)
class _Tables:
    """The frames, with what most questions need of them: the clusters, their sizes and small flags."""

    profiles: pd.DataFrame
    interpretations: pd.DataFrame | None
    comparisons: pd.DataFrame | None
    categories: dict[str, str]
    clusters: tuple[int, ...]
    users: dict[int, float]
    users_source: str
    small: frozenset[int]

    @property
    def total(self) -> float | None:
        """Clustered users: the baseline's count, else the clusters' sum."""
        if BASELINE in self.users:
            return self.users[BASELINE]
        known = [self.users[c] for c in self.clusters if c in self.users]
        return sum(known) if known else None

    def label(self, cluster: int) -> str:
        return f"cluster {cluster}" + (" (small)" if cluster in self.small else "")

    def size(self, cluster: int, short: bool = False) -> str:
        """'400 users, 40% of the 1,000 clustered users' ('400 users, 40%' when ``short``)."""
        users, total = self.users.get(cluster), self.total
        if users is None:
            return "size unknown"
        if not total:
            return f"{_count(users)} users"
        of = "" if short else f" of the {_count(total)} clustered users"
        return f"{_count(users)} users, {percent(users / total)}{of}"


def _reply(text: str, sources: Iterable[str] = (), answered: bool = True) -> Answer:
    return Answer(text, tuple(dict.fromkeys(sources)), answered)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _count(value: float) -> str:
    return f"{round(value):,}"


def _listing(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _strings(value: object) -> list[str]:
    """A list column's cell (list, array or missing) as strings."""
    if not isinstance(value, Iterable) or isinstance(value, str):
        return []
    return [str(v) for v in value]


def _profile_rows(profiles: pd.DataFrame, facets: Iterable[str], key: str | None = None) -> pd.DataFrame:
    rows = profiles[profiles["facet"].isin(list(facets))]
    return rows if key is None else rows[rows["key"] == key]


def _tables(profiles: pd.DataFrame, interpretations: pd.DataFrame | None, comparisons: pd.DataFrame | None,
            categories: dict[str, str]) -> _Tables:
    """Cluster sizes from the summary facet (the ``users`` column where a cluster has none there)."""
    clusters = tuple(sorted({int(c) for c in profiles["cluster"].dropna()} - {BASELINE}))
    users: dict[int, float] = {}
    for row in _profile_rows(profiles, ["summary"], "users").itertuples():
        if (value := as_number(row.value)) is not None:
            users[int(row.cluster)] = value
    source = "cluster_profiles: summary/users"
    if "users" in profiles and any(c not in users for c in (*clusters, BASELINE)):
        for cluster, value in profiles.groupby("cluster")["users"].max().items():
            if int(cluster) not in users and (number := as_number(value)) is not None:
                users[int(cluster)] = number
                source = "cluster_profiles: summary/users, users"
    small: set[int] = set()
    if "is_small" in profiles:
        flags = profiles["is_small"].astype("boolean").fillna(False).astype(bool)
        small = {int(c) for c in profiles.loc[flags, "cluster"]} - {BASELINE}
    return _Tables(profiles, _same_clustering(interpretations, profiles),
                   _same_clustering(comparisons, profiles), categories, clusters, users, source,
                   frozenset(small))


def _same_clustering(frame: pd.DataFrame | None, profiles: pd.DataFrame) -> pd.DataFrame | None:
    """The rows of ``frame`` written for the profiled clustering: after a new profile, an older
    interpretation or comparison describes other clusters under the same numbers."""
    if frame is None or "clustering" not in frame or not {"model", "algorithm", "k"} <= set(profiles):
        return frame
    first = profiles.iloc[0]
    return frame[frame["clustering"] == f"{first['model']}/{first['algorithm']}/k={first['k']}"]


# ---------------------------------------------------------------------------------------------
# Reading the question.
# ---------------------------------------------------------------------------------------------


def _normal(question: str) -> str:
    return " ".join(question.lower().replace("’", "'").split()).strip(" ?!.")


def _mentioned(q: str) -> list[int]:
    """Cluster numbers named in the question, in order; a compare question's bare pair counts too."""
    numbers = [int(n) for n in _CLUSTER.findall(q)]
    if _COMPARE.search(q) and len(set(numbers)) < 2 and (pair := _PAIR.search(q)):
        numbers += [int(n) for n in pair.groups()]
    return list(dict.fromkeys(numbers))


def _subject(text: str) -> str:
    """What the question is about once the question words are gone: 'youtube.com', 'news'."""
    words = []
    for token in text.split():
        token = token.strip("\"'()[]{},;:").removesuffix("'s")
        if token and token not in _FILLER:
            words.append(token)
    return " ".join(words)


def _has(tokens: frozenset[str], word: str) -> bool:
    """The word, or its singular or plural, is one of the tokens."""
    return word in tokens or word.removesuffix("s") in tokens or f"{word}s" in tokens


# ---------------------------------------------------------------------------------------------
# Visit facets: keys, their topic names, matching.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    """One listed key of a visit facet of one cluster."""

    cluster: int
    raw: str
    shown: str  # cleaned, shortened
    name: str  # topic name
    words: frozenset[str]  # of the key, its topic name and category
    share: float | None
    base_share: float | None
    lift: float | None


def _keys(t: _Tables, family: str, clusters: Iterable[int], by_share_only: bool = False) -> list[_Key]:
    """The usable keys of ``family`` (and its distinctive facet) of ``clusters``, in rank order."""
    facets = [family] if by_share_only else [family, f"{family}_distinctive"]
    listed = _profile_rows(t.profiles, [family, f"{family}_distinctive"])["key"].dropna().map(clean_key)
    folders = path_folders(k for k in listed.dropna() if k.startswith("/"))
    out = []
    for cluster in clusters:
        for facet in facets:
            for row in facet_rows(t.profiles, cluster, facet):
                key = clean_key(row.get("key"))
                if key is None or EMAIL_LIKE.search(key):
                    continue
                topic = topic_of(key, folders, t.categories)
                if topic is None:
                    continue
                name, _, category = topic
                words = frozenset(_WORD.findall(f"{key} {name} {category or ''}"))
                shown = key if len(key) <= MAX_KEY_CHARS else key[:MAX_KEY_CHARS] + "…"
                out.append(_Key(cluster, str(row["key"]), shown, name, words, as_number(row.get("share")),
                                as_number(row.get("base_share")), as_number(row.get("lift"))))
    return out


def _matches(key: _Key, subject: str) -> bool:
    words = _WORD.findall(subject)
    return bool(words) and all(_has(key.words, w) for w in words)


def _shown_subject(subject: str) -> str:
    cleaned = clean_key(subject)
    return "that" if cleaned is None or EMAIL_LIKE.search(cleaned) else f"'{cleaned}'"


def _share_text(share: float | None, lift: float | None, bound: bool = False) -> str:
    if share is None:
        return "share unknown"
    text = ("≥" if bound else "") + f"{percent(share)} of its visits"
    return text + (f", {times_text(lift)} all users" if lift is not None else "")


# ---------------------------------------------------------------------------------------------
# The intents, each a function of the normalised question that answers or declines (None).
# ---------------------------------------------------------------------------------------------


def _help(q: str, t: _Tables) -> Answer | None:
    if q and not _HELP.fullmatch(q):
        return None
    return _reply(f"{_offline_list()}\nOther questions need an LLM endpoint: {ENDPOINT_SETUP}.")


def _offline_list() -> str:
    return "Offline, `beha2vec ask` answers:\n" + "\n".join(f"- {line}" for line in QUESTIONS)


def _unknown(q: str, t: _Tables) -> Answer | None:
    missing = [n for n in _mentioned(q) if n not in t.clusters]
    if not missing:
        return None
    known = _listing([str(c) + (" (small)" if c in t.small else "") for c in t.clusters])
    lead = (f"Cluster {BASELINE} is the all-users baseline, not a cluster" if missing[0] == BASELINE
            else f"There is no cluster {missing[0]}")
    return _reply(f"{lead}; the clusters are {known}.", ["cluster_profiles"])


def _compare(q: str, t: _Tables) -> Answer | None:
    numbers = _mentioned(q)
    if not _COMPARE.search(q) or len(numbers) < 2:
        return None
    a, b = numbers[:2]
    found = _comparison(t, a, b)
    if found is not None:
        return found
    lines = [f"{_cap(t.label(a))} vs {t.label(b)} (all users in brackets):",
             f"- users: {t.size(a, short=True)} vs {t.size(b, short=True)}"]
    sources = [t.users_source]
    mine, theirs = summary_values(t.profiles, a), summary_values(t.profiles, b)
    base = summary_values(t.profiles, BASELINE)
    ratios = []
    for metric in (m for m in _METRICS if m.key in _COMPARED):
        if metric.key in mine and metric.key in theirs:
            all_users = f" ({metric.show(base[metric.key])})" if metric.key in base else ""
            pair = f"{metric.show(mine[metric.key])} vs {metric.show(theirs[metric.key])}"
            lines.append(f"- {metric.noun}: {pair}{all_users}")
            sources.append(f"cluster_profiles: summary/{metric.key}")
            if mine[metric.key] > 0 and theirs[metric.key] > 0:
                ratios.append((abs(math.log(mine[metric.key] / theirs[metric.key])), metric.noun))
    topics = [cluster_topics(t.profiles, c, t.categories)[:2] for c in (a, b)]
    if any(topics):
        shown = [", ".join(f"{x.name} (≥{percent(x.share)})" for x in chosen) or "none" for chosen in topics]
        lines.append(f"- distinctive topics: {shown[0]} vs {shown[1]}")
        sources.append(_topic_source(t, a))
    if ratios:
        lines.append(f"They differ most in {max(ratios)[1]}.")
    return _reply("\n".join(lines), sources)


def _comparison(t: _Tables, a: int, b: int) -> Answer | None:
    """The stored comparison of the pair, either way round."""
    frame = t.comparisons
    if frame is None or frame.empty:
        return None
    pair = frame[((frame["cluster_a"] == a) & (frame["cluster_b"] == b))
                 | ((frame["cluster_a"] == b) & (frame["cluster_b"] == a))]
    if pair.empty:
        return None
    row = pair.sort_values(["cluster_a", "cluster_b", "summary"]).iloc[0]
    lines = [f"{_cap(t.label(a))} vs {t.label(b)}: {row['summary']}"]
    lines += [f"- {item}" for item in _strings(row.get("evidence"))]
    return _reply("\n".join(lines), ["cluster_comparisons"])


def _topic_source(t: _Tables, cluster: int) -> str:
    """The facets the interpreter's topics of ``cluster`` come from (its rule: the first family it has)."""
    mine = set(t.profiles.loc[t.profiles["cluster"] == cluster, "facet"])
    family = next((f for f in VISIT_FAMILIES if {f, f"{f}_distinctive"} & mine), VISIT_FAMILIES[0])
    return f"cluster_profiles: {family}_distinctive, {family}"


def _timing(q: str, t: _Tables) -> Answer | None:
    part = _PART.search(q)
    if not (_WHEN.search(q) or part):
        return None
    numbers = _mentioned(q)
    if numbers:
        return _timing_of(t, numbers[0])
    if part:
        word = next(name for prefix, name in _PART_WORDS if part.group(1).startswith(prefix))
        return _most_active(t, word)
    lines = [f"- {t.label(c)}: {_window(t, c) or 'no hour stands out'}" for c in t.clusters]
    return _reply("When each cluster starts its sessions, against all users:\n" + "\n".join(lines),
                  ["cluster_profiles: hour"])


def _hours(t: _Tables, cluster: int) -> dict[int, tuple[float, float]]:
    """Hour of day → (share, base share) of session starts; keys that are no hour are left out."""
    out = {}
    for key, value in distribution(t.profiles, cluster, "hour").items():
        try:
            out[int(float(key))] = value
        except ValueError:
            continue
    return out


def _window(t: _Tables, cluster: int) -> str | None:
    """'late nights (22–02 h): 50% of its session starts vs 17% for all users (3.0×)'."""
    window = hour_window(t.profiles, cluster)
    if window is None:
        return None
    first, size, peak, lift = window
    hours = _hours(t, cluster)
    share = sum(hours[(first + i) % 24][0] for i in range(size) if (first + i) % 24 in hours)
    base = sum(hours[(first + i) % 24][1] for i in range(size) if (first + i) % 24 in hours)
    return (f"{day_part(peak)[1]} ({first:02d}–{(first + size) % 24:02d} h): {percent(share)} of its "
            f"session starts vs {percent(base)} for all users ({times_text(lift)})")


def _timing_of(t: _Tables, cluster: int) -> Answer:
    hours = _hours(t, cluster)
    week = distribution(t.profiles, cluster, "weekday")
    if not hours and not week:
        return _reply(f"The profile has no hour or weekday of session starts for {t.label(cluster)} "
                      "(the data has no usable timestamps).", ["cluster_profiles: hour, weekday"])
    lines, sources = [], []
    if hours:
        window = _window(t, cluster)
        lines.append(f"{_cap(t.label(cluster))} is most active, against all users, in {window}." if window
                     else f"No hour stands out for {t.label(cluster)}: no hour has more of its session "
                          "starts than all users'.")
        busiest, (share, _) = max(hours.items(), key=lambda kv: (kv[1][0], -kv[0]))
        lines.append(f"Its busiest hour is {busiest:02d} h ({percent(share)} of its session starts).")
        sources.append("cluster_profiles: hour")
    if week:
        share = sum(week[d][0] for d in WEEKEND if d in week)
        base = sum(week[d][1] for d in WEEKEND if d in week)
        lift = f" ({times_text(share / base)})" if base else ""
        lines.append(f"Weekends (Saturday and Sunday): {percent(share)} of its session starts vs "
                     f"{percent(base)} for all users{lift}.")
        sources.append("cluster_profiles: weekday")
    return _reply(" ".join(lines), sources)


def _part_hours(part: str) -> tuple[int, int, str]:
    """(first hour, last hour, phrase) of a part of the day as the interpreter names them; 'night' as
    people say 'at night' spans its late nights and nights."""
    parts = {keyword: (first, last, phrase) for first, last, keyword, phrase in DAY_PARTS}
    if part == "night":
        return parts["late night"][0], parts["night"][1], "the night"
    return parts[part]


def _most_active(t: _Tables, part: str) -> Answer:
    """The clusters with the highest share of session starts in a part of the day or week."""
    if part in ("weekend", "weekdays"):
        facet, phrase = "weekday", "at weekends" if part == "weekend" else "on weekdays"

        def shares(cluster: int) -> list[tuple[float, float]]:
            week = distribution(t.profiles, cluster, "weekday")
            return [v for day, v in week.items() if (day in WEEKEND) == (part == "weekend")]
    else:
        first, last, name = _part_hours(part)
        facet, phrase = "hour", f"in {name} ({first:02d}–{(last + 1) % 24:02d} h)"
        wanted = {(first + i) % 24 for i in range((last - first) % 24 + 1)}

        def shares(cluster: int) -> list[tuple[float, float]]:
            return [v for hour, v in _hours(t, cluster).items() if hour in wanted]
    ranked = []
    for cluster in t.clusters:
        if chosen := shares(cluster):
            ranked.append((sum(s for s, _ in chosen), sum(b for _, b in chosen), cluster))
    if not ranked:
        return _reply(f"The profile has no {facet} of session starts (the data has no usable timestamps).",
                      [f"cluster_profiles: {facet}"])
    ranked.sort(key=lambda r: (-r[0], r[2]))
    share, base, best = ranked[0]
    lift = f" ({times_text(share / base)})" if base else ""
    others = "; ".join(f"{t.label(c)} {percent(s)}" for s, _, c in ranked[1:TOP])
    text = (f"{_cap(t.label(best))} starts the largest share of its sessions {phrase}: {percent(share)} vs "
            f"{percent(base)} for all users{lift}." + (f" Next: {others}." if others else ""))
    return _reply(text, [f"cluster_profiles: {facet}"])


def _top(q: str, t: _Tables) -> Answer | None:
    match = _TOP.search(q)
    if match is None:
        return None
    order = _TOP_FACETS.get(match.group(1), ("unit", "domain", "path"))
    numbers = _mentioned(q)
    if numbers:
        return _top_of(t, numbers[0], order)
    is_x = re.search(r"\b(?:is|are|=)\s+(.+)$", q[match.end():]) or re.search(r"\bhas\s+(.+?)\s+as\b", q)
    subject = _subject(is_x.group(1)) if is_x else ""
    family = next((f for f in order if not _profile_rows(t.profiles, [f]).empty), None)
    if family is None:
        return _reply("The profile has no visit facets (unit, domain, path).", ["cluster_profiles"])
    tops = {}
    for cluster in t.clusters:
        keys = _keys(t, family, [cluster], by_share_only=True)
        if keys:
            tops[cluster] = keys[0]
    noun = FACET_NOUN[family]
    if not tops:
        return _reply(f"The profile lists no usable {noun}s.", [f"cluster_profiles: {family}"])
    listing = "; ".join(f"{t.label(c)} {k.shown} ({percent(k.share) if k.share is not None else '?'})"
                        for c, k in tops.items())
    sources = [f"cluster_profiles: {family}"]
    if not subject:
        return _reply(f"Each cluster's top {noun} by share of visits: {listing}.", sources)
    hits = [c for c, k in tops.items() if _matches(k, subject)]
    if not hits:
        return _reply(f"No cluster's top {noun} is {_shown_subject(subject)}. "
                      f"The top {noun}s are: {listing}.", sources)
    lines = [f"The top {noun} of {t.label(c)} is {tops[c].shown} "
             f"({_share_text(tops[c].share, tops[c].lift)})." for c in hits]
    return _reply(_cap(" ".join(lines)), sources)


def _top_of(t: _Tables, cluster: int, order: tuple[str, ...]) -> Answer:
    for family in order:
        keys = _keys(t, family, [cluster], by_share_only=True)
        if keys:
            first, rest = keys[0], keys[1:TOP]
            text = (f"The top {FACET_NOUN[family]} of {t.label(cluster)} is {first.shown} "
                    f"({_share_text(first.share, first.lift)})")
            if rest:
                text += "; then " + "; ".join(f"{k.shown} ({_share_text(k.share, k.lift)})" for k in rest)
            return _reply(text + ".", [f"cluster_profiles: {family}"])
    return _reply(f"The profile lists no visit units, domains or paths for {t.label(cluster)}.",
                  ["cluster_profiles"])


def _count_question(q: str, t: _Tables) -> Answer | None:
    if not _COUNT.search(q) or _DOING.search(q):  # 'how many users visit X' is no size question
        return None
    numbers = _mentioned(q)
    if _PEOPLE.search(q) and numbers:
        return _reply(f"{_cap(t.label(numbers[0]))} has {t.size(numbers[0])}.", [t.users_source])
    small = [f"cluster {c}" for c in sorted(t.small)]
    noted = f" {_cap(_listing(small))} {'is' if len(small) == 1 else 'are'} small." if small else ""
    total = t.total
    name = ""
    if {"model", "algorithm", "k"} <= set(t.profiles.columns):
        first = t.profiles.iloc[0]
        if first[["model", "algorithm", "k"]].notna().all():
            name = f" (clustering {first['model']} / {first['algorithm']}, k = {first['k']})"
    if _PEOPLE.search(q) and total is not None:
        text = f"{_count(total)} users are clustered, in {len(t.clusters)} clusters{name}."
    else:
        users = f" of {_count(total)} clustered users" if total is not None else ""
        text = f"There are {len(t.clusters)} clusters{users}{name}."
    return _reply(text + noted, ["cluster_profiles", t.users_source])


def _metric(q: str, t: _Tables) -> Answer | None:
    metric = next((m for m in _METRICS if m.pattern.search(q)), None)
    if metric is None:
        return None
    source = [f"cluster_profiles: summary/{metric.key}"]
    base = summary_values(t.profiles, BASELINE).get(metric.key)
    values = {c: v for c in t.clusters if (v := summary_values(t.profiles, c).get(metric.key)) is not None}
    if not values:
        return _reply(f"The profile has no {metric.noun} ({metric.key}): {metric.missing}.", source)
    all_users = f"{metric.show(base)} for all users" if base is not None else "all users unknown"
    numbers = _mentioned(q)
    if numbers:
        cluster = numbers[0]
        if cluster not in values:
            return _reply(f"The profile has no {metric.noun} for {t.label(cluster)}.", source)
        lift = f" ({times_text(values[cluster] / base)})" if base else ""
        return _reply(f"The {metric.noun} of {t.label(cluster)} is {metric.show(values[cluster])}, against "
                      f"{all_users}{lift}.", source)
    low = bool(_LOW.search(q))
    ranked = sorted(values, key=lambda c: ((values[c] if low else -values[c]), c))
    best = ranked[0]
    lift = f" ({times_text(values[best] / base)})" if base else ""
    others = "; ".join(f"{t.label(c)} {metric.show(values[c])}" for c in ranked[1:TOP])
    text = (f"{_cap(t.label(best))} has {metric.low if low else metric.high}: {metric.noun} "
            f"{metric.show(values[best])}, against {all_users}{lift}."
            + (f" Next: {others}." if others else ""))
    return _reply(text, source)


def _size(q: str, t: _Tables) -> Answer | None:
    if not _SIZE.search(q) or not t.clusters:
        return None
    numbers = _mentioned(q)
    if numbers:
        return _reply(f"{_cap(t.label(numbers[0]))} has {t.size(numbers[0])}.", [t.users_source])
    smallest = bool(_SMALLEST.search(q))
    known = [c for c in t.clusters if c in t.users]
    ranked = sorted(known, key=lambda c: ((t.users[c] if smallest else -t.users[c]), c))
    if not ranked:
        return _reply("The profile has no cluster sizes.", ["cluster_profiles"])
    best = ranked[0]
    others = "; ".join(f"{t.label(c)} ({t.size(c, short=True)})" for c in ranked[1:TOP])
    text = (f"{_cap(t.label(best))} is the {'smallest' if smallest else 'largest'}: {t.size(best)}."
            + (f" Next: {others}." if others else ""))
    return _reply(text, [t.users_source])


def _describe(q: str, t: _Tables) -> Answer | None:
    numbers = _mentioned(q)
    if not numbers or not (_DESCRIBE.search(q) or _CLUSTER.fullmatch(q)):
        return None
    cluster = numbers[0]
    lines = [f"{_cap(t.label(cluster))}: {t.size(cluster)}."]
    sources = [t.users_source]
    interpretation = _interpretation(t, cluster)
    if interpretation is not None:
        lines.append(interpretation)
        sources.append("cluster_interpretations")
    topics = cluster_topics(t.profiles, cluster, t.categories)[:TOP]
    if topics:
        shown = (f"{x.name} (≥{percent(x.share)} of its visits"
                 + (f", {times_text(x.lift)} all users)" if x.lift else ")") for x in topics)
        lines.append("Most distinctive: " + "; ".join(shown) + ".")
        sources.append(_topic_source(t, cluster))
    mine, base = summary_values(t.profiles, cluster), summary_values(t.profiles, BASELINE)
    facts = []
    for metric in (m for m in _METRICS if m.key in ("median_session_duration_s", "page_views_per_session")):
        if metric.key in mine:
            all_users = f" (all users {metric.show(base[metric.key])})" if metric.key in base else ""
            facts.append(f"{metric.noun} {metric.show(mine[metric.key])}{all_users}")
            sources.append(f"cluster_profiles: summary/{metric.key}")
    if facts:
        lines.append(_cap("; ".join(facts)) + ".")
    return _reply(" ".join(lines), sources)


def _interpretation(t: _Tables, cluster: int) -> str | None:
    """The first replicate's sentence and keywords of ``cluster``, with the consistency if known."""
    frame = t.interpretations
    if frame is None or frame.empty:
        return None
    rows = frame[frame["cluster"] == cluster]
    if rows.empty:
        return None
    order = [c for c in ("replicate", "backend", "model", "summary") if c in rows]
    row = rows.sort_values(order).iloc[0] if order else rows.iloc[0]
    keywords = _strings(row.get("keywords"))
    text = f"Interpretation: {row['summary']}"
    if keywords:
        text += f" Keywords: {', '.join(keywords)}."
    consistency = as_number(row.get("consistency"))
    return text + (f" Consistency across replicates: {consistency:.2f}." if consistency is not None else "")


def _visits(q: str, t: _Tables) -> Answer | None:
    if not (_VISITS.search(q) and _WHICH.search(q)):
        return None
    subject = _subject(q)
    if not _WORD.search(subject):
        return None
    for family in VISIT_FAMILIES:
        keys = [k for k in _keys(t, family, t.clusters) if _matches(k, subject)]
        if keys:
            return _visits_answer(t, family, keys, subject)
    return _needs_endpoint(f"No cluster's profile lists a visit unit, domain or path matching "
                           f"{_shown_subject(subject)}.")


def _visits_answer(t: _Tables, family: str, keys: list[_Key], subject: str) -> Answer:
    """The clusters by their share of visits to the matching keys, each raw key counted once."""
    totals: dict[int, list[float]] = {}
    seen: set[tuple[int, str]] = set()
    for key in keys:
        if (key.cluster, key.raw) in seen or key.share is None:
            continue
        seen.add((key.cluster, key.raw))
        total = totals.setdefault(key.cluster, [0.0, 0.0, 1.0])
        total[0] += key.share
        if key.base_share is None:
            total[2] = 0.0  # no lift without every base share
        else:
            total[1] += key.base_share
    ranked = sorted(totals, key=lambda c: (-totals[c][0], c))
    names = sorted({k.name for k in keys})
    listed = ", ".join(names[:TOP]) + (f" and {len(names) - TOP} more" if len(names) > TOP else "")
    what = f" ({FACET_NOUN[family]}s: {listed})" if names != [clean_key(subject)] else ""

    def share(cluster: int) -> str:
        value, base, known = totals[cluster]
        return _share_text(value, value / base if known and base else None, bound=True)

    best = ranked[0]
    others = "; ".join(f"{t.label(c)} {share(c)}" for c in ranked[1:TOP])
    absent = len(t.clusters) - len(ranked)
    absent_text = (f" {absent} other cluster{'s list' if absent > 1 else ' lists'} no such "
                   f"{FACET_NOUN[family]} among {'their' if absent > 1 else 'its'} top ones.")
    text = (f"{_cap(t.label(best))} visits {_shown_subject(subject)} most{what}: {share(best)}."
            + (f" Next: {others}." if others else "") + (absent_text if absent else "")
            + " Shares count only the keys each cluster's profile lists, so they are lower bounds.")
    return _reply(text, [f"cluster_profiles: {family}, {family}_distinctive"])


def _needs_endpoint(prefix: str = "") -> Answer:
    lead = f"{prefix} " if prefix else ""
    return _reply(f"{lead}{NEEDS_ENDPOINT}\n{_offline_list()}", answered=False)


_INTENTS: tuple[Callable[[str, _Tables], Answer | None], ...] = (
    _help, _unknown, _compare, _timing, _top, _count_question, _metric, _size, _describe, _visits)


def answer(question: str, profiles: pd.DataFrame, interpretations: pd.DataFrame | None = None,
           comparisons: pd.DataFrame | None = None, *, categories: dict[str, str] | None = None) -> Answer:
    """Answer ``question`` from the frames alone, or say (``answered=False``) that it needs an endpoint.

    ``profiles`` is every ``cluster_profiles`` row of one clustering, the baseline included;
    ``categories`` maps registrable domains to categories for topic names (None: the bundled map).
    """
    q = _normal(question)
    if profiles.empty:
        return _reply("cluster_profiles is empty: run `beha2vec profile` first.", ["cluster_profiles"])
    if categories is None:
        from beha2vec.features import load_categories

        categories = load_categories("")
    tables = _tables(profiles, interpretations, comparisons, categories)
    for intent in _INTENTS:
        found = intent(q, tables)
        if found is not None:
            return found
    return _needs_endpoint()
