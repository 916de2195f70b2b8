"""What each cluster of the selected clustering looks like, as one long table of numbers.

Every row is ``(cluster, facet, key)`` with a ``value`` and, for distributions, the cluster's
``share``, the ``base_share`` among all clustered users and their ratio ``lift``. Cluster -1 is
that baseline itself (every clustered user), so a report can set each cluster against everyone.

Everything stays in Spark: per-user and per-session facts are aggregated once per cluster and once
over all clustered users in the same pass (``rollup``), and only the name of the selected
clustering comes back to the driver.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from beha2vec.config import ProfileConfig
from beha2vec.tables import CLUSTER_PROFILES

BASELINE = -1
UNKNOWN = "unknown"
PAGE_VIEWS = ("page_view", "screen_view")
CATEGORICAL = ("browser", "device_category", "os", "country")
PURCHASE_KEYS = ("purchase_rate", "revenue_per_user")
ENGAGEMENT_KEYS = ("engagement_s_per_user", "engagement_s_per_session")
DURATION_KEYS = ("median_session_duration_s", "mean_session_duration_s")
SUMMARY_KEYS = ("users", "sessions", "sessions_per_user", "page_views_per_session", "page_views_per_user",
                *DURATION_KEYS, *ENGAGEMENT_KEYS, "bot_share",
                *PURCHASE_KEYS, "mean_distance")


def _ratio(num: Column | str, den: Column | str) -> Column:
    """num / den as a double, null where den is 0 (ANSI mode would fail)."""
    return F.try_divide(num, den).cast("double")


def _timed() -> Column:
    """Sessions whose times were measured (not the ordinal positions of msnbc's sequences)."""
    from beha2vec.ingest import UNTIMED_SOURCES

    return ~F.coalesce(F.col("source").isin(*UNTIMED_SOURCES), F.lit(False))


def _is_page_view() -> Column:
    """A page view, as sessionize counts visits: a page/screen view, or a nameless event with a URL."""
    return F.col("event_name").isin(*PAGE_VIEWS) | (F.col("event_name").isNull() & F.col("url").isNotNull())


def _known(name: str) -> Column:
    return F.nullif(F.trim(F.col(name)), F.lit(""))


def _aggregate(df: DataFrame, keys: list[str], *aggs: Column) -> DataFrame:
    """``aggs`` per (keys, cluster) and per keys over all clustered users as cluster -1, in one pass."""
    out = df.rollup(*keys, "cluster").agg(F.grouping_id().alias("_g"), *aggs).where(F.col("_g") <= 1)
    cluster = F.when(F.col("_g") == 1, F.lit(BASELINE)).otherwise(F.col("cluster"))
    return out.withColumn("cluster", cluster).drop("_g")


def _baseline(name: str, *keys: str) -> Column:
    """Column ``name`` of the baseline row with the same ``key`` (and ``keys``): a window, no join."""
    return F.max(F.when(F.col("cluster") == BASELINE, F.col(name))).over(Window.partitionBy(*keys, "key"))


def selected_members(user_clusters: DataFrame) -> tuple[DataFrame, dict]:
    """``user_id, cluster, distance, is_small`` of the selected clustering, and its model, algorithm, k.

    Fails unless exactly one clustering is selected and each of its users appears once: a second
    clustering or a duplicated user would silently count users twice.
    """
    selected = user_clusters.where(F.col("selected"))
    found = (selected.groupBy("model", "algorithm", "k")
             .agg(F.count(F.lit(1)).alias("rows"), F.count_distinct("user_id").alias("users"))
             .limit(2).collect())
    if not found:
        raise ValueError("no clustering is selected in user_clusters (no row has selected = true); "
                         "run the cluster stage first")
    if len(found) > 1:
        raise ValueError("more than one clustering is selected in user_clusters: "
                         + ", ".join(f"{r.model}/{r.algorithm}/k={r.k}" for r in found))
    name = found[0].asDict()
    if name.pop("rows") != name.pop("users"):
        raise ValueError(f"the selected clustering {name} lists some users more than once")
    return selected.select("user_id", "cluster", "distance", "is_small"), name


def user_facts(members: DataFrame, events: DataFrame) -> DataFrame:
    """One row per clustered user: page views, engagement, purchase, revenue, and the user's most
    frequent browser, device category, OS and country (ties to the first alphabetically).

    Revenue counts each transaction once (a flattened GA4 purchase repeats it on every item row);
    it is null for a user with no revenue at all.
    """
    usd = F.col("purchase_revenue_usd")
    transaction = F.struct(F.coalesce("transaction_id", "event_id"), usd.alias("usd"))
    per_user = events.join(members.select("user_id"), "user_id", "left_semi").groupBy("user_id").agg(
        F.sum(_is_page_view().cast("long")).alias("page_views"),
        F.sum("engagement_ms").alias("engagement_ms"),
        F.max(F.col("event_name") == "purchase").alias("purchased"),
        F.collect_set(F.when(usd.isNotNull(), transaction)).alias("_transactions"),
        *(F.mode(_known(c), deterministic=True).alias(c) for c in CATEGORICAL),
    )
    revenue = F.aggregate("_transactions", F.lit(0.0), lambda total, t: total + t["usd"])
    return (
        members.join(per_user, "user_id", "left")
        .withColumn("revenue", F.when(F.size("_transactions") > 0, revenue)).drop("_transactions")
    )


def cluster_sizes(members: DataFrame) -> DataFrame:
    """``cluster, is_small, users``; the baseline is never small."""
    sizes = _aggregate(members, [], F.count(F.lit(1)).alias("users"),
                       F.max(F.coalesce("is_small", F.lit(False))).alias("is_small"))
    return sizes.withColumn("is_small", (F.col("cluster") != BASELINE) & F.col("is_small"))


def summary(users: DataFrame, sessions: DataFrame) -> DataFrame:
    """Facet ``summary``: one value per key (see :data:`SUMMARY_KEYS`).

    Page views are counted on events (:func:`_is_page_view`), so repeats that sessionize merges
    into one visit still count. Engagement follows GA4: the sum of ``engagement_time_msec`` over all
    of a user's events, since GA4 sends each slice of the engagement counter on whichever event
    comes next (``user_engagement``, ``page_view``, ``scroll``...); it equals the sum of
    ``sessions.engagement_s``. The median session duration is approximate (rank error 1/10000).
    Purchase keys appear only where some clustered user's event is a purchase or has revenue,
    engagement keys only where some event has an engagement time (not so for panel data),
    duration keys only where some session has measured times (not so for msnbc's sequences).
    """
    per_user = _aggregate(
        users, [],
        F.count(F.lit(1)).alias("users"),
        F.sum("page_views").alias("page_views"),
        (F.sum("engagement_ms") / 1000.0).alias("engagement_s"),
        F.count_if(F.col("purchased")).alias("purchasers"),
        F.coalesce(F.sum("revenue"), F.lit(0.0)).alias("revenue"),
        F.avg("distance").alias("mean_distance"),
        F.coalesce(F.max(F.col("purchased") | F.col("revenue").isNotNull()), F.lit(False)).alias("_p"),
        F.coalesce(F.max(F.col("engagement_ms").isNotNull()), F.lit(False)).alias("_e"),
    )
    per_session = _aggregate(
        sessions, [],
        F.count(F.lit(1)).alias("sessions"),
        F.percentile_approx(F.when(_timed(), F.col("duration_s")), 0.5).alias("median_session_duration_s"),
        F.avg(F.when(_timed(), F.col("duration_s"))).alias("mean_session_duration_s"),
        F.avg(F.coalesce("is_bot", F.lit(False)).cast("double")).alias("bot_share"),
        F.coalesce(F.max(_timed()), F.lit(False)).alias("_t"),
    )
    wide = per_user.join(per_session, "cluster", "left").fillna(0, ["sessions"]).fillna(False, ["_t"]).select(
        "cluster", "_p", "_e", "_t",
        F.col("users").cast("double").alias("users"),
        F.col("sessions").cast("double").alias("sessions"),
        _ratio("sessions", "users").alias("sessions_per_user"),
        _ratio("page_views", "sessions").alias("page_views_per_session"),
        _ratio("page_views", "users").alias("page_views_per_user"),
        "median_session_duration_s", "mean_session_duration_s",
        _ratio("engagement_s", "users").alias("engagement_s_per_user"),
        _ratio("engagement_s", "sessions").alias("engagement_s_per_session"),
        "bot_share",
        _ratio("purchasers", "users").alias("purchase_rate"),
        _ratio("revenue", "users").alias("revenue_per_user"),
        "mean_distance",
    )
    key = F.col("key")
    present = ((~key.isin(*PURCHASE_KEYS) | _baseline("_p")) & (~key.isin(*ENGAGEMENT_KEYS) | _baseline("_e"))
               & (~key.isin(*DURATION_KEYS) | _baseline("_t")))
    return (
        wide.unpivot(["cluster", "_p", "_e", "_t"], list(SUMMARY_KEYS), "key", "value")
        .withColumn("_present", present).where(F.col("_present"))
        .select("cluster", F.lit("summary").alias("facet"), "key", "value")
    )


def _stacked(pairs: dict[str, Column]) -> Column:
    """(facet, key) structs to explode: one row per facet."""
    return F.explode(F.array(*[F.struct(F.lit(f).alias("facet"), k.alias("key")) for f, k in pairs.items()]))


def _shares(counts: DataFrame) -> DataFrame:
    """``share`` of each key within its (facet, cluster), ``base_share`` within the baseline, ``lift``."""
    total = F.sum("value").over(Window.partitionBy("facet", "cluster"))
    return (
        counts.withColumn("value", F.col("value").cast("double"))
        .withColumn("share", _ratio("value", total))
        .withColumn("base_share", _baseline("share", "facet"))
        .withColumn("lift", _ratio("share", "base_share"))
    )


def _rank(*order: Column) -> Column:
    """1, 2, ... within each (facet, cluster) in ``order``, ties by key."""
    return F.row_number().over(Window.partitionBy("facet", "cluster").orderBy(*order, F.col("key")))


def visit_facets(members: DataFrame, sessions: DataFrame, events: DataFrame,
                 conf: ProfileConfig) -> DataFrame:
    """Facets ``unit`` (sessionize's visit units), ``domain`` and ``path`` (of page-view events), each
    as the top keys by share of visits and, as ``<facet>_distinctive``, by lift among keys visited
    by at least ``min_support_users`` users of the cluster. Null or empty keys are left out, so a
    facet the data lacks has no rows."""
    units = sessions.select("user_id", F.explode("domains").alias("key")).select(
        "user_id", F.struct(F.lit("unit").alias("facet"), "key").alias("v"))
    pages = events.where(_is_page_view()).select(
        "user_id", _stacked({"domain": _known("domain"), "path": _known("path")}).alias("v"))
    visits = (
        units.unionByName(pages).select("user_id", "v.facet", "v.key").where(_known("key").isNotNull())
        .join(members.select("user_id", "cluster"), "user_id")
        .groupBy("user_id", "cluster", "facet", "key").count()
    )
    shares = _shares(_aggregate(visits, ["facet", "key"], F.sum("count").alias("value"),
                                F.count(F.lit(1)).alias("support")))
    supported = F.col("support") >= conf.min_support_users
    by_lift = _rank(supported.desc(), F.col("lift").desc(), F.col("share").desc())
    ranks = {"_by_share": _rank(F.col("share").desc()), "_by_lift": F.when(supported, by_lift)}
    rankings = F.explode(F.array(
        F.struct(F.col("facet"), F.col("_by_share").alias("rank")),
        F.struct(F.concat("facet", F.lit("_distinctive")).alias("facet"), F.col("_by_lift").alias("rank")),
    ))
    return (
        shares.withColumns(ranks).withColumn("_r", rankings).where(F.col("_r.rank") <= conf.top_n)
        .withColumns({"facet": F.col("_r.facet"), "rank": F.col("_r.rank")})
        .drop("_r", "_by_share", "_by_lift", "support")
    )


def category_facets(users: DataFrame, conf: ProfileConfig) -> DataFrame:
    """Facets ``browser``, ``device_category``, ``os``, ``country``: share of users by their most
    frequent value (``unknown`` where they have none), top ``top_n`` by share."""
    values = _stacked({c: F.coalesce(c, F.lit(UNKNOWN)) for c in CATEGORICAL})
    stacked = users.select("cluster", values.alias("v")).select("cluster", "v.*")
    counts = _aggregate(stacked, ["facet", "key"], F.count(F.lit(1)).alias("value"))
    return _shares(counts).withColumn("rank", _rank(F.col("share").desc())).where(F.col("rank") <= conf.top_n)


def time_facets(sessions: DataFrame, sizes: DataFrame, timezone: str) -> DataFrame:
    """Facets ``hour`` (0..23) and ``weekday`` (Monday..Sunday) of session starts on the wall clock
    of ``timezone``, ranked in natural order; every key seen among all clustered users appears for
    every cluster (share 0 where it has none), so the distributions are whole. Sessions of untimed
    sources (msnbc) have no clock and are left out."""
    local = F.convert_timezone(None, F.lit(timezone), F.col("start_ts").cast("timestamp_ntz"))
    stacked = F.explode(F.array(
        F.struct(F.lit("hour").alias("facet"), F.hour(local).cast("string").alias("key"),
                 (F.hour(local) + 1).alias("rank")),
        F.struct(F.lit("weekday").alias("facet"), F.date_format(local, "EEEE").alias("key"),
                 (F.weekday(local) + 1).alias("rank")),
    ))
    starts = sessions.where(F.col("start_ts").isNotNull() & _timed()).select("cluster", stacked.alias("v"))
    counts = _aggregate(starts.select("cluster", "v.*"), ["facet", "key", "rank"],
                        F.count(F.lit(1)).alias("value"))
    keys = counts.where(F.col("cluster") == BASELINE).select("facet", "key", "rank")
    whole = (sizes.select("cluster").crossJoin(keys)
             .join(counts, ["cluster", "facet", "key", "rank"], "left").fillna(0, ["value"]))
    return _shares(whole)


def validate(conf: ProfileConfig, timezone: str) -> None:
    """Fail before any work on settings that cannot make sense."""
    ZoneInfo(timezone)
    if conf.top_n < 1 or conf.min_support_users < 1:
        raise ValueError("profile.top_n and profile.min_support_users must be at least 1")


def cluster_profiles(user_clusters: DataFrame, sessions: DataFrame, events: DataFrame, conf: ProfileConfig,
                     timezone: str) -> DataFrame:
    """The ``cluster_profiles`` table for the selected clustering of ``user_clusters``.

    Only the selected users are profiled; other users' sessions and events count nowhere.
    Every row carries its cluster's ``users`` and ``is_small`` (small clusters are profiled too).
    """
    validate(conf, timezone)
    members, name = selected_members(user_clusters)
    users = user_facts(members, events)
    member_sessions = sessions.join(members.select("user_id", "cluster"), "user_id")
    sizes = cluster_sizes(members)
    nulls = {c: F.lit(None).cast(t) for c, t in (("share", "double"), ("base_share", "double"),
                                                  ("lift", "double"), ("rank", "int"))}
    rows = (
        summary(users, member_sessions).withColumns(nulls)
        .unionByName(visit_facets(members, sessions, events, conf))
        .unionByName(category_facets(users, conf))
        .unionByName(time_facets(member_sessions, sizes, timezone))
    )
    return rows.join(sizes, "cluster").withColumns({c: F.lit(v) for c, v in name.items()}).select(
        *[F.col(f.name).cast(f.dataType) for f in CLUSTER_PROFILES.fields])
