"""Cluster profiles against hand-computed numbers, through real Spark.

Selected clustering minilm/kmeans/k=2: cluster 0 = users a and b, cluster 1 = user c (small).
User x is only in an unselected clustering: nothing of x may count anywhere.
"""

from __future__ import annotations

import datetime as dt

import pytest

from beha2vec.config import ProfileConfig
from beha2vec.profile import cluster_profiles, selected_members, summary, user_facts
from beha2vec.tables import CLUSTER_PROFILES, EVENTS, SESSIONS, USER_CLUSTERS

BERLIN = "Europe/Berlin"  # UTC+1 in January
CONF = ProfileConfig(top_n=2, min_support_users=2)


def utc(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2024, 1, day, hour, minute, tzinfo=dt.UTC)


def row(schema, **values):
    return tuple(values.get(name) for name in schema.fieldNames())


def member(user, cluster, distance, small=False, k=2, selected=True):
    return row(USER_CLUSTERS, user_id=user, model="minilm", algorithm="kmeans", k=k, seed=42,
               cluster=cluster, distance=distance, is_small=small, selected=selected)


def session(sid, user, start, duration, units, bot=False):
    return row(SESSIONS, session_id=sid, user_id=user, start_ts=start, duration_s=float(duration),
               domains=units, is_bot=bot)


def event(user, name, domain=None, path=None, browser=None, device=None, ms=None, txn=None, revenue=None):
    url = f"https://{domain}{path}" if domain else None
    return row(EVENTS, event_id=f"{user}-{name}-{path}-{ms}-{browser}", user_id=user, event_name=name,
               event_ts=utc(15, 12), url=url, domain=domain, path=path, browser=browser,
               device_category=device, engagement_ms=ms, transaction_id=txn, purchase_revenue_usd=revenue)


USER_CLUSTER_ROWS = [
    member("a", 0, 0.1), member("b", 0, 0.3), member("c", 1, 0.5, small=True),
    *(member(u, 2, 9.0, k=3, selected=False) for u in ("a", "b", "c", "x")),
]
SESSION_ROWS = [
    session("s1", "a", utc(15, 23, 30), 60, ["shop.com", "news.com"]),  # Mon 23:30 UTC = Tue 00:30 Berlin
    session("s2", "a", utc(16, 10), 120, ["shop.com"]),  # Tue 11:00 Berlin
    session("s3", "b", utc(17, 8), 30, ["news.com"], bot=True),  # Wed 09:00
    session("s4", "c", utc(20, 12), 300, ["video.com", "shop.com"]),  # Sat 13:00
    session("s5", "c", utc(21, 12), 300, ["video.com"]),  # Sun 13:00
    session("sx", "x", utc(18, 3), 999, ["spam.com"], bot=True),
]
EVENT_ROWS = [
    event("a", "page_view", "shop.com", "/p1", "Chrome", "desktop", ms=1000),
    event("a", "page_view", "shop.com", "/p2", "Chrome", "desktop", ms=2000),
    event("a", "user_engagement", "shop.com", "/p2", "Chrome", "desktop", ms=5000),
    event("a", "scroll", "shop.com", "/p2", "Chrome", "desktop", ms=500),  # GA4 counts every slice
    event("a", "page_view", "news.com", "/n1", "Firefox", "desktop"),
    # one purchase flattened into two item rows: the revenue counts once
    event("a", "purchase", "shop.com", "/checkout", "Chrome", "desktop", txn="T1", revenue=50.0),
    event("a", "purchase", "shop.com", "/checkout", "Chrome", "mobile", txn="T1", revenue=50.0),
    event("b", "page_view", "news.com", "/n1", "Firefox", ms=4000),
    event("b", "page_view", "news.com", "/n2", ""),
    event("c", "page_view", "video.com", "/v1", "Safari", "mobile", ms=10000),
    event("c", "page_view", "video.com", "/v1", "Safari", "mobile"),
    event("c", "page_view", "shop.com", "/p1", "Safari", "mobile"),
    event("c", "user_engagement", "video.com", "/v1", "Safari", "mobile", ms=2000),
    event("x", "page_view", "spam.com", "/", "Opera", ms=99000),
    event("x", "purchase", "spam.com", "/buy", "Opera", txn="TX", revenue=1000.0),
]


def profile(spark, user_clusters=USER_CLUSTER_ROWS, events=EVENT_ROWS):
    return cluster_profiles(spark.createDataFrame(user_clusters, USER_CLUSTERS),
                            spark.createDataFrame(SESSION_ROWS, SESSIONS),
                            spark.createDataFrame(events, EVENTS), CONF, BERLIN)


@pytest.fixture(scope="module")
def result(spark):
    df = profile(spark)
    return df, {(r.cluster, r.facet, r.key): r for r in df.collect()}


def values(rows, cluster, facet):
    return {key: r.value for (c, f, key), r in rows.items() if c == cluster and f == facet}


def ranked(rows, cluster, facet):
    found = sorted((r.rank, key) for (c, f, key), r in rows.items() if c == cluster and f == facet)
    return [key for _, key in found]


def test_schema_is_the_cluster_profiles_table(result):
    df, rows = result
    assert [(f.name, f.dataType) for f in df.schema] == [(f.name, f.dataType) for f in CLUSTER_PROFILES]
    assert {(r.model, r.algorithm, r.k) for r in rows.values()} == {("minilm", "kmeans", 2)}
    assert {(r.cluster, r.users, r.is_small) for r in rows.values()} == {(0, 2, False), (1, 1, True),
                                                                         (-1, 3, False)}


def test_summary(result):
    _, rows = result
    assert values(rows, 0, "summary") == pytest.approx({
        "users": 2, "sessions": 3, "sessions_per_user": 1.5,
        "page_views_per_session": 5 / 3, "page_views_per_user": 2.5,
        "median_session_duration_s": 60, "mean_session_duration_s": 70,
        "engagement_s_per_user": (8.5 + 4) / 2, "engagement_s_per_session": 12.5 / 3,
        "bot_share": 1 / 3, "purchase_rate": 0.5, "revenue_per_user": 25, "mean_distance": 0.2,
    })
    assert values(rows, 1, "summary") == pytest.approx({
        "users": 1, "sessions": 2, "sessions_per_user": 2,
        "page_views_per_session": 1.5, "page_views_per_user": 3,
        "median_session_duration_s": 300, "mean_session_duration_s": 300,
        "engagement_s_per_user": 12, "engagement_s_per_session": 6,
        "bot_share": 0, "purchase_rate": 0, "revenue_per_user": 0, "mean_distance": 0.5,
    })
    baseline = values(rows, -1, "summary")
    assert baseline == pytest.approx({
        "users": 3, "sessions": 5, "sessions_per_user": 5 / 3,
        "page_views_per_session": 8 / 5, "page_views_per_user": 8 / 3,
        "median_session_duration_s": 120, "mean_session_duration_s": 162,
        "engagement_s_per_user": 24.5 / 3, "engagement_s_per_session": 24.5 / 5,
        "bot_share": 0.2, "purchase_rate": 1 / 3, "revenue_per_user": 50 / 3, "mean_distance": 0.3,
    })
    summary_rows = [r for (_, f, _), r in rows.items() if f == "summary"]
    assert {(r.share, r.base_share, r.lift, r.rank) for r in summary_rows} == {(None, None, None, None)}


def test_purchase_and_engagement_keys_only_with_such_events(spark):
    panel = spark.createDataFrame([event(u, "page_view", "news.com", "/", "Chrome") for u in "abcx"], EVENTS)
    members, _ = selected_members(spark.createDataFrame(USER_CLUSTER_ROWS, USER_CLUSTERS))
    sessions = spark.createDataFrame(SESSION_ROWS, SESSIONS).join(members, "user_id")
    rows = summary(user_facts(members, panel), sessions).where("cluster = -1").collect()
    assert sorted(r.key for r in rows) == sorted([
        "users", "sessions", "sessions_per_user", "page_views_per_session", "page_views_per_user",
        "median_session_duration_s", "mean_session_duration_s", "bot_share", "mean_distance"])


def test_untimed_sources_have_no_durations_nor_clock_facets(spark):
    """msnbc's times are ordinal positions: their durations, hours and weekdays would be invented."""
    source = SESSIONS.fieldNames().index("source")
    untimed = spark.createDataFrame([(*s[:source], "msnbc", *s[source + 1:]) for s in SESSION_ROWS], SESSIONS)
    rows = cluster_profiles(spark.createDataFrame(USER_CLUSTER_ROWS, USER_CLUSTERS), untimed,
                            spark.createDataFrame(EVENT_ROWS, EVENTS), CONF, BERLIN).collect()
    facets = {r.facet for r in rows}
    assert "hour" not in facets and "weekday" not in facets and "domain" in facets
    keys = {r.key for r in rows if r.facet == "summary"}
    assert "median_session_duration_s" not in keys and "mean_session_duration_s" not in keys
    assert "sessions_per_user" in keys


def test_top_domains_by_share_with_lift(result):
    _, rows = result
    news, shop = rows[(0, "domain", "news.com")], rows[(0, "domain", "shop.com")]
    assert (news.value, news.share, news.base_share, news.rank) == (3, 0.6, 3 / 8, 1)
    assert news.lift == pytest.approx(1.6)
    assert (shop.value, shop.share, shop.rank) == (2, 0.4, 2)
    assert shop.lift == pytest.approx(0.4 / (3 / 8))
    assert rows[(1, "domain", "video.com")].lift == pytest.approx((2 / 3) / (2 / 8))
    assert ranked(rows, -1, "domain") == ["news.com", "shop.com"]  # top 2 of 3, ties by key
    assert ranked(rows, 0, "unit") == ["news.com", "shop.com"]
    assert rows[(1, "unit", "video.com")].share == pytest.approx(2 / 3)
    assert ranked(rows, 1, "path") == ["/v1", "/p1"]


def test_distinctive_keys_need_enough_users(result):
    _, rows = result
    assert ranked(rows, 0, "domain_distinctive") == ["news.com"]  # shop.com: one user of cluster 0
    assert ranked(rows, 1, "domain_distinctive") == []  # a cluster of one user supports nothing
    assert ranked(rows, -1, "unit_distinctive") == ["shop.com", "news.com"]


def test_categories_by_each_users_most_frequent_value(result):
    _, rows = result
    assert values(rows, 0, "browser") == {"Chrome": 1, "Firefox": 1}  # b's empty browser is ignored
    assert rows[(0, "browser", "Chrome")].lift == pytest.approx(1.5)
    assert values(rows, 0, "device_category") == {"desktop": 1, "unknown": 1}
    assert rows[(1, "browser", "Safari")].share == 1.0
    assert values(rows, -1, "country") == {"unknown": 3}
    assert "Opera" not in {key for _, _, key in rows}


def test_hour_and_weekday_on_the_local_clock(result):
    _, rows = result
    assert values(rows, -1, "hour") == {"0": 1, "9": 1, "11": 1, "13": 2}
    zero = rows[(0, "hour", "0")]  # Monday 23:30 UTC is Tuesday 00:30 in Berlin
    assert (zero.share, zero.base_share, zero.rank) == pytest.approx((1 / 3, 1 / 5, 1))
    assert zero.lift == pytest.approx(5 / 3)
    assert (rows[(0, "hour", "13")].value, rows[(0, "hour", "13")].rank) == (0, 14)
    assert ranked(rows, 0, "weekday") == ["Tuesday", "Wednesday", "Saturday", "Sunday"]
    assert values(rows, 1, "weekday") == {"Tuesday": 0, "Wednesday": 0, "Saturday": 1, "Sunday": 1}
    assert rows[(1, "weekday", "Sunday")].lift == pytest.approx(0.5 / 0.2)


def test_baseline_shares_are_its_own(result):
    _, rows = result
    shared = [r for (c, f, _), r in rows.items() if c == -1 and f != "summary"]
    assert shared and all(r.share == r.base_share and r.lift == 1.0 for r in shared)


def test_nothing_selected_fails(spark):
    with pytest.raises(ValueError, match="no clustering is selected"):
        profile(spark, user_clusters=[member("a", 0, 0.1, selected=False)])
    with pytest.raises(ValueError, match="more than one clustering"):
        profile(spark, user_clusters=[member("a", 0, 0.1), member("a", 0, 0.1, k=3)])
