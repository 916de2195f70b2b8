"""The offline interpreter on hand-made profiles and on a profile of the synthetic personas (no Spark)."""

from __future__ import annotations

import gzip
import json
import re
from urllib.parse import urlsplit

import pandas as pd
import profile_rows as pr
import pytest

from beha2vec.features import load_categories
from beha2vec.interpret_offline import Interpretation, interpret_all, interpret_cluster
from beha2vec.synth import PERSONAS, synth

BASE_SUMMARY = {"users": 1000, "sessions": 5000, "sessions_per_user": 5.0, "page_views_per_session": 5.0,
                "median_session_duration_s": 300.0, "mean_session_duration_s": 420.0,
                "engagement_s_per_user": 600.0, "engagement_s_per_session": 120.0, "bot_share": 0.0,
                "purchase_rate": 0.04, "revenue_per_user": 3.2, "mean_distance": 0.5}


def _with(**changes: float) -> dict[str, float]:
    return BASE_SUMMARY | changes


def _ga4_profile() -> pd.DataFrame:
    """Three GA4-like clusters (news in the morning, sales in the evening, video late at night) and a
    small one, with the baseline."""
    rows = (
        pr.summary(-1, BASE_SUMMARY, users=1000) + pr.hours(-1, {}) + pr.weekdays(-1, 2 / 7)
        + pr.visits(-1, "unit", {"/": (0.12, 0.12), "/news/world/a-1": (0.07, 0.07)})
        # news readers, weekday mornings, long sessions, few purchases
        + pr.summary(0, _with(median_session_duration_s=620.0, page_views_per_session=5.5,
                            engagement_s_per_session=150.0, purchase_rate=0.01))
        + pr.hours(0, {7: 0.15, 8: 0.15}) + pr.weekdays(0, 0.15)
        + pr.visits(0, "unit", {"/news/world/a-1": (0.20, 0.07), "/news/world/b-2": (0.12, 0.04),
                              "/news/business/c-3": (0.18, 0.06), "/": (0.15, 0.12),
                              "/sale/flash-deals": (0.02, 0.10)})
        # bargain hunters, weekend evenings, buyers with many pages per session
        + pr.summary(1, _with(median_session_duration_s=320.0, page_views_per_session=9.0,
                              purchase_rate=0.12))
        + pr.hours(1, {18: 0.06, 19: 0.12, 20: 0.12, 21: 0.12}) + pr.weekdays(1, 0.40)
        + pr.visits(1, "unit", {"/sale/flash-deals": (0.25, 0.08), "/sale/outlet": (0.10, 0.03),
                              "/product/blue-shirt-sku-a00001": (0.08, 0.04), "/cart": (0.06, 0.03)})
        # streamers, late at night, long sessions of few pages
        + pr.summary(2, _with(median_session_duration_s=900.0, page_views_per_session=2.5,
                            engagement_s_per_session=600.0, purchase_rate=0.04))
        + pr.hours(2, {22: 0.08, 23: 0.15, 0: 0.15, 1: 0.12}) + pr.weekdays(2, 0.30)
        + pr.visits(2, "unit", {"/video/show-a-episode-1": (0.30, 0.08),
                              "/video/show-b-episode-2": (0.15, 0.04), "/live/late-night": (0.25, 0.06)})
        # a small cluster: profiled, never interpreted
        + pr.summary(3, _with(purchase_rate=0.5), users=4, small=True)
        + pr.visits(3, "unit", {"/help/returns-1": (0.5, 0.01)}, users=4, small=True)
    )
    return pr.frame(rows)


# ---------------------------------------------------------------------------------------------
# (a) A GA4-like clustering.
# ---------------------------------------------------------------------------------------------


def test_ga4_clusters_are_named_by_topic_time_and_behaviour():
    results = interpret_all(_ga4_profile(), categories={})
    assert [r.cluster for r in results] == [0, 1, 2]  # the small cluster 3 is skipped
    news, sales, video = results

    assert news.summary.startswith(
        "Users who visit news world and news business pages (≥50% of their visits, 2.9× all users)")
    assert "especially weekday mornings (07–09 h)" in news.summary
    assert news.summary.endswith("with long sessions (median 10 min, 2.1× all users) and few purchases "
                                 "(1.0% vs 4.0%).")
    assert news.keywords == ["news world", "mornings", "long sessions"]

    assert sales.summary.startswith(
        "Users who visit sale pages (≥35% of their visits, 3.2× all users)")
    assert "especially weekend evenings (19–22 h)" in sales.summary
    assert "a purchase rate of 12% (3.0× all users)" in sales.summary
    assert "many pages per session (9.0 vs 5.0)" in sales.summary
    assert sales.keywords == ["sale", "evenings", "buyers"]

    assert video.summary.startswith(
        "Users who visit video and live pages (≥70% of their visits, 3.9× all users)")
    assert "especially late nights (23–02 h)" in video.summary
    assert ("long sessions (median 15 min, 3.0× all users) and few pages per session (2.5 vs 5.0)"
            in video.summary)
    assert video.keywords == ["video", "late night", "long sessions"]


def test_every_interpretation_is_one_short_sentence_and_three_distinct_keywords():
    for r in interpret_all(_ga4_profile(), categories={}):
        assert isinstance(r, Interpretation)
        assert r.summary.endswith(".") and r.summary.count(". ") == 0
        assert len(r.summary.split()) <= 40
        assert len(r.keywords) == 3 and len(set(r.keywords)) == 3
        assert all(k == k.lower() and 0 < len(k) <= 32 for k in r.keywords)


def test_interpretations_do_not_depend_on_row_order():
    profile = _ga4_profile()
    first = interpret_all(profile, categories={})
    assert interpret_all(profile, categories={}) == first
    shuffled = profile.sample(frac=1, random_state=3).reset_index(drop=True)
    assert interpret_all(shuffled, categories={}) == first


def test_one_cluster_can_be_interpreted_alone_and_an_unknown_one_fails():
    profile = _ga4_profile()
    assert interpret_cluster(profile, 1, {}) == interpret_all(profile, {})[1]
    with pytest.raises(ValueError, match="cluster 7"):
        interpret_cluster(profile, 7, {})


def test_a_second_segment_names_the_topic_only_where_paths_go_deeper_below_it():
    rows = (pr.summary(-1, BASE_SUMMARY) + pr.summary(0, BASE_SUMMARY)
            + pr.visits(0, "unit", {"/category/electronics": (0.30, 0.10), "/account/orders": (0.20, 0.02),
                                  "/category/electronics/men": (0.10, 0.02)}))
    result = interpret_cluster(pr.frame(rows), 0, {})
    assert result.summary.startswith(
        "Users who visit category electronics and account pages (≥60% of their visits, 4.3× all users)")
    assert result.keywords[:2] == ["category electronics", "account"]


def test_a_frequent_over_represented_topic_outranks_rare_pages_of_higher_lift():
    """Long-tail product pages top the list by lift; the much visited category pages, with a clear lift
    of their own, still name the cluster, as share × ln(lift) ranks them first."""
    rows = (pr.summary(-1, BASE_SUMMARY) + pr.summary(0, BASE_SUMMARY) + pr.hours(-1, {}) + pr.hours(0, {})
            + [pr.row(0, "unit_distinctive", f"/product/item-sku-a{i}", share=0.004, base=0.0005, rank=i + 1)
               for i in range(10)]
            + [pr.row(0, "unit", "/category/apparel/men", share=0.12, base=0.03, rank=1),
               pr.row(0, "unit", "/", share=0.10, base=0.09, rank=2),
               pr.row(0, "unit", "/category/apparel", share=0.08, base=0.02, rank=3)])
    result = interpret_cluster(pr.frame(rows), 0, {})
    assert result.summary.startswith(
        "Users who visit category apparel pages (≥20% of their visits, 4.0× all users)")
    assert result.keywords == ["category apparel", "product", "any time"]


# ---------------------------------------------------------------------------------------------
# (b) Web-tracking: domains and their categories.
# ---------------------------------------------------------------------------------------------


def _web_profile() -> pd.DataFrame:
    rows = (pr.summary(-1, BASE_SUMMARY) + pr.hours(-1, {}) + pr.summary(0, BASE_SUMMARY) + pr.hours(0, {})
            + pr.visits(-1, "domain", {"youtube.com": (0.10, 0.10)})
            + pr.visits(0, "domain", {"youtube.com": (0.30, 0.10), "netflix.com": (0.20, 0.05),
                                    "twitch.tv": (0.10, 0.04), "obscure-streams.net": (0.05, 0.01),
                                    "google.com": (0.10, 0.15)}))
    return pr.frame(rows)


def test_domains_are_named_with_the_bundled_categories():
    result = interpret_all(_web_profile(), load_categories(""))[0]
    assert result.summary.startswith(
        "Users who visit video sites youtube.com and netflix.com (≥50% of their visits, 3.3× all users)")
    assert result.keywords == ["video", "gaming", "obscure-streams.net"]


def test_the_bundled_map_is_the_default_and_another_map_is_followed():
    assert interpret_all(_web_profile()) == interpret_all(_web_profile(), load_categories(""))
    other = interpret_all(_web_profile(), {"youtube.com": "video", "netflix.com": "streaming"})[0]
    assert other.summary.startswith(
        "Users who visit video site youtube.com and streaming site netflix.com (≥50%")
    assert other.keywords == ["video", "streaming", "twitch.tv"]
    bare = interpret_all(_web_profile(), {})[0]
    assert bare.summary.startswith("Users who visit youtube.com and netflix.com (≥50% of their visits")
    assert bare.keywords == ["youtube.com", "netflix.com", "twitch.tv"]


# ---------------------------------------------------------------------------------------------
# (c) Missing facets.
# ---------------------------------------------------------------------------------------------


def test_without_time_facets_or_engagement_there_is_still_a_sentence_and_three_keywords():
    no_engagement = {k: v for k, v in BASE_SUMMARY.items() if not k.startswith("engagement")}
    longer = no_engagement | {"median_session_duration_s": 100.0}
    rows = (pr.summary(-1, no_engagement) + pr.summary(0, longer)
            + pr.visits(0, "unit", {"frontpage": (0.5, 0.3), "on-air": (0.2, 0.05)}))
    result = interpret_cluster(pr.frame(rows), 0, {})
    assert result.summary == ("Users who visit on air and frontpage pages (≥70% of their visits, "
                              "2.0× all users), with short sessions (median 100 s, 0.3× all users).")
    assert result.keywords == ["on air", "frontpage", "quick visits"]


def test_a_profile_with_almost_nothing_falls_back_to_plain_words():
    rows = pr.summary(-1, {"users": 10.0}) + pr.summary(0, {"users": 5.0})
    flat_clock = pr.hours(-1, {}) + pr.hours(0, {})
    result = interpret_cluster(pr.frame(rows + flat_clock), 0, {})
    assert result.summary == ("Users with no clearly distinctive pages or sites, "
                              "at ordinary hours and with typical sessions.")
    assert result.keywords == ["no clear topic", "any time", "typical sessions"]
    untimed = interpret_cluster(pr.frame(rows), 0, {})  # msnbc: no clock, so nothing said of hours
    assert untimed.summary == "Users with no clearly distinctive pages or sites, with typical sessions."
    assert untimed.keywords[:2] == ["no clear topic", "typical sessions"] and len(set(untimed.keywords)) == 3


def test_a_weekend_lean_alone_is_named_and_a_flat_clock_is_not():
    rows = (pr.summary(-1, BASE_SUMMARY) + pr.summary(0, BASE_SUMMARY) + pr.hours(-1, {}) + pr.hours(0, {})
            + pr.weekdays(-1, 2 / 7) + pr.weekdays(0, 0.5)
            + pr.visits(0, "unit", {"/sale/x": (0.3, 0.1)}))
    result = interpret_cluster(pr.frame(rows), 0, {})
    assert result.summary == ("Users who visit sale pages (≥30% of their visits, 3.0× all users), "
                              "mostly at weekends.")
    assert result.keywords == ["sale", "weekend", "typical sessions"]


# ---------------------------------------------------------------------------------------------
# (d) Nothing that looks like an e-mail address or a query string gets out.
# ---------------------------------------------------------------------------------------------


def test_query_strings_and_email_addresses_are_never_emitted():
    rows = (pr.summary(-1, BASE_SUMMARY) + pr.summary(0, BASE_SUMMARY)
            + pr.visits(0, "unit", {"/search?q=john.doe@example.com": (0.20, 0.05),
                                  "/news/world/x-1?utm_source=mail&email=a@b.co": (0.15, 0.05),
                                  "/jane@example.org/inbox": (0.30, 0.01),
                                  "jane%40example.org": (0.30, 0.01),
                                  "/user/bob@example.net/inbox/2": (0.10, 0.04)}))
    result = interpret_cluster(pr.frame(rows), 0, {})
    text = " ".join([result.summary, *result.keywords])
    for leak in ("@", "%40", "?", "=", "example", "john", "jane", "bob", "utm", "mail"):
        assert leak not in text
    assert result.summary.startswith("Users who visit search and news world pages (≥35% of their visits")
    assert result.keywords == ["search", "news world", "user"]


# ---------------------------------------------------------------------------------------------
# The synthetic personas, profiled in pandas with the true persona as the cluster.
# ---------------------------------------------------------------------------------------------

SYNTH_USERS, SYNTH_DAYS, SYNTH_SEED = 1200, 10, 11
TOP_N, MIN_SUPPORT = 10, 3
# what each persona's interpretation must name (docs of lib/beha2vec/synth.py PERSONAS)
CHARACTERISTIC = {
    "news_junkie": ("news",), "bargain_hunter": ("sale",), "tech_researcher": ("reviews", "electronics"),
    "sports_fan": ("sports",), "night_streamer": ("video", "live"), "casual_shopper": ("apparel", "home"),
    "social_scroller": ("community",), "business_reader": ("business",),
}


def _ga4_events(files: list[str]) -> pd.DataFrame:
    rows = []
    for name in files:
        with gzip.open(name, "rt", encoding="utf-8") as handle:
            for line in handle:
                event = json.loads(line)
                params = {p["key"]: next(iter(p["value"].values())) for p in event.get("event_params", [])}
                rows.append((event["user_pseudo_id"], int(event["event_timestamp"]), event["event_name"],
                             params.get("page_location"), params.get("ga_session_id"),
                             float(params.get("engagement_time_msec") or 0)))
    return pd.DataFrame(rows, columns=["user_id", "ts", "event_name", "url", "session", "engagement_ms"])


def _shares(counts: pd.DataFrame, facet: str) -> pd.DataFrame:
    """share, base_share (cluster -1) and lift of ``counts`` (cluster, key, value[, support])."""
    out = counts.copy()
    out["share"] = out["value"] / out.groupby("cluster")["value"].transform("sum")
    base = out[out["cluster"] == -1].set_index("key")["share"]
    out["base_share"] = out["key"].map(base)
    out["lift"] = out["share"] / out["base_share"]
    out["facet"] = facet
    return out


def _ranked(frame: pd.DataFrame, facet: str, order: list[str]) -> pd.DataFrame:
    ranked = frame.sort_values(["cluster", *order, "key"], ascending=[True] + [False] * len(order) + [True])
    ranked = ranked.assign(facet=facet, rank=ranked.groupby("cluster").cumcount() + 1)
    return ranked[ranked["rank"] <= TOP_N]


def _persona_profile(events: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """A minimal ``cluster_profiles`` table in pandas: the true persona is the cluster."""
    cluster_of = {p.name: i for i, p in enumerate(PERSONAS)}
    persona = truth.set_index("user_id")["persona"].map(cluster_of)
    events = events.assign(cluster=events["user_id"].map(persona))
    both = pd.concat([events, events.assign(cluster=-1)])  # each event in its cluster and in the baseline

    views = both[both["event_name"] == "page_view"]
    views = views.assign(key=views["url"].map(lambda u: urlsplit(u).path))
    pages = views.groupby(["cluster", "key"]).agg(value=("ts", "size"), support=("user_id", "nunique"))
    pages = _shares(pages.reset_index(), "unit")
    supported = pages[pages["support"] >= MIN_SUPPORT]
    visit_rows = pd.concat([_ranked(pages, "unit", ["share"]),
                            _ranked(supported, "unit_distinctive", ["lift", "share"])])

    sessions = both.groupby(["cluster", "user_id", "session"]).agg(
        start=("ts", "min"), end=("ts", "max"), engagement_ms=("engagement_ms", "sum"),
        page_views=("event_name", lambda e: int((e == "page_view").sum()))).reset_index()
    start = pd.to_datetime(sessions["start"], unit="us", utc=True)
    time_rows = []
    for facet, keys, rank in (("hour", start.dt.hour.astype(str), start.dt.hour + 1),
                              ("weekday", start.dt.day_name(), start.dt.weekday + 1)):
        counts = sessions.assign(key=keys, rank=rank).groupby(["cluster", "key", "rank"]).size()
        counts = counts.rename("value").reset_index()
        time_rows.append(_shares(counts, facet))

    buyers = both[both["event_name"] == "purchase"].groupby("cluster")["user_id"].nunique()
    per = sessions.groupby("cluster")
    users = both.groupby("cluster")["user_id"].nunique()
    summary = pd.DataFrame({
        "users": users, "sessions": per.size(),
        "page_views_per_session": per["page_views"].mean(),
        "median_session_duration_s": (sessions["end"] - sessions["start"]).div(1e6)
                                     .groupby(sessions["cluster"]).median(),
        "engagement_s_per_session": per["engagement_ms"].sum() / 1000 / per.size(),
        "purchase_rate": buyers.reindex(users.index, fill_value=0) / users,
    }).rename_axis("cluster").reset_index().melt("cluster", var_name="key", value_name="value")
    summary["facet"] = "summary"

    rows = pd.concat([summary, visit_rows, *time_rows], ignore_index=True)
    rows["users"] = rows["cluster"].map(users)
    rows = rows.assign(model="truth", algorithm="persona", k=len(PERSONAS), is_small=False)
    return rows[pr.COLUMNS]


@pytest.fixture(scope="module")
def personas(tmp_path_factory) -> dict[str, Interpretation]:
    out = tmp_path_factory.mktemp("synth_ga4")
    written = synth("ga4", SYNTH_USERS, SYNTH_DAYS, len(PERSONAS), SYNTH_SEED, out, workers=1)
    truth = pd.read_csv(written.truth_users, dtype=str)
    profile = _persona_profile(_ga4_events(written.files), truth)
    return {PERSONAS[r.cluster].name: r for r in interpret_all(profile, categories={})}


def test_the_synthetic_personas_are_named_by_their_characteristic_sections(personas):
    assert sorted(personas) == sorted(CHARACTERISTIC)
    for name, words in CHARACTERISTIC.items():
        result = personas[name]
        topic = re.match(r"Users who visit (.*?) \(", result.summary)
        assert topic, result.summary
        assert any(w in topic.group(1) for w in words), (name, result.summary)
        assert topic.group(1).startswith(result.keywords[0]) and len(set(result.keywords)) == 3
        assert len(result.summary.split()) <= 40


def test_the_synthetic_night_streamers_are_seen_at_night_with_long_sessions(personas):
    streamers = personas["night_streamer"]
    assert "late night" in streamers.keywords and "long sessions" in streamers.keywords
    assert "buyers" in personas["bargain_hunter"].keywords
