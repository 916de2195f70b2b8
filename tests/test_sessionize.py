"""Sessionization against hand-computed cases, through real Spark."""

from __future__ import annotations

import datetime as dt
import hashlib
import random

import pyarrow as pa
import pytest

from beha2vec.config import SessionizeConfig
from beha2vec.sessionize import SESSION_ARROW, mark_visits, sessionize, sessions_of
from beha2vec.tables import EVENTS

BASE = dt.datetime(2024, 3, 4, 14, 15, tzinfo=dt.UTC)  # a Monday


def ev(user, seconds, unit="/a", name="page_view", source="ga4", sid=None, engagement_ms=None,
       duration_s=None, file="f1", line=0, url=None):
    """One events-table row; ``unit`` is a path for GA4 and a domain for web-tracking."""
    ts = BASE + dt.timedelta(seconds=seconds)
    domain = unit if source == "webtracking" else "example.com"
    path = unit if source != "webtracking" else "/"
    url = url or f"https://{domain}{path}"
    row = dict.fromkeys(EVENTS.fieldNames())
    row.update(event_id=f"{user}-{seconds}-{line}-{name}-{unit}", source=source, user_id=user,
               event_ts=ts, event_date=ts.date(), event_name=name, url=url, host=domain,
               domain=domain, path=path, ga_session_id=sid, engagement_ms=engagement_ms,
               duration_s=None if duration_s is None else float(duration_s), src_file=file, src_line=line)
    return tuple(row[c] for c in EVENTS.fieldNames())


def run(spark, rows, **conf):
    events = spark.createDataFrame(rows, EVENTS)
    out = sessionize(events, SessionizeConfig(**conf)).orderBy("user_id", "start_ts").collect()
    assert sum(s.n_events for s in out) == len(rows)
    return out


def test_gap_exactly_at_threshold_stays_in_session(spark):
    gap = 30 * 60
    s = run(spark, [ev("u", 0, "/a"), ev("u", gap, "/b"), ev("u", 2 * gap + 1, "/c")])
    assert [x.domains for x in s] == [["/a", "/b"], ["/c"]]
    assert [x.session_no for x in s] == [1, 2]


def test_idle_gap_counts_from_end_of_measured_dwell(spark):
    rows = [ev("p", 0, "a.com", source="webtracking", duration_s=25 * 60),
            ev("p", 50 * 60, "b.com", source="webtracking", duration_s=5),
            ev("p", 50 * 60 + 5 + 30 * 60 + 1, "c.com", source="webtracking", duration_s=5)]
    s = run(spark, rows)
    assert [x.domains for x in s] == [["a.com", "b.com"], ["c.com"]]
    assert s[0].dwell_s == [1500.0, 5.0]
    assert s[0].duration_s == pytest.approx(50 * 60 + 5)


def test_cross_midnight_cross_file_out_of_order(spark):
    rows = [ev("u", 10 * 3600 + 5 * 60, "/c", file="day2", line=1),
            ev("u", 9 * 3600 + 50 * 60, "/b", file="day1", line=9),
            ev("u", 9 * 3600 + 40 * 60, "/a", file="day1", line=8)]
    (s,) = run(spark, rows)
    assert s.domains == ["/a", "/b", "/c"]
    assert s.start_ts.date() == dt.date(2024, 3, 4) and s.end_ts.date() == dt.date(2024, 3, 5)
    assert s.dwell_s == [600.0, 900.0, 0.0]


def test_equal_timestamps_keep_input_order(spark):
    rows = [ev("u", 0, "/second", line=2), ev("u", 0, "/first", line=1), ev("u", 5, "/third", line=3)]
    (s,) = run(spark, rows)
    assert s.domains == ["/first", "/second", "/third"]
    assert s.dwell_s == [0.0, 5.0, 0.0]


def test_ga_session_id_change_without_gap(spark):
    rows = [ev("u", 0, "/a", sid="1"), ev("u", 10, "/b", sid="1"), ev("u", 20, "/c", sid="2")]
    s = run(spark, rows)
    assert [(x.domains, x.ga_session_id) for x in s] == [(["/a", "/b"], "1"), (["/c"], "2")]


def test_repeats_merge_and_engagement_gives_dwell(spark):
    rows = [ev("u", 0, "/a", line=1), ev("u", 5, "/a", line=2),
            ev("u", 8, "/a", name="user_engagement", engagement_ms=7000, line=3),
            ev("u", 20, "/b", line=4), ev("u", 4000, "/b", line=5, sid=None)]
    (s,) = run(spark, rows, gap_minutes=120, max_dwell_s=1800)
    assert s.domains == ["/a", "/b"]
    assert s.n_visits == 2 and s.n_events == 5
    assert s.dwell_s == [7.0, 1800.0]  # engagement for /a; /b capped time to its repeat's end
    assert s.engagement_s == 7.0
    assert s.sequence_text == "Monday 14:15, Visits: /a (7s) -> /b (1800s)"
    unmerged = run(spark, rows, gap_minutes=120, merge_repeats=False)[0]
    assert unmerged.domains == ["/a", "/a", "/b", "/b"]


def test_sequence_text_for_web_tracking(spark):
    rows = [ev("p", 0, "google.com", source="webtracking", duration_s=10),
            ev("p", 10, "youtube.com", source="webtracking", duration_s=89)]
    (s,) = run(spark, rows)
    assert s.sequence_text == "Monday 14:15, Visits: google.com (10s) -> youtube.com (89s)"
    assert s.urls == ["https://google.com/", "https://youtube.com/"]
    berlin = run(spark, rows, timezone="Europe/Berlin")[0]
    assert berlin.sequence_text.startswith("Monday 15:15, Visits: ")


def test_session_ids_are_deterministic_and_distinct(spark):
    rows = [ev("u", 0, "/a"), ev("u", 4000, "/b"), ev("v", 0, "/a")]
    first = [s.session_id for s in run(spark, rows)]
    assert first == [s.session_id for s in run(spark, list(reversed(rows)))]
    assert len(set(first)) == 3


def test_runaway_session_is_cut_and_flagged_never_dropped(spark):
    rows = [ev("bot", i, f"/p{i % 3}", line=i) for i in range(250)]
    rows += [ev("human", i * 40, f"/h{i}", line=i) for i in range(5)]
    s = run(spark, rows, max_events=100, bot_min_events=50)
    bot = [x for x in s if x.user_id == "bot"]
    assert [x.n_events for x in bot] == [100, 100, 50]
    assert all(x.is_capped and x.is_bot for x in bot)
    assert "events per minute" in bot[0].bot_reason
    human = [x for x in s if x.user_id == "human"]
    assert [(x.is_capped, x.is_bot) for x in human] == [(False, False)]


def test_hours_cap_and_regular_timing(spark):
    rows = [ev("slow", i * 600, f"/p{i % 2}", line=i) for i in range(60)]  # every 10 min, 10 h
    s = run(spark, rows, max_hours=4, bot_min_events=50, bot_max_events_per_minute=30)
    assert [x.n_events for x in s] == [24, 24, 12]
    assert all(x.is_capped for x in s)
    assert s[0].bot_reason.startswith("regular timing")


def test_non_visit_events_only(spark):
    (s,) = run(spark, [ev("u", 0, "/x", name="purchase")])
    assert (s.n_visits, s.n_events, s.domains) == (0, 1, [])
    assert s.sequence_text == "Monday 14:15, Visits: (no page views)"


def marked(rows) -> pa.Table:
    """``rows`` (events-table tuples) as :func:`sessions_of` reads them, without Spark."""
    names = EVENTS.fieldNames()
    events = [dict(zip(names, r, strict=True)) for r in rows]
    return pa.table({
        "user_id": [e["user_id"] for e in events], "source": [e["source"] for e in events],
        "event_id": [e["event_id"] for e in events], "url": [e["url"] for e in events],
        "ga_session_id": pa.array([e["ga_session_id"] for e in events], pa.string()),
        "engagement_ms": pa.array([e["engagement_ms"] for e in events], pa.int64()),
        "duration_s": pa.array([e["duration_s"] for e in events], pa.float64()),
        "src_file": [e["src_file"] for e in events], "src_line": [e["src_line"] for e in events],
        "t": [int(e["event_ts"].timestamp()) * 1_000_000 for e in events],
        "unit": [e["domain"] if e["source"] == "webtracking" else e["path"] for e in events],
        "is_visit": [e["event_name"] == "page_view" for e in events],
    })


def test_tied_repeats_keep_the_first_lines_url():
    """Two page views of one unit at the same instant merge; the visit's URL is the earlier line's
    (Spark's min_by over the time alone used to pick either)."""
    web = {"source": "webtracking"}
    rows = [ev("p", 0, "a.com", line=2, url="https://a.com/second", **web),
            ev("p", 0, "a.com", line=1, url="https://a.com/first", **web), ev("p", 5, "b.com", line=3, **web)]
    (s,) = sessions_of(marked(rows), SessionizeConfig()).to_pylist()
    assert s["urls"] == ["https://a.com/first", "https://b.com/"] and s["dwell_s"] == [5.0, 0.0]
    first_id = rows[1][EVENTS.fieldNames().index("event_id")]
    assert s["session_id"] == hashlib.md5(f"p\x01{first_id}".encode()).hexdigest()


def test_ga_session_id_is_the_smallest_as_text_and_no_events_give_no_sessions():
    """Within a session the smallest GA4 session id as text (as Spark's min); none gives null."""
    rows = [ev("u", 0, "/a", sid="2"), ev("u", 10, "/b"), ev("u", 20, "/c", sid="10"),
            ev("v", 0, "/a")]
    out = sessions_of(marked(rows), SessionizeConfig()).to_pylist()
    assert [(s["user_id"], s["ga_session_id"], s["domains"]) for s in out] == [
        ("u", "10", ["/a", "/b", "/c"]), ("v", None, ["/a"])]
    empty = sessions_of(marked(rows).slice(0, 0), SessionizeConfig())
    assert empty.num_rows == 0 and empty.schema == SESSION_ARROW


def test_every_bucket_gives_what_one_call_gives(spark):
    """Spark's buckets keep users whole: its sessions equal one call over all events."""
    rng = random.Random(7)
    rows = []
    for u in range(60):
        t = 0
        for i in range(rng.randint(1, 40)):
            t += rng.choice([0, 3, 40, 700, 2500])
            rows.append(ev(f"u{u}", t, rng.choice(["/a", "/b", "/c"]), line=i,
                           name=rng.choice(["page_view", "page_view", "user_engagement"]),
                           sid=rng.choice([None, "1", "2"]), engagement_ms=rng.choice([None, 0, 1500])))
    conf = SessionizeConfig(max_events=7)
    events = spark.createDataFrame(rows, EVENTS)
    got = sorted(sessionize(events, conf).toArrow().to_pylist(), key=lambda s: s["session_id"])
    direct = sessions_of(mark_visits(events, conf).toArrow(), conf)
    want = sorted(direct.to_pylist(), key=lambda s: s["session_id"])
    assert len(got) > 100 and got == want


def test_bad_settings_fail_early(spark):
    events = spark.createDataFrame([ev("u", 0)], EVENTS)
    with pytest.raises(ValueError, match="sessionize.unit"):
        sessionize(events, SessionizeConfig(unit="page"))
    with pytest.raises(Exception, match="Mars"):
        sessionize(events, SessionizeConfig(timezone="Mars/Base"))


def test_hundred_thousand_event_bot_through_ingest_and_sessionize(ctx, tmp_path):
    """A scraper's 100,000 requests, one a second, next to a person: kept, cut, flagged."""
    from beha2vec import stages

    path = tmp_path / "panel.csv"
    start = dt.datetime(2024, 5, 1, tzinfo=dt.UTC).timestamp()
    with open(path, "w") as f:
        f.write("panelist_id,used_at,domain,active_seconds\n")
        f.writelines(f"bot,{start + i:.0f},site{i % 7}.com,1\n" for i in range(100_000))
        f.writelines(f"human,{start + 600 * i:.0f},news{i % 3}.co.uk,30\n" for i in range(20))
    report = stages.ingest(ctx, "webtracking", [str(path)])
    assert (report["rows_in"], report["rows_out"], report["rows_rejected"]) == (100_020, 100_020, 0)
    stages.sessionize(ctx)
    sessions = ctx.lake.read("sessions")
    bot = sessions.where("user_id = 'bot'")
    sizes = sorted(r.n_events for r in bot.collect())
    # 1,000-event pieces; the 24-hour cap (27.8 h of requests) also cuts piece 87 at 86,400 s
    assert sizes == [400, 600] + [1000] * 99
    assert bot.where("is_bot and is_capped").count() == 101
    human = sessions.where("user_id = 'human'").collect()
    assert [(s.is_bot, s.is_capped, s.n_events) for s in human] == [(False, False, 20)]
    run = ctx.lake.read("runs").where("stage = 'sessionize'").first()
    assert run.rows_in == run.rows_out == 100_020
