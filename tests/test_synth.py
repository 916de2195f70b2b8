"""Synthetic data: deterministic bytes, the GA4 export's JSON shape, web-tracking CSV, truth files.

Small cases only and no Spark: these run in a few seconds.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from beha2vec.synth import PERSONAS, SynthSummary, synth

INT64_PARAMS = {"ga_session_id", "ga_session_number", "engagement_time_msec", "percent_scrolled"}


def _events(summary: SynthSummary) -> list[dict]:
    out = []
    for name in summary.files:
        with gzip.open(name, "rt", encoding="utf-8") as f:
            out.extend(json.loads(line) for line in f)
    return out


def _params(event: dict) -> dict:
    return {p["key"]: p["value"] for p in event["event_params"]}


def _rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ga4(tmp_path_factory) -> SynthSummary:
    return synth("ga4", users=40, days=3, personas=8, seed=7, out=tmp_path_factory.mktemp("ga4"))


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> SynthSummary:
    return synth("webtracking", users=200, days=3, personas=8, seed=7,
                 out=tmp_path_factory.mktemp("web"))


def test_same_arguments_write_identical_bytes(tmp_path):
    for kind in ("ga4", "webtracking"):
        a = synth(kind, users=20, days=2, personas=8, seed=3, out=tmp_path / kind / "a")
        b = synth(kind, users=20, days=2, personas=8, seed=3, out=tmp_path / kind / "b")
        assert _all_bytes(tmp_path / kind / "a") == _all_bytes(tmp_path / kind / "b")
        assert (a.events, a.sessions) == (b.events, b.sessions)
    other = synth("ga4", users=20, days=2, personas=8, seed=4, out=tmp_path / "other")
    assert _all_bytes(tmp_path / "other") != _all_bytes(tmp_path / "ga4" / "a")
    assert other.users == 20


def test_workers_do_not_change_the_output(tmp_path):
    one = synth("ga4", users=20, days=2, personas=8, seed=5, out=tmp_path / "one", workers=1)
    two = synth("ga4", users=20, days=2, personas=8, seed=5, out=tmp_path / "two", workers=2)
    assert _all_bytes(tmp_path / "one") == _all_bytes(tmp_path / "two")
    assert one.events == two.events


def test_summary_names_the_files_and_counts_every_event(ga4):
    assert [Path(f).name for f in ga4.files] == [
        "events_20240301.json.gz", "events_20240302.json.gz", "events_20240303.json.gz"]
    assert ga4.kind == "ga4" and ga4.users == 40
    assert ga4.events == len(_events(ga4))
    assert ga4.sessions == len(_rows(ga4.truth_sessions))


def test_ga4_lines_are_the_bq_extract_shape(ga4):
    for name in ga4.files:
        day = re.search(r"events_(\d{8})", name).group(1)
        with gzip.open(name, "rt", encoding="utf-8") as f:
            for line in f:
                e = json.loads(line)
                assert e["event_date"] == day
                for key in ("event_timestamp", "event_bundle_sequence_id",
                            "user_first_touch_timestamp"):
                    assert isinstance(e[key], str) and e[key].isdigit(), key
                assert re.fullmatch(r"\d+\.\d{10}", e["user_pseudo_id"])
                assert e["platform"] == "WEB" and e["stream_id"]
                assert e["device"]["category"] in ("desktop", "mobile", "tablet")
                assert set(e["device"]["web_info"]) == {"browser", "browser_version", "hostname"}
                assert set(e["geo"]) == {"continent", "country", "region", "city"}
                assert set(e["traffic_source"]) == {"name", "medium", "source"}
                assert isinstance(e["items"], list)
                for p in e["event_params"]:
                    assert len(p["value"]) == 1, "only the set value, like the export"
                    (kind, value), = p["value"].items()
                    if p["key"] in INT64_PARAMS:
                        assert kind == "int_value" and isinstance(value, str) and value.isdigit()
                    if kind == "double_value":
                        assert isinstance(value, float)
    names = Counter(e["event_name"] for e in _events(ga4))
    assert {"session_start", "first_visit", "page_view", "user_engagement", "scroll"} <= set(names)
    assert names["page_view"] > names["session_start"]


def test_purchases_carry_ecommerce_and_items(tmp_path):
    summary = synth("ga4", users=300, days=7, personas=8, seed=11, out=tmp_path)
    purchases = [e for e in _events(summary) if e["event_name"] == "purchase"]
    assert purchases
    for e in purchases:
        ecommerce = e["ecommerce"]
        assert isinstance(ecommerce["purchase_revenue_in_usd"], float)
        assert ecommerce["total_item_quantity"].isdigit()
        assert ecommerce["transaction_id"]
        for item in e["items"]:
            assert isinstance(item["price_in_usd"], float)
            assert isinstance(item["item_revenue_in_usd"], float)
            assert item["quantity"].isdigit()
            assert item["item_id"] and item["item_name"] and item["item_category"]
        total = sum(item["item_revenue_in_usd"] for item in e["items"])
        assert ecommerce["purchase_revenue_in_usd"] == pytest.approx(total)


def test_every_page_view_has_a_location_on_one_site_and_a_session(ga4):
    views = [e for e in _events(ga4) if e["event_name"] == "page_view"]
    assert views
    for e in views:
        params = _params(e)
        assert params["page_location"]["string_value"].startswith("https://shop.example.com/")
        assert params["ga_session_id"]["int_value"].isdigit()
        assert params["ga_session_number"]["int_value"].isdigit()
        assert params["page_title"]["string_value"]


def test_sessions_are_what_the_truth_says(ga4):
    by_session = defaultdict(list)
    for e in _events(ga4):
        sid = _params(e)["ga_session_id"]["int_value"]
        by_session[(e["user_pseudo_id"], sid)].append(e)
    truth = _rows(ga4.truth_sessions)
    assert len(truth) == len(by_session)
    for row in truth:
        events = by_session[(row["user_id"], row["ga_session_id"])]
        stamps = sorted(int(e["event_timestamp"]) for e in events)
        assert row["n_pageviews"] == str(sum(e["event_name"] == "page_view" for e in events))
        assert stamps[0] // 1_000_000 == int(row["ga_session_id"])
        assert row["start_ts"].endswith("Z") and row["end_ts"] >= row["start_ts"]
        gaps = np.diff(stamps)
        assert (gaps < 30 * 60 * 1_000_000).all(), "a session never has a 30-minute gap inside"
    starts = defaultdict(list)
    for row in truth:
        starts[row["user_id"]].append(int(row["ga_session_id"]))
    for values in starts.values():
        assert (np.diff(sorted(values)) >= 3600).all(), "sessions of one user are hours apart"


def test_first_visit_and_bundle_sequence(ga4):
    per_user = defaultdict(list)
    for e in _events(ga4):
        per_user[e["user_pseudo_id"]].append(e)
    for events in per_user.values():
        events.sort(key=lambda e: int(e["event_timestamp"]))
        firsts = [e for e in events if e["event_name"] == "first_visit"]
        assert len(firsts) <= 1
        if firsts:
            assert _params(firsts[0])["ga_session_number"]["int_value"] == "1"
            assert firsts[0]["event_timestamp"] == firsts[0]["user_first_touch_timestamp"]
        bundles = [int(e["event_bundle_sequence_id"]) for e in events]
        assert bundles == sorted(bundles)


def test_truth_users_cover_all_users_and_personas(ga4):
    rows = _rows(ga4.truth_users)
    assert len(rows) == 40 == len({r["user_id"] for r in rows})
    assert {r["persona"] for r in rows} == {p.name for p in PERSONAS}
    assert {e["user_pseudo_id"] for e in _events(ga4)} == {r["user_id"] for r in rows}


def test_fewer_personas_are_all_used(tmp_path):
    summary = synth("webtracking", users=9, days=1, personas=3, seed=1, out=tmp_path)
    counts = Counter(r["persona"] for r in _rows(summary.truth_users))
    assert sorted(counts.values()) == [3, 3, 3]


def test_page_views_scale_with_users_and_days(tmp_path):
    summary = synth("ga4", users=200, days=14, personas=8, seed=2, out=tmp_path)
    views = sum(e["event_name"] == "page_view" for e in _events(summary))
    assert 0.8 < views / (200 * 14 * 1.5) < 1.2


def test_personas_are_separable_by_behaviour(tmp_path):
    summary = synth("ga4", users=400, days=14, personas=8, seed=9, out=tmp_path)
    persona = {r["user_id"]: r["persona"] for r in _rows(summary.truth_users)}
    sections = ["news", "sale", "search", "category", "product", "blog", "video", "live",
                "community", "account", "help", "cart", "checkout"]
    users = sorted(persona)
    index = {u: i for i, u in enumerate(users)}
    features = np.zeros((len(users), len(sections) + 24))
    for e in _events(summary):
        if e["event_name"] != "page_view":
            continue
        path = _params(e)["page_location"]["string_value"].split("/")[3].split("?")[0]
        row = index[e["user_pseudo_id"]]
        if path in sections:
            features[row, sections.index(path)] += 1
        features[row, len(sections) + int(e["event_timestamp"]) // 3_600_000_000 % 24] += 1
    features /= features.sum(1, keepdims=True)
    labels = np.array([persona[u] for u in users])
    names = sorted(set(labels))
    centroids = np.array([features[labels == n].mean(0) for n in names])
    nearest = ((features[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (np.array(names)[nearest] == labels).mean() > 0.6


def test_webtracking_csv(web):
    assert [Path(f).name for f in web.files] == [
        "tracking_20240301.csv", "tracking_20240302.csv", "tracking_20240303.csv"]
    rows = []
    for name in web.files:
        with open(name, encoding="utf-8") as f:
            assert f.readline() == "panelist_id,used_at,url,domain,active_seconds,device\n"
        rows.extend(_rows(name))
    assert len(rows) == web.events
    empty = sum(r["active_seconds"] == "" for r in rows) / len(rows)
    assert 0.02 < empty < 0.09
    for r in rows:
        assert re.fullmatch(r"2024-03-0[1-3]T\d\d:\d\d:\d\d\.\d{3}", r["used_at"])
        host = r["url"].split("/")[2]
        assert r["url"].startswith("https://")
        assert host == r["domain"] or host.endswith("." + r["domain"])
        assert r["active_seconds"] == "" or int(r["active_seconds"]) >= 0
        assert r["device"] in ("desktop", "mobile", "tablet")
    assert len({r["domain"] for r in rows}) > 40
    assert {"bbc.co.uk", "youtube.com", "google.com"} & {r["domain"] for r in rows}
    truth = _rows(web.truth_sessions)
    assert all(r["ga_session_id"] == "" for r in truth)
    assert sum(int(r["n_pageviews"]) for r in truth) == len(rows)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "parquet"}, "unknown kind 'parquet'"),
        ({"users": 0}, "users must be an integer >= 1"),
        ({"days": 0}, "days must be an integer >= 1"),
        ({"personas": 0}, "personas must be an integer >= 1"),
        ({"personas": len(PERSONAS) + 1}, f"personas must be at most {len(PERSONAS)}"),
        ({"workers": 0}, "workers must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    args = {"kind": "ga4", "users": 5, "days": 1, "personas": 2, "seed": 0, "out": tmp_path / "x"}
    with pytest.raises(ValueError, match=re.escape(message)):
        synth(**(args | kwargs))
    assert not (tmp_path / "x").exists()
