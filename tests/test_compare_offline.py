"""The offline cluster comparison on hand-made profiles (pure pandas, no Spark)."""

from __future__ import annotations

import pandas as pd
import profile_rows as pr
import pytest

from beha2vec.compare_offline import Comparison, compare_all

BASE_SUMMARY = {"users": 1000, "sessions": 5000, "sessions_per_user": 5.0, "page_views_per_session": 5.0,
                "median_session_duration_s": 300.0, "mean_session_duration_s": 420.0,
                "engagement_s_per_user": 600.0, "engagement_s_per_session": 120.0, "bot_share": 0.0,
                "purchase_rate": 0.04, "revenue_per_user": 3.2, "mean_distance": 0.5}
DEVICES = {"desktop": 0.5, "mobile": 0.45, "tablet": 0.05}
BASE_VISITS = {"/": (0.12, 0.12), "/news/world/a-1": (0.07, 0.07), "/video/show-a-episode-1": (0.08, 0.08)}


def _with(**changes: float) -> dict[str, float]:
    return BASE_SUMMARY | changes


def _cluster(cluster: int, visits: dict[str, tuple[float, float]], hours: dict[int, float], weekend: float,
             devices: dict[str, float] = DEVICES, **summary: float) -> list[dict]:
    users = int(summary.pop("users", 100))
    return (pr.summary(cluster, _with(users=users, **summary), users=users)
            + pr.visits(cluster, "unit", visits) + pr.hours(cluster, hours) + pr.weekdays(cluster, weekend)
            + pr.shares(cluster, "device_category", devices, DEVICES))


def _baseline() -> list[dict]:
    return _cluster(-1, BASE_VISITS, {}, 2 / 7, users=1000)


# cluster 1: streamers, late at night, long sessions; cluster 3: news readers, mornings, short sessions
STREAMERS = dict(visits={"/video/show-a-episode-1": (0.20, 0.08), "/video/show-b-episode-2": (0.12, 0.04),
                         "/live/late-night": (0.10, 0.03), "/": (0.06, 0.12)},
                 hours={22: 0.08, 23: 0.15, 0: 0.15, 1: 0.12}, weekend=0.30,
                 median_session_duration_s=900.0, engagement_s_per_session=400.0)
NEWS = dict(visits={"/news/world/a-1": (0.25, 0.07), "/news/world/b-2": (0.16, 0.04), "/": (0.15, 0.12),
                    "/video/show-a-episode-1": (0.03, 0.08), "/weather/today": (0.02, 0.02)},
            hours={7: 0.15, 8: 0.15}, weekend=0.12, median_session_duration_s=180.0,
            engagement_s_per_session=100.0)
# cluster 2 much like cluster 3; cluster 4 small; all with the same devices
NEWS_TWIN = dict(visits={"/news/world/a-1": (0.24, 0.07), "/news/world/b-2": (0.16, 0.04), "/": (0.16, 0.12),
                         "/video/show-a-episode-1": (0.03, 0.08), "/weather/today": (0.02, 0.02)},
                 hours={7: 0.14, 8: 0.15}, weekend=0.13, median_session_duration_s=190.0,
                 engagement_s_per_session=105.0)


def _profile() -> pd.DataFrame:
    rows = (_baseline() + _cluster(1, **STREAMERS) + _cluster(2, **NEWS_TWIN) + _cluster(3, **NEWS)
            + pr.summary(4, _with(purchase_rate=0.9), users=3, small=True)
            + pr.visits(4, "unit", {"/help/returns": (0.9, 0.01)}, users=3, small=True))
    return pr.frame(rows)


def _by_pair(comparisons: list[Comparison]) -> dict[tuple[int, int], Comparison]:
    return {(c.cluster_a, c.cluster_b): c for c in comparisons}


# ---------------------------------------------------------------------------------------------
# Pairs.
# ---------------------------------------------------------------------------------------------


def test_every_pair_of_clusters_that_are_not_small_nor_the_baseline_is_compared_once_in_order():
    comparisons = compare_all(_profile(), categories={})
    assert [(c.cluster_a, c.cluster_b) for c in comparisons] == [(1, 2), (1, 3), (2, 3)]
    assert all(isinstance(c, Comparison) for c in comparisons)


def test_max_pairs_keeps_the_pairs_that_differ_most_still_in_pair_order():
    profile = _profile()
    assert [(c.cluster_a, c.cluster_b) for c in compare_all(profile, {}, max_pairs=2)] == [(1, 2), (1, 3)]
    assert compare_all(profile, {}, max_pairs=1)[0] == _by_pair(compare_all(profile, {}))[(1, 3)]
    assert compare_all(profile, {}, max_pairs=10) == compare_all(profile, {})
    assert compare_all(profile, {}, max_pairs=0) == []
    with pytest.raises(ValueError, match="max_pairs"):
        compare_all(profile, {}, max_pairs=-1)


# ---------------------------------------------------------------------------------------------
# Differences.
# ---------------------------------------------------------------------------------------------


def test_planted_streamers_and_news_readers_are_told_apart_with_both_numbers():
    result = _by_pair(compare_all(_profile(), categories={}))[(1, 3)]
    evidence = list(result.evidence)
    assert 2 <= len(evidence) <= 6
    # both clusters' shares of the right topics, cluster 1's first; cluster 1 lists no news page,
    # so its share is bounded by its least visited listed page
    assert evidence[:2] == ["video pages: 32% of visits vs 3.0%",
                            "news world pages: ≤6.0% of visits per page vs 41%"]
    assert "late nights 23–02 h: 42% of session starts vs 9.5%" in evidence
    assert "mornings 07–09 h: 5.0% of session starts vs 30%" in evidence
    assert "median session: 15 min vs 3 min" in evidence  # 900 s against 180 s

    assert "Cluster 1" in result.summary and "Cluster 3" in result.summary
    assert len(result.summary.split()) <= 45
    assert result.summary.endswith(".") and result.summary.count(". ") == 0
    assert result.summary == (
        "Cluster 1 visits video pages more (32% of visits vs 3.0%) and is more active late nights "
        "(23–02 h: 42% of session starts vs 9.5%), while Cluster 3 visits news world pages more "
        "(41% of visits vs ≤6.0% per page).")


def test_behaviour_time_and_device_differences_pass_only_their_thresholds():
    rows = (_baseline()
            + _cluster(1, BASE_VISITS, {}, 0.40, devices={"desktop": 0.8, "mobile": 0.15, "tablet": 0.05},
                       purchase_rate=0.12, page_views_per_session=9.0, sessions_per_user=5.5)
            + _cluster(2, BASE_VISITS, {}, 0.20, devices={"desktop": 0.3, "mobile": 0.62, "tablet": 0.08},
                       purchase_rate=0.02, page_views_per_session=4.0, sessions_per_user=5.0))
    result = compare_all(pr.frame(rows), categories={})[0]
    assert set(result.evidence) == {
        "purchase rate: 12% vs 2.0%", "pages per session: 9.0 vs 4.0",
        "weekend: 40% of session starts vs 20%", "device desktop: 80% of users vs 30%",
        "device mobile: 15% of users vs 62%"}
    assert result.evidence[0] == "device mobile: 15% of users vs 62%"  # the heaviest first
    assert "sessions per user" not in " ".join(result.evidence)  # 1.1× is not a difference
    assert "tablet" not in " ".join(result.evidence)  # 5% vs 8% is too few points
    assert result.summary.startswith(
        "Cluster 2 is more often on mobile (62% of users vs 15%), while Cluster 1 ")


def test_domains_are_named_with_their_categories():
    visits = {"youtube.com": (0.30, 0.10), "google.com": (0.20, 0.20), "bbc.co.uk": (0.05, 0.10)}
    others = {"bbc.co.uk": (0.35, 0.10), "google.com": (0.20, 0.20), "youtube.com": (0.04, 0.10)}
    rows = (_baseline() + pr.summary(1, BASE_SUMMARY) + pr.visits(1, "domain", visits)
            + pr.summary(2, BASE_SUMMARY) + pr.visits(2, "domain", others))
    result = compare_all(pr.frame(rows), categories={"youtube.com": "video", "bbc.co.uk": "news"})[0]
    assert result.evidence[:2] == ("news site bbc.co.uk: 5.0% of visits vs 35%",
                                   "video site youtube.com: 30% of visits vs 4.0%")
    assert result.summary == ("Cluster 2 visits news site bbc.co.uk more (35% of visits vs 5.0%), while "
                              "Cluster 1 visits video site youtube.com more (30% of visits vs 4.0%).")
    assert compare_all(pr.frame(rows)) == [result]  # the bundled map knows both
    bare = compare_all(pr.frame(rows), categories={})[0]
    assert bare.evidence[:2] == ("bbc.co.uk: 5.0% of visits vs 35%", "youtube.com: 30% of visits vs 4.0%")


# ---------------------------------------------------------------------------------------------
# Determinism and honesty.
# ---------------------------------------------------------------------------------------------


def test_comparisons_do_not_depend_on_row_order_nor_on_the_run():
    profile = _profile()
    first = compare_all(profile, categories={})
    assert compare_all(profile, categories={}) == first
    shuffled = profile.sample(frac=1, random_state=7).reset_index(drop=True)
    assert compare_all(shuffled, categories={}) == first


def test_near_identical_clusters_are_said_to_differ_little_with_their_largest_differences():
    result = _by_pair(compare_all(_profile(), categories={}))[(2, 3)]
    assert result.summary.startswith("Cluster 2 and Cluster 3 differ little in these numbers; "
                                     "the largest differences are ")
    assert len(result.evidence) == 2
    assert all(e.split(": ")[1] in result.summary for e in result.evidence)
    assert len(result.summary.split()) <= 45


def test_a_profile_with_only_sizes_still_compares_honestly():
    rows = pr.summary(-1, {"users": 10.0}) + pr.summary(1, {"users": 6.0}) + pr.summary(2, {"users": 4.0})
    result = compare_all(pr.frame(rows), categories={})[0]
    assert result == Comparison(1, 2, "Cluster 1 and Cluster 2 differ little in these numbers; the largest "
                                      "differences are users (6 vs 4).", ("users: 6 vs 4",))


def test_query_strings_and_email_addresses_are_never_emitted():
    leaky = {"/search?q=john.doe@example.com": (0.30, 0.05), "/jane@example.org/inbox": (0.30, 0.01),
             "/account?token=s3cr3t#frag": (0.20, 0.02), "jane%40example.org": (0.25, 0.01)}
    countries = {"bob@example.net": 0.6, "Côte d'Ivoire?token=abc": 0.3, "France": 0.1}
    rows = (_baseline() + pr.summary(1, BASE_SUMMARY) + pr.visits(1, "unit", leaky)
            + pr.shares(1, "country", countries, countries)
            + pr.summary(2, BASE_SUMMARY)
            + pr.visits(2, "unit", {"/news/world/a-1": (0.5, 0.07), "/": (0.02, 0.12)})
            + pr.shares(2, "country", {"France": 0.9, "Côte d'Ivoire": 0.02}, countries))
    result = compare_all(pr.frame(rows), categories={})[0]
    text = " ".join([result.summary, *result.evidence])
    for leak in ("@", "%40", "?", "=", "#", "example", "john", "jane", "bob", "token", "s3cr3t", "frag"):
        assert leak not in text
    assert "search pages: 30% of visits vs ≤2.0% per page" in result.evidence  # the key without its query
    assert "country Côte d'Ivoire: 30% of users vs 2.0%" in result.evidence  # letters of any script stay


def test_a_topic_a_cluster_does_not_list_is_compared_only_where_its_least_listed_share_bounds_it():
    rows = (_baseline() + pr.summary(1, BASE_SUMMARY) + pr.summary(2, BASE_SUMMARY)
            + pr.visits(1, "unit", {"/sale/a": (0.30, 0.05), "/news/world/a-1": (0.10, 0.07)})
            + pr.visits(2, "unit", {"/news/world/a-1": (0.50, 0.07), "/cart": (0.40, 0.05)}))
    result = compare_all(pr.frame(rows), categories={})[0]
    # cluster 2 may visit sale pages as much as its least listed key, 40%: nothing to say about them
    assert not any("sale" in e for e in result.evidence) and "sale" not in result.summary
    assert result.evidence[0] == "news world pages: 10% of visits vs 50%"
    assert "cart pages: ≤10% of visits per page vs 40%" in result.evidence
