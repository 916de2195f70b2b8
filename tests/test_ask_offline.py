"""The offline answerer of ``beha2vec ask`` on a hand-made profile with planted clusters (no Spark)."""

from __future__ import annotations

import pandas as pd
import pytest

from beha2vec.ask_offline import QUESTIONS, Answer, answer

COLUMNS = ["model", "algorithm", "k", "cluster", "is_small", "users", "facet", "key", "value", "share",
           "base_share", "lift", "rank"]
WEEK = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SIZES = {-1: 1000, 0: 300, 1: 400, 2: 250, 3: 50}
SMALL = {3}


def _row(cluster: int, facet: str, key: str, *, value=None, share=None, base=None, rank=None) -> dict:
    lift = share / base if share is not None and base else None
    return dict(model="combined", algorithm="kmeans", k=4, cluster=cluster, is_small=cluster in SMALL,
                users=SIZES[cluster], facet=facet, key=key, value=value, share=share, base_share=base,
                lift=lift, rank=rank)


def _visits(cluster: int, facet: str, keys: dict[str, tuple[float, float]]) -> list[dict]:
    """Rows of ``facet`` (share, base share per key) and of ``facet_distinctive``, ranked as profile ranks."""
    by_share = sorted(keys, key=lambda k: (-keys[k][0], k))
    by_lift = sorted(keys, key=lambda k: (-keys[k][0] / keys[k][1], -keys[k][0], k))
    return ([_row(cluster, facet, k, share=keys[k][0], base=keys[k][1], rank=i + 1)
             for i, k in enumerate(by_share)]
            + [_row(cluster, f"{facet}_distinctive", k, share=keys[k][0], base=keys[k][1], rank=i + 1)
               for i, k in enumerate(by_lift)])


def _hours(cluster: int, peaks: dict[int, float]) -> list[dict]:
    """Hour rows against a flat baseline: ``peaks`` hours get their share, the others share the rest."""
    rest = (1 - sum(peaks.values())) / (24 - len(peaks))
    return [_row(cluster, "hour", str(h), share=peaks.get(h, rest), base=1 / 24, rank=h + 1)
            for h in range(24)]


def _weekdays(cluster: int, weekend: float) -> list[dict]:
    """Weekday rows with ``weekend`` as the Saturday + Sunday share, against a flat baseline."""
    shares = [(1 - weekend) / 5] * 5 + [weekend / 2] * 2
    return [_row(cluster, "weekday", day, share=s, base=2 / 7 / 2 if i >= 5 else 5 / 7 / 5, rank=i + 1)
            for i, (day, s) in enumerate(zip(WEEK, shares, strict=True))]


def _summary(cluster: int, **values: float) -> list[dict]:
    values = {"users": float(SIZES[cluster])} | values
    return [_row(cluster, "summary", k, value=v) for k, v in values.items()]


def _profile() -> pd.DataFrame:
    """News readers in the morning (0), shopping buyers in the evening (1), video streamers late at night
    (2) and a small cluster of quick visitors (3), with the all-users baseline (-1)."""
    rows = (
        _summary(-1, sessions_per_user=5.5, page_views_per_session=5.0, median_session_duration_s=400.0,
                 engagement_s_per_session=200.0, purchase_rate=0.06)
        + _hours(-1, {}) + _weekdays(-1, 2 / 7)
        + _visits(-1, "domain", {"youtube.com": (0.20, 0.20), "amazon.com": (0.15, 0.15),
                                 "nytimes.com": (0.12, 0.12)})
        + _summary(0, sessions_per_user=8.0, page_views_per_session=5.5, median_session_duration_s=600.0,
                   engagement_s_per_session=150.0, purchase_rate=0.01)
        + _hours(0, {7: 0.15, 8: 0.15}) + _weekdays(0, 0.15)
        + _visits(0, "domain", {"nytimes.com": (0.40, 0.12), "bbc.co.uk": (0.20, 0.06),
                                "youtube.com": (0.05, 0.20)})
        + _visits(0, "path", {"/news/world/a-1": (0.30, 0.08), "/news/business/b-2": (0.20, 0.05)})
        + _summary(1, sessions_per_user=4.0, page_views_per_session=9.0, median_session_duration_s=320.0,
                   engagement_s_per_session=100.0, purchase_rate=0.15)
        + _hours(1, {19: 0.12, 20: 0.12, 21: 0.12}) + _weekdays(1, 0.40)
        + _visits(1, "domain", {"amazon.com": (0.45, 0.15), "ebay.com": (0.15, 0.05),
                                "youtube.com": (0.10, 0.20)})
        + _visits(1, "path", {"/cart": (0.10, 0.03), "/product/blue-shirt": (0.08, 0.02),
                              "/search?q=john.doe@example.com": (0.12, 0.01),
                              "/account/jane%40mail.org/orders": (0.04, 0.01)})
        + _summary(2, sessions_per_user=5.0, page_views_per_session=2.0, median_session_duration_s=1500.0,
                   engagement_s_per_session=700.0, purchase_rate=0.02)
        + _hours(2, {23: 0.15, 0: 0.15, 1: 0.15}) + _weekdays(2, 0.30)
        + _visits(2, "domain", {"youtube.com": (0.50, 0.20), "netflix.com": (0.25, 0.06)})
        + _visits(2, "path", {"/watch": (0.45, 0.15), "/live/late-show": (0.20, 0.05)})
        + _summary(3, sessions_per_user=1.2, page_views_per_session=1.5, median_session_duration_s=60.0,
                   engagement_s_per_session=20.0, purchase_rate=0.0)
        + _visits(3, "domain", {"wikipedia.org": (0.60, 0.02)})
    )
    return pd.DataFrame(rows, columns=COLUMNS)


def _interpretations() -> pd.DataFrame:
    return pd.DataFrame([
        dict(cluster=2, replicate=1, backend="llm", model="gpt", summary="Another wording.",
             keywords=["x", "y", "z"], consistency=0.9),
        dict(cluster=2, replicate=0, backend="llm", model="gpt",
             summary="Users who stream video late at night.",
             keywords=["video", "late night", "long sessions"], consistency=0.9),
    ])


def _comparisons() -> pd.DataFrame:
    return pd.DataFrame([dict(cluster_a=0, cluster_b=1, summary="News readers buy less than shoppers.",
                              evidence=["purchase rate 1.0% vs 15%", "nytimes.com vs amazon.com"])])


def ask(question: str, **kw) -> Answer:
    return answer(question, _profile(), **({"categories": {}} | kw))


# ---------------------------------------------------------------------------------------------
# One test per intent.
# ---------------------------------------------------------------------------------------------


def test_help_lists_every_offline_question_and_how_to_get_an_endpoint():
    for question in ("help", "Help?", "", "what can I ask"):
        reply = ask(question)
        assert reply.answered and reply.sources == ()
        assert all(line in reply.text for line in QUESTIONS)
        assert "llm.base_url" in reply.text and "llm.api_key_env" in reply.text


def test_how_many_clusters_and_users():
    clusters = ask("How many clusters are there?")
    assert clusters.text == ("There are 4 clusters of 1,000 clustered users (clustering combined / kmeans, "
                             "k = 4). Cluster 3 is small.")
    assert "cluster_profiles: summary/users" in clusters.sources
    assert ask("how many users?").text.startswith("1,000 users are clustered, in 4 clusters")
    assert ask("How many users are in cluster 2?").text == (
        "Cluster 2 has 250 users, 25% of the 1,000 clustered users.")


def test_the_largest_and_the_smallest_cluster_with_users_and_share():
    largest = ask("Which cluster is the largest?")
    assert largest.text == ("Cluster 1 is the largest: 400 users, 40% of the 1,000 clustered users. "
                            "Next: cluster 0 (300 users, 30%); cluster 2 (250 users, 25%).")
    assert largest.sources == ("cluster_profiles: summary/users",)
    assert ask("which cluster has the most users").text == largest.text
    assert ask("which cluster is smallest").text.startswith(
        "Cluster 3 (small) is the smallest: 50 users, 5.0% of the 1,000 clustered users.")


def test_describe_a_cluster_with_its_interpretation_topics_and_numbers():
    reply = answer("Describe cluster 2", _profile(), _interpretations(), categories={})
    assert reply.answered
    assert reply.text.startswith("Cluster 2: 250 users, 25% of the 1,000 clustered users. "
                                 "Interpretation: Users who stream video late at night. "
                                 "Keywords: video, late night, long sessions.")
    assert "Another wording" not in reply.text  # replicate 0 only
    assert ("Most distinctive: youtube.com (≥50% of its visits, 2.5× all users); "
            "netflix.com (≥25% of its visits, 4.2× all users).") in reply.text
    assert reply.text.endswith("Median session duration 25 min (all users 7 min); "
                               "page views per session 2.0 (all users 5.0).")
    assert {"cluster_interpretations", "cluster_profiles: domain_distinctive, domain",
            "cluster_profiles: summary/median_session_duration_s"} <= set(reply.sources)
    plain = ask("what is cluster 0?")
    assert "Interpretation" not in plain.text
    assert "nytimes.com (≥40% of its visits, 3.3× all users)" in plain.text
    assert ask("cluster 3").text.startswith("Cluster 3 (small): 50 users, 5.0%")


def test_which_cluster_visits_a_domain_a_path_or_a_category_most():
    youtube = ask("Which cluster visits youtube.com most?")
    assert youtube.text.startswith(
        "Cluster 2 visits 'youtube.com' most: ≥50% of its visits, 2.5× all users. "
        "Next: cluster 1 ≥10% of its visits, 0.5× all users; cluster 0 ≥5.0% of its visits, 0.2× all users.")
    assert youtube.sources == ("cluster_profiles: domain, domain_distinctive",)
    assert ask("which cluster watches youtube the most").text.startswith(
        "Cluster 2 visits 'youtube' most (domains: youtube.com): ≥50% of its visits, 2.5× all users.")
    news = ask("which cluster reads news the most?")  # no domain matches: the paths do
    assert news.text.startswith("Cluster 0 visits 'news' most (pages: news business, news world): "
                                "≥50% of its visits, 3.8× all users. 3 other clusters list no such page")
    video = ask("which cluster watches video sites most", categories=None)  # the bundled domain categories
    assert video.text.startswith("Cluster 2 visits 'video' most (domains: netflix.com, youtube.com): "
                                 "≥75% of its visits, 2.9× all users.")


def test_top_domain_or_page_of_a_cluster_and_which_cluster_tops_with_a_domain():
    top = ask("What is cluster 2's top domain?")
    assert top.text == ("The top domain of cluster 2 is youtube.com (50% of its visits, 2.5× all users); "
                        "then netflix.com (25% of its visits, 4.2× all users).")
    assert top.sources == ("cluster_profiles: domain",)
    assert ask("top page of cluster 0").text.startswith(
        "The top page of cluster 0 is /news/world/a-1 (30% of its visits, 3.8× all users)")
    assert ask("which cluster's top domain is amazon.com?").text == (
        "The top domain of cluster 1 is amazon.com (45% of its visits, 3.0× all users).")
    assert ask("which cluster has wikipedia.org as its top domain").text.startswith(
        "The top domain of cluster 3 (small) is wikipedia.org (60%")
    assert ask("which cluster's top domain is google.com?").text == (
        "No cluster's top domain is 'google.com'. The top domains are: cluster 0 nytimes.com (40%); "
        "cluster 1 amazon.com (45%); cluster 2 youtube.com (50%); cluster 3 (small) wikipedia.org (60%).")


@pytest.mark.parametrize(("question", "expected"), [
    ("Which cluster has the longest sessions?",
     "Cluster 2 has the longest sessions: median session duration 25 min, against 7 min for all users "
     "(3.8×). Next: cluster 0 10 min; cluster 1 5 min."),
    ("which cluster has the shortest sessions",
     "Cluster 3 (small) has the shortest sessions: median session duration 60 s, against 7 min for all users "
     "(0.1×). Next: cluster 1 5 min; cluster 0 10 min."),
    ("which cluster views the most pages per session",
     "Cluster 1 has the most pages per session: page views per session 9.0, against 5.0 for all users "
     "(1.8×). Next: cluster 0 5.5; cluster 2 2.0."),
    ("which cluster is the most engaged?",
     "Cluster 2 has the most engaged users: engagement per session 12 min, against 3 min for all users "
     "(3.5×). Next: cluster 0 2 min; cluster 1 100 s."),
    ("Which cluster has the highest purchase rate?",
     "Cluster 1 has the highest purchase rate: purchase rate 15%, against 6.0% for all users (2.5×). "
     "Next: cluster 2 2.0%; cluster 0 1.0%."),
    ("which cluster has the most sessions per user",
     "Cluster 0 has the most sessions per user: sessions per user 8.0, against 5.5 for all users (1.5×). "
     "Next: cluster 2 5.0; cluster 1 4.0."),
    ("what is cluster 1's purchase rate?",
     "The purchase rate of cluster 1 is 15%, against 6.0% for all users (2.5×)."),
])
def test_summary_metrics_rank_the_clusters(question, expected):
    reply = ask(question)
    assert reply.text == expected and reply.answered
    assert len(reply.sources) == 1 and reply.sources[0].startswith("cluster_profiles: summary/")


def test_a_summary_key_the_profile_lacks_is_explained():
    reply = ask("which cluster brings the most revenue")
    assert reply.answered and reply.text.startswith("The profile has no revenue per user (revenue_per_user)")


def test_when_a_cluster_is_active_and_which_cluster_is_most_active_at_a_time():
    reply = ask("When is cluster 2 active?")
    assert reply.text == (
        "Cluster 2 is most active, against all users, in late nights (23–02 h): 45% of its session starts vs "
        "12% for all users (3.6×). Its busiest hour is 00 h (15% of its session starts). "
        "Weekends (Saturday and Sunday): 30% of its session starts vs 29% for all users (1.1×).")
    assert reply.sources == ("cluster_profiles: hour", "cluster_profiles: weekday")
    assert ask("which cluster is most active in the morning?").text.startswith(
        "Cluster 0 starts the largest share of its sessions in mornings (05–11 h): 43% vs 25% for all users")
    assert ask("which cluster is most active at weekends").text == (
        "Cluster 1 starts the largest share of its sessions at weekends: 40% vs 29% for all users (1.4×). "
        "Next: cluster 2 30%; cluster 0 15%.")
    assert ask("which cluster is most active at night").text.startswith(
        "Cluster 2 starts the largest share of its sessions in the night (22–05 h): 55% vs 29% for all users")
    assert "- cluster 1: evenings (19–22 h): 36%" in ask("when are the clusters active").text


def test_compare_two_clusters_from_the_comparisons_or_from_their_numbers():
    stored = answer("Compare cluster 1 and 0", _profile(), comparisons=_comparisons(), categories={})
    assert stored.text == ("Cluster 1 vs cluster 0: News readers buy less than shoppers.\n"
                           "- purchase rate 1.0% vs 15%\n- nytimes.com vs amazon.com")
    assert stored.sources == ("cluster_comparisons",)
    numbers = answer("what is the difference between cluster 1 and cluster 2", _profile(),
                     comparisons=_comparisons(), categories={})
    assert numbers.text.splitlines() == [
        "Cluster 1 vs cluster 2 (all users in brackets):",
        "- users: 400 users, 40% vs 250 users, 25%",
        "- sessions per user: 4.0 vs 5.0 (5.5)",
        "- median session duration: 5 min vs 25 min (7 min)",
        "- page views per session: 9.0 vs 2.0 (5.0)",
        "- engagement per session: 100 s vs 12 min (3 min)",
        "- purchase rate: 15% vs 2.0% (6.0%)",
        "- distinctive topics: amazon.com (≥45%), ebay.com (≥15%) vs youtube.com (≥50%), netflix.com (≥25%)",
        "They differ most in purchase rate.",
    ]
    assert "cluster_profiles: summary/purchase_rate" in numbers.sources
    assert ask("cluster 1 vs 2").text == numbers.text


def test_descriptions_of_another_clustering_are_not_used():
    other = "encoder/kmeans/k=5"
    stale = _interpretations().assign(clustering=other)
    reply = answer("describe cluster 2", _profile(), stale, _comparisons().assign(clustering=other),
                   categories={})
    assert "Interpretation" not in reply.text and "cluster_interpretations" not in reply.sources
    current = answer("describe cluster 2", _profile(), stale.assign(clustering="combined/kmeans/k=4"),
                     categories={})
    assert "Interpretation: Users who stream video late at night." in current.text
    compared = answer("compare cluster 0 and 1", _profile(), None, _comparisons().assign(clustering=other),
                      categories={})
    assert compared.sources[0] == "cluster_profiles: summary/users"


@pytest.mark.parametrize("question", ["What's the meaning of life?", "Why do cluster 2 users churn?",
                                      "which cluster visits foo most", "how many users visit youtube.com"])
def test_a_question_it_cannot_read_needs_an_endpoint(question):
    reply = ask(question)
    assert not reply.answered and reply.sources == ()
    assert "needs an LLM endpoint" in reply.text and "--set llm.base_url=" in reply.text
    assert all(line in reply.text for line in QUESTIONS)


def test_an_unknown_cluster_number_lists_the_clusters():
    for question in ("describe cluster 7", "when is cluster 7 active", "compare cluster 1 and 7"):
        assert ask(question).text == "There is no cluster 7; the clusters are 0, 1, 2 and 3 (small)."
    assert ask("what is cluster -1").text.startswith("Cluster -1 is the all-users baseline, not a cluster;")


def test_keys_with_query_strings_or_email_addresses_are_never_shown():
    replies = [ask(q) for q in ("top page of cluster 1", "which cluster visits search most",
                                "which cluster visits john most", "describe cluster 1")]
    assert replies[0].text.startswith("The top page of cluster 1 is /search (12% of its visits")
    assert replies[1].text.startswith("Cluster 1 visits 'search' most: ≥12% of its visits")
    assert not replies[2].answered  # the e-mail address in a query string is no topic
    for reply in replies:
        for leak in ("@", "%40", "?q", "john.doe", "jane", "example.com", "mail.org"):
            assert leak not in reply.text


def test_answers_are_deterministic_and_independent_of_row_order():
    questions = ["describe cluster 2", "which cluster visits youtube.com most", "when is cluster 0 active",
                 "compare cluster 0 and 2", "which cluster has the longest sessions", "top page of cluster 1"]
    first = [ask(q) for q in questions]
    shuffled = _profile().sample(frac=1, random_state=7).reset_index(drop=True)
    assert [ask(q) for q in questions] == first
    assert [answer(q, shuffled, categories={}) for q in questions] == first
