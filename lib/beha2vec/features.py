"""Hand-crafted behavioural features per session, in Spark: temporal, dwell, domain, transition.

Every feature is a double and is defined for every session: a session without visits gets 0 for
each visit-based feature, never null or NaN, so standardisation and clustering need no special
case. Per-visit work runs on the session's own visit arrays with Spark's higher-order functions,
so nothing is exploded or shuffled.

The *unit* of a visit is what sessionize recorded: the registrable domain for web-tracking data,
the page path for one-site data (GA4, msnbc). Repetition features (entropy, return rate, switches,
A→B→A) use units; domain features (unique domains and TLDs, subdomain depth, categories) use the
visit's registrable domain: the unit itself when it is a domain, else the one of its URL's host.

Categories come from a domain→category map (``data/domain_categories.csv``) matched exactly on
that registrable domain: ``notgoogle.com`` is not ``google.com``, and ``mail.google.com`` counts as
``google.com`` (search), because a map of registrable domains cannot tell its subdomains apart.
Unknown domains count as ``other``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from beha2vec.config import FeaturesConfig
from beha2vec.urls import registrable_domain

CATEGORIES = ("social", "search", "email", "commerce", "news", "video", "gaming", "finance",
              "reference", "tech", "sports", "travel", "government", "education", "other")
UNKNOWN = "other"
NOT_SET = "(not set)"
# a package resource, so the map also loads where executors import beha2vec from a --py-files zip
DEFAULT_CATEGORIES = resources.files("beha2vec").joinpath("data", "domain_categories.csv")
TIME_OF_DAY = (("night", 0, 6), ("morning", 6, 12), ("afternoon", 12, 18), ("evening", 18, 24))

# Scheme and user info are optional: panel logs hold URLs such as "www.google.com/search".
HOST_RE = r"^(?:[A-Za-z][A-Za-z0-9+.\-]*://|//)?(?:[^@/?#]*@)?([^/:?#]*)"
HOSTNAME_RE = r"^[\p{L}\p{N}_-]+(\.[\p{L}\p{N}_-]+)*$"
IPV4_RE = r"^[0-9]+(\.[0-9]+){3}$"

TEMPORAL = ["start_hour", "end_hour", "weekday", "is_weekend", "is_working_hours",
            *[f"is_{name}" for name, _, _ in TIME_OF_DAY], "is_multi_day", "duration_s"]
VOLUME = ["n_events", "n_visits"]
DWELL = ["dwell_total_s", "dwell_mean_s", "dwell_std_s", "dwell_min_s", "dwell_max_s", "dwell_median_s",
         "quick_bounces", "long_views"]
DOMAIN = ["unique_units", "unique_domains", "unique_tlds", "top_unit_share", "unit_entropy",
          "return_rate", "unit_diversity", "subdomain_depth_mean"]
TRANSITION = ["gap_mean_s", "rapid_transitions", "switch_rate", "aba_patterns"]
CATEGORY = [f"share_{c}" for c in CATEGORIES] + [f"time_share_{c}" for c in CATEGORIES]

FEATURE_COLUMNS: list[str] = [*TEMPORAL, *VOLUME, *DWELL, *DOMAIN, *TRANSITION, *CATEGORY]


# --- the category map -------------------------------------------------------------------------

def _entry_problem(domain: str, category: str) -> str | None:
    """Why a map entry cannot be used, or None: keys must be registrable domains, since visits
    are matched on theirs exactly (a subdomain key would silently never match)."""
    if category not in CATEGORIES:
        return f"unknown category '{category}' for '{domain}'; categories: {', '.join(CATEGORIES)}"
    if "." not in domain:
        return f"'{domain}' is not a domain name"
    if registrable_domain(f"x.{domain}") != domain:
        hint = registrable_domain(domain)
        use = f"; use '{hint}'" if hint != domain else " (it is a public suffix)"
        return (f"'{domain}' is not a registrable domain{use}: visits are matched on their "
                "registrable domain")
    return None


def load_categories(path: str = "") -> dict[str, str]:
    """The domain→category map: the bundled one, or a CSV at ``path`` with header ``domain,category``.

    Fails on the first bad line (a subdomain or public suffix as key, an unknown category, a domain
    given two categories) so that a typo never silently turns a category into ``other``.
    """
    source = Path(path) if path else DEFAULT_CATEGORIES
    mapping: dict[str, str] = {}
    with source.open(newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        header = [h.strip().lower() for h in next(rows, [])]
        if header != ["domain", "category"]:
            raise ValueError(f"{source}: the header must be 'domain,category', got '{','.join(header)}'")
        for line, row in enumerate(rows, start=2):
            if not "".join(row).strip():
                continue
            if len(row) != 2:
                raise ValueError(f"{source}:{line}: expected 2 fields (domain,category), found {len(row)}")
            domain, category = row[0].strip().lower(), row[1].strip().lower()
            problem = _entry_problem(domain, category)
            if problem is None and mapping.get(domain, category) != category:
                problem = f"'{domain}' is already '{mapping[domain]}'"
            if problem:
                raise ValueError(f"{source}:{line}: {problem}")
            mapping[domain] = category
    return mapping


def _map_literal(categories: dict[str, str]) -> Column:
    """The map as a constant Spark map: one JSON literal that the optimizer folds into a map
    literal, shipped with the plan (rather than a thousand ``lit`` calls through py4j)."""
    return F.from_json(F.lit(json.dumps(categories)), "map<string,string>")


# --- small column helpers ---------------------------------------------------------------------

def _ratio(num: Column, den: Column) -> Column:
    """num / den, 0 where den is 0 or null (ANSI mode would fail on a zero divisor)."""
    return F.coalesce(F.try_divide(num, den), F.lit(0.0))


def _count(arr: str | Column, pred: Callable[[Column], Column]) -> Column:
    return F.size(F.filter(arr, pred))


def _sum(arr: str | Column) -> Column:
    return F.aggregate(arr, F.lit(0.0), lambda acc, x: acc + x)


def _mean(arr: str | Column) -> Column:
    return _ratio(_sum(arr), F.size(arr))


def _indices(arr: str, start: int) -> Column:
    """0-based positions ``start``..n-1 of an array (empty when it is shorter)."""
    return F.filter(F.transform(arr, lambda _, i: i), lambda i: i >= start)


def _gaps(times: str) -> Column:
    """Seconds from each visit to the next (n - 1 values; pairs with an unknown time are left out)."""
    t = F.col(times)
    gaps = F.transform(_indices(times, 1), lambda i: F.get(t, i) - F.get(t, i - 1))
    return F.filter(gaps, lambda g: g.isNotNull())


def _host(url: Column) -> Column:
    """Lower-case host of a URL, '' when there is none or it is no host name ("(not set)")."""
    host = F.regexp_replace(F.lower(F.regexp_extract(url, HOST_RE, 1)), r"\.$", "")
    return F.when(host.rlike(HOSTNAME_RE), host).otherwise(F.lit(""))


def _is_domain_unit(unit: Column) -> Column:
    return ~unit.startswith("/") & (unit != NOT_SET) & (unit != "")


def _public_suffix(domain: Column) -> Column:
    """The TLD part of a registrable domain: all but its first label ('co.uk' for bbc.co.uk)."""
    return F.when(domain.rlike(IPV4_RE), F.lit("")).otherwise(F.regexp_extract(domain, r"^[^.]+\.(.+)$", 1))


def _dots(text: Column) -> Column:
    return F.length(text) - F.length(F.replace(text, F.lit("."), F.lit("")))


@F.pandas_udf(T.ArrayType(T.StringType()))
def _registrable_domains(hosts: pd.Series) -> pd.Series:
    """eTLD+1 of each host. A UDF because the Public Suffix List cannot be expressed with Spark
    built-ins (``bbc.co.uk`` vs ``google.com`` needs the list); it gets only the distinct hosts
    of a session's path-unit visits (one for one-site data, none for web-tracking), and the
    lookup is cached per worker."""
    return hosts.map(lambda hs: [registrable_domain(h) for h in hs])


# --- steps ------------------------------------------------------------------------------------

def visit_arrays(sessions: DataFrame) -> DataFrame:
    """Aligned, null-free per-visit arrays: unit, URL host, time (epoch seconds) and dwell."""
    units = F.coalesce(F.col("domains"), F.array().cast("array<string>"))
    return sessions.select(
        "session_id", "user_id", "start_ts", "end_ts",
        F.coalesce("n_events", F.lit(0)).alias("n_events"),
        F.coalesce("duration_s", F.lit(0.0)).alias("duration_s"),
        F.transform(units, lambda u: F.coalesce(u, F.lit(NOT_SET))).alias("units"),
        F.transform(units, lambda _, i: _host(F.get("urls", i))).alias("hosts"),
        F.transform(units, lambda _, i: F.unix_micros(F.get("visit_ts", i)) / 1e6).alias("times"),
        F.transform(units, lambda _, i: F.coalesce(F.get("dwell_s", i), F.lit(0.0))).alias("dwell"),
    ).withColumns({"n": F.size("units"), "n_visits": F.size("units")})


def visit_domains(df: DataFrame) -> DataFrame:
    """The registrable domain of each visit ('' when unknown): a domain unit is one already; a
    path unit takes its URL host's, looked up once per distinct host of the session."""
    to_look_up = F.zip_with("units", "hosts", lambda u, h: F.when(~_is_domain_unit(u) & (h != ""), h))
    return (
        df.withColumn("_hosts", F.array_distinct(F.filter(to_look_up, lambda h: h.isNotNull())))
        .withColumn("_host_domain", F.map_from_arrays("_hosts", _registrable_domains("_hosts")))
        .withColumn("reg_domains", F.zip_with("units", "hosts", lambda u, h: F.when(_is_domain_unit(u), u)
                                              .otherwise(F.coalesce(F.try_element_at("_host_domain", h),
                                                                    F.lit("")))))
        .drop("_hosts", "_host_domain")
    )


def visit_categories(df: DataFrame, categories: dict[str, str]) -> DataFrame:
    """The category of each visit, by exact lookup of its registrable domain; unknown → other."""
    lookup = _map_literal(categories)
    return df.withColumn("cats", F.transform(
        "reg_domains", lambda d: F.coalesce(F.try_element_at(lookup, d), F.lit(UNKNOWN))))


def temporal_features(df: DataFrame, conf: FeaturesConfig, timezone: str) -> DataFrame:
    """When the session happened, on the wall clock of ``timezone``."""
    def local(ts: str) -> Column:
        return F.convert_timezone(None, F.lit(timezone), F.col(ts).cast("timestamp_ntz"))

    hour, weekday = F.hour(local("start_ts")), F.weekday(local("start_ts"))
    return df.withColumns({
        "start_hour": hour,
        "end_hour": F.hour(local("end_ts")),
        "weekday": weekday,
        "is_weekend": weekday >= 5,
        "is_working_hours": (weekday < 5) & (hour >= conf.working_hours_start)
        & (hour < conf.working_hours_end),
        **{f"is_{name}": (hour >= lo) & (hour < hi) for name, lo, hi in TIME_OF_DAY},
        "is_multi_day": F.to_date(local("end_ts")) != F.to_date(local("start_ts")),
    })


def dwell_features(df: DataFrame, conf: FeaturesConfig) -> DataFrame:
    """Time spent per visit: its distribution, quick bounces and long views."""
    n = F.col("n")
    mean = F.col("dwell_mean_s")
    variance = _mean(F.transform("dwell", lambda d: (d - mean) * (d - mean)))
    sorted_dwell = F.col("_sorted")
    median = (F.get(sorted_dwell, F.floor((n - 1) / 2).cast("int"))
              + F.get(sorted_dwell, F.floor(n / 2).cast("int"))) / 2
    return (
        df.withColumns({"dwell_mean_s": _mean("dwell"), "_sorted": F.array_sort("dwell")})
        .withColumns({
            "dwell_total_s": _sum("dwell"),
            "dwell_std_s": F.sqrt(F.greatest(variance, F.lit(0.0))),
            "dwell_min_s": F.array_min("dwell"),
            "dwell_max_s": F.array_max("dwell"),
            "dwell_median_s": median,
            "quick_bounces": _count("dwell", lambda d: d < conf.quick_bounce_s),
            "long_views": _count("dwell", lambda d: d > conf.long_view_s),
        })
        .drop("_sorted")
    )


def _unit_counts(df: DataFrame) -> DataFrame:
    """``_counts``: how many visits each distinct unit has, as run lengths of the sorted units."""
    n, ordered, starts = F.col("n"), F.col("_sorted"), F.col("_starts")
    first_of_run = F.filter(F.transform(ordered, lambda _, i: i),
                            lambda i: (i == 0) | (F.get(ordered, i) != F.get(ordered, i - 1)))
    return (
        df.withColumn("_sorted", F.array_sort("units"))
        .withColumn("_starts", first_of_run)
        .withColumn("_counts", F.transform(starts, lambda p, j: F.coalesce(F.get(starts, j + 1), n) - p))
        .drop("_sorted", "_starts")
    )


def domain_features(df: DataFrame) -> DataFrame:
    """How spread the session is over units and domains, and how deep into subdomains it goes."""
    n = F.col("n")
    depth = F.zip_with("hosts", "reg_domains", lambda h, d: F.when(
        (d != "") & ((h == d) | h.endswith(F.concat(F.lit("."), d))), _dots(h) - _dots(d)))
    suffixes = F.transform("reg_domains", _public_suffix)
    return (
        df.transform(_unit_counts)
        .withColumns({
            "unique_units": F.size("_counts"),
            "unique_domains": F.size(F.array_distinct(F.filter("reg_domains", lambda d: d != ""))),
            "unique_tlds": F.size(F.array_distinct(F.filter(suffixes, lambda s: s != ""))),
            "top_unit_share": _ratio(F.array_max("_counts"), n),
            "unit_entropy": F.aggregate("_counts", F.lit(0.0), lambda acc, c: acc - (c / n) * F.ln(c / n)),
            "return_rate": _ratio(n - F.size("_counts"), n),
            "unit_diversity": _ratio(F.size("_counts"), n),
            "subdomain_depth_mean": _mean(F.filter(depth, lambda x: x.isNotNull())),
        })
        .drop("_counts")
    )


def transition_features(df: DataFrame, conf: FeaturesConfig) -> DataFrame:
    """How the session moves: gaps between visits, unit switches and A→B→A returns."""
    u = F.col("units")
    switches = _count(_indices("units", 1), lambda i: F.get(u, i) != F.get(u, i - 1))
    aba = _count(_indices("units", 2),
                 lambda i: (F.get(u, i) == F.get(u, i - 2)) & (F.get(u, i) != F.get(u, i - 1)))
    return df.withColumns({
        "gap_mean_s": _mean(_gaps("times")),
        "rapid_transitions": _count(_gaps("times"), lambda g: g < conf.rapid_transition_s),
        "switch_rate": _ratio(switches, F.greatest(F.col("n") - 1, F.lit(0))),
        "aba_patterns": aba,
    })


def category_features(df: DataFrame) -> DataFrame:
    """Share of visits and share of dwell time in each category."""
    def visits_in(category: str) -> Column:
        return _count("cats", lambda c: c == category)

    def time_in(category: str) -> Column:
        return _sum(F.zip_with("cats", "dwell", lambda c, d: F.when(c == category, d).otherwise(0.0)))

    return df.withColumns({
        **{f"share_{c}": _ratio(visits_in(c), F.col("n")) for c in CATEGORIES},
        **{f"time_share_{c}": _ratio(time_in(c), F.col("dwell_total_s")) for c in CATEGORIES},
    })


def to_feature_table(df: DataFrame) -> DataFrame:
    """Keys and features only, every feature a non-null, non-NaN double."""
    def clean(name: str) -> Column:
        value = F.coalesce(F.col(name).cast("double"), F.lit(0.0))
        return F.nanvl(value, F.lit(0.0)).alias(name)

    return df.select("session_id", "user_id", *[clean(c) for c in FEATURE_COLUMNS])


def validate(conf: FeaturesConfig, categories: dict[str, str], timezone: str) -> None:
    """Fail before any work on settings or a map that cannot make sense."""
    ZoneInfo(timezone)
    if not 0 <= conf.working_hours_start <= conf.working_hours_end <= 24:
        raise ValueError("features.working_hours_start/end must satisfy 0 <= start <= end <= 24")
    if min(conf.quick_bounce_s, conf.long_view_s, conf.rapid_transition_s) < 0:
        raise ValueError("features.quick_bounce_s, long_view_s and rapid_transition_s must not be negative")
    for domain, category in categories.items():
        problem = _entry_problem(domain, category)
        if problem:
            raise ValueError(f"category map: {problem}")


def session_features(sessions: DataFrame, conf: FeaturesConfig, categories: dict[str, str],
                     timezone: str = "UTC") -> DataFrame:
    """The ``session_features`` table: ``session_id, user_id`` and :data:`FEATURE_COLUMNS`."""
    validate(conf, categories, timezone)
    return (
        sessions.transform(visit_arrays)
        .transform(visit_domains)
        .transform(visit_categories, categories)
        .transform(temporal_features, conf, timezone)
        .transform(dwell_features, conf)
        .transform(domain_features)
        .transform(transition_features, conf)
        .transform(category_features)
        .transform(to_feature_table)
    )


def standardize(features: DataFrame, tolerance: float = 1e-9) -> DataFrame:
    """``session_id, user_id, embedding``: z-scores of every feature over all rows, as array<float>.

    Means and population standard deviations come from one aggregate pass, joined back as a single
    broadcast row (nothing is collected); a column whose deviation is within ``tolerance`` of 0
    (relative to its mean) carries no information and gives 0.
    """
    stats = features.agg(*[agg(c).alias(f"{name}_{i}") for i, c in enumerate(FEATURE_COLUMNS)
                           for name, agg in (("mean", F.avg), ("std", F.stddev_pop))])

    def z(i: int, column: str) -> Column:
        mean, std = F.col(f"mean_{i}"), F.col(f"std_{i}")
        informative = std > F.greatest(F.abs(mean), F.lit(1.0)) * tolerance
        return F.when(informative, (F.col(column) - mean) / std).otherwise(F.lit(0.0)).cast("float")

    embedding = F.array(*[z(i, c) for i, c in enumerate(FEATURE_COLUMNS)]).alias("embedding")
    return features.crossJoin(F.broadcast(stats)).select("session_id", "user_id", embedding)
