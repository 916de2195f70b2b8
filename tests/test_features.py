"""Session features against hand-computed cases, through real Spark."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from pyspark.sql import types as T

from beha2vec.config import FeaturesConfig
from beha2vec.features import FEATURE_COLUMNS, load_categories, session_features, standardize

SAT = dt.datetime(2024, 3, 9, 23, 50, tzinfo=dt.UTC)  # a Saturday
MON = dt.datetime(2024, 3, 4, 10, 0, tzinfo=dt.UTC)  # a Monday

SESSIONS = T.StructType([
    T.StructField("session_id", T.StringType()),
    T.StructField("user_id", T.StringType()),
    T.StructField("source", T.StringType()),
    T.StructField("start_ts", T.TimestampType()),
    T.StructField("end_ts", T.TimestampType()),
    T.StructField("n_events", T.LongType()),
    T.StructField("n_visits", T.LongType()),
    T.StructField("duration_s", T.DoubleType()),
    T.StructField("engagement_s", T.DoubleType()),
    T.StructField("domains", T.ArrayType(T.StringType())),
    T.StructField("urls", T.ArrayType(T.StringType())),
    T.StructField("visit_ts", T.ArrayType(T.TimestampType())),
    T.StructField("dwell_s", T.ArrayType(T.DoubleType())),
    T.StructField("is_bot", T.BooleanType()),
])


def session(sid, start, visits, end=None, source="webtracking"):
    """A sessions row from ``(unit, url, seconds after start, dwell)`` visits."""
    times = [start + dt.timedelta(seconds=s) for _, _, s, _ in visits]
    end = end or (times[-1] + dt.timedelta(seconds=visits[-1][3]) if visits else start)
    return (sid, "u", source, start, end, len(visits), len(visits), (end - start).total_seconds(), 0.0,
            [v[0] for v in visits], [v[1] for v in visits], times, [float(v[3]) for v in visits], False)


# google.com (9 s) -> youtube.com (400 s) -> google.com (5 s), Saturday 23:50 to Sunday 00:20 UTC.
WEB = session("web", SAT, [
    ("google.com", "https://www.google.com/search?q=cats", 0, 9),
    ("youtube.com", "https://youtube.com/watch?v=1", 4, 400),
    ("google.com", "https://www.google.com/", 1500, 5),
], end=SAT + dt.timedelta(minutes=30))
# One-site data: units are paths, the category comes from the URL host's registrable domain.
GA4 = session("ga4", MON, [
    ("/news/a", "https://www.bbc.co.uk/news/a?x=1", 0, 30),
    ("/sport/b", "https://news.bbc.co.uk/sport/b", 30, 10),
    ("/news/a", "https://www.bbc.co.uk/news/a", 40, 20),
    ("/news/c", None, 60, 40),
], source="ga4")
EXACT = session("exact", MON, [
    ("notgoogle.com", None, 0, 1),
    ("google.com", "https://mail.google.com/mail/u/0", 1, 1),
    ("gmail.com", "https://gmail.com", 2, 1),
    ("evil.net", "http://google.com.evil.net/", 3, 1),
    ("/page", "(not set)", 4, 1),
])
# Boundaries are exclusive: a 10 s dwell is no bounce, 300 s no long view, a 5 s gap not rapid.
EDGES = session("edges", MON, [("a.com", None, 0, 10), ("b.com", None, 5, 300)])
ONE = session("one", MON, [("a.com", "https://a.com/", 0, 12)])
EMPTY = ("empty", "u", "ga4", None, None, 0, 0, None, None, None, None, None, None, False)
NO_VISITS = session("no_visits", MON, [], end=MON + dt.timedelta(seconds=90), source="ga4")


@pytest.fixture(scope="module")
def features(spark):
    sessions = spark.createDataFrame([WEB, GA4, EXACT, EDGES, ONE, EMPTY, NO_VISITS], SESSIONS)
    out = session_features(sessions, FeaturesConfig(), load_categories())
    return out, {r.session_id: r.asDict() for r in out.collect()}


def test_output_schema_is_keys_then_double_features(features):
    df, rows = features
    assert df.columns == ["session_id", "user_id", *FEATURE_COLUMNS]
    assert len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS) == 63
    assert {f.dataType for f in df.schema.fields[2:]} == {T.DoubleType()}
    for row in rows.values():
        assert all(row[c] is not None and not math.isnan(row[c]) for c in FEATURE_COLUMNS), row


def test_temporal_in_utc(features):
    w, m = features[1]["web"], features[1]["ga4"]
    assert (w["start_hour"], w["end_hour"], w["weekday"]) == (23, 0, 5)
    assert (w["is_weekend"], w["is_multi_day"], w["is_working_hours"], w["is_evening"]) == (1, 1, 0, 1)
    assert w["duration_s"] == 1800
    assert (m["weekday"], m["is_weekend"], m["is_working_hours"], m["is_morning"], m["is_multi_day"]) == (
        0, 0, 1, 1, 0)


def test_temporal_in_another_timezone(spark):
    sessions = spark.createDataFrame([WEB], SESSIONS)
    (w,) = session_features(sessions, FeaturesConfig(), {}, timezone="America/New_York").collect()
    # 23:50 UTC on 9 March 2024 is 18:50 EST; 00:20 UTC is 19:20 the same day.
    assert (w.start_hour, w.end_hour, w.weekday, w.is_multi_day, w.is_evening) == (18, 19, 5, 0, 1)


def test_dwell(features):
    w = features[1]["web"]
    assert (w["dwell_total_s"], w["dwell_mean_s"]) == (414, 138)
    assert w["dwell_std_s"] == pytest.approx(math.sqrt((129**2 + 262**2 + 133**2) / 3))
    assert (w["dwell_min_s"], w["dwell_max_s"], w["dwell_median_s"]) == (5, 400, 9)
    assert (w["quick_bounces"], w["long_views"]) == (2, 1)
    assert features[1]["ga4"]["dwell_median_s"] == 25  # (20 + 30) / 2
    e = features[1]["edges"]
    assert (e["quick_bounces"], e["long_views"], e["rapid_transitions"]) == (0, 0, 0)


def test_domain(features):
    w = features[1]["web"]
    assert (w["unique_units"], w["unique_domains"], w["unique_tlds"]) == (2, 2, 1)
    assert w["top_unit_share"] == pytest.approx(2 / 3)
    assert w["unit_entropy"] == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert w["return_rate"] == pytest.approx(1 / 3)
    assert w["unit_diversity"] == pytest.approx(2 / 3)
    assert w["subdomain_depth_mean"] == pytest.approx(2 / 3)  # www. twice, none for youtube.com


def test_transitions(features):
    w = features[1]["web"]
    assert w["gap_mean_s"] == pytest.approx((4 + 1496) / 2)
    assert (w["rapid_transitions"], w["switch_rate"], w["aba_patterns"]) == (1, 1, 1)
    g = features[1]["ga4"]
    assert g["switch_rate"] == 1 and g["aba_patterns"] == 1


def test_categories_share_of_visits_and_time(features):
    w = features[1]["web"]
    assert w["share_search"] == pytest.approx(2 / 3)
    assert w["share_video"] == pytest.approx(1 / 3)
    assert w["time_share_video"] == pytest.approx(400 / 414)
    assert w["time_share_search"] == pytest.approx(14 / 414)
    assert w["share_other"] == 0


def test_path_units_take_category_and_tld_from_url_host(features):
    g = features[1]["ga4"]
    # www.bbc.co.uk and news.bbc.co.uk are bbc.co.uk (news), TLD co.uk; the visit without URL is other.
    assert (g["unique_units"], g["unique_domains"], g["unique_tlds"]) == (3, 1, 1)
    assert (g["share_news"], g["share_other"]) == (0.75, 0.25)
    assert g["time_share_news"] == pytest.approx(60 / 100)
    assert g["subdomain_depth_mean"] == 1
    assert g["return_rate"] == 0.25


def test_categories_match_registrable_domains_exactly(features):
    x = features[1]["exact"]
    # notgoogle.com and google.com.evil.net are not google.com; mail.google.com is (search, not email:
    # the map holds registrable domains, which cannot tell google.com's subdomains apart); a path
    # whose URL has no host has no domain.
    assert (x["share_search"], x["share_email"], x["share_other"]) == (0.2, 0.2, 0.6)
    assert (x["unique_domains"], x["unique_tlds"]) == (4, 2)  # com, net
    # mail. is one label deep, gmail.com none, google.com. two (under evil.net); unknown hosts skipped.
    assert x["subdomain_depth_mean"] == 1


def test_single_visit_has_no_transitions(features):
    o = features[1]["one"]
    assert (o["dwell_std_s"], o["dwell_median_s"], o["switch_rate"], o["gap_mean_s"], o["return_rate"]) == (
        0, 12, 0, 0, 0)
    assert (o["unit_entropy"], o["unit_diversity"], o["top_unit_share"]) == (0, 1, 1)


def test_empty_sessions_give_zeros(features):
    assert all(features[1]["empty"][c] == 0 for c in FEATURE_COLUMNS)
    n = features[1]["no_visits"]
    # Without visits only the clock is known: Monday 10:00, 90 s of non-visit events.
    assert (n["start_hour"], n["is_working_hours"], n["is_morning"], n["duration_s"]) == (10, 1, 1, 90)
    timeless = set(FEATURE_COLUMNS) - {"start_hour", "end_hour", "is_working_hours", "is_morning",
                                       "duration_s"}
    assert all(n[c] == 0 for c in timeless)


def test_bundled_map_is_registrable_domains():
    cats = load_categories()
    assert len(cats) > 300
    assert cats["google.com"] == "search" and cats["live.com"] == "email"
    assert cats["bbc.co.uk"] == "news" and cats["steampowered.com"] == "gaming"
    assert "mail.google.com" not in cats


@pytest.mark.parametrize("line, message", [
    ("mail.google.com,email", "use 'google.com'"),
    ("co.uk,news", "public suffix"),
    ("example.com,cooking", "unknown category"),
    ("google.com,search\ngoogle.com,email", "already 'search'"),
])
def test_user_map_rejects_what_could_never_match(tmp_path, line, message):
    path = tmp_path / "cats.csv"
    path.write_text(f"domain,category\nexample.org,news\n{line}\n")
    with pytest.raises(ValueError, match=message):
        load_categories(str(path))


def test_user_map_replaces_bundled_one(tmp_path):
    path = tmp_path / "cats.csv"
    path.write_text("Domain,Category\nExample.org,news\n\n")
    assert load_categories(str(path)) == {"example.org": "news"}


def test_standardize_z_scores_and_zero_variance(spark):
    varying = [1.0, 2.0, 3.0, 4.0]
    rows = [(f"s{i}", "u", *([x, 10.0 - x * x] + [7.0] * (len(FEATURE_COLUMNS) - 2)))
            for i, x in enumerate(varying)]
    keys = [T.StructField("session_id", T.StringType()), T.StructField("user_id", T.StringType())]
    schema = T.StructType([*keys, *[T.StructField(c, T.DoubleType()) for c in FEATURE_COLUMNS]])
    out = standardize(spark.createDataFrame(rows, schema)).orderBy("session_id").collect()
    emb = np.array([r.embedding for r in out])
    assert emb.shape == (4, len(FEATURE_COLUMNS))
    # mean 2.5, population std sqrt(1.25)
    assert emb[:, 0] == pytest.approx([-1.5 / math.sqrt(1.25), -0.5 / math.sqrt(1.25),
                                       0.5 / math.sqrt(1.25), 1.5 / math.sqrt(1.25)], rel=1e-6)
    assert emb[:, :2].mean(axis=0) == pytest.approx([0, 0], abs=1e-6)
    assert emb[:, :2].std(axis=0) == pytest.approx([1, 1], rel=1e-6)
    assert not emb[:, 2:].any()
