"""Ingest through real Spark and Delta: every source, a catalogue of bad input, conservation.

Each bad record must land in ``rejects`` with the expected reason, each good one in ``events``,
and the ``runs`` row must show in = out + rejected.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from beha2vec import stages
from beha2vec.context import Context
from beha2vec.ingest.files import InputError

from conftest import shared_file

T0 = 1_709_300_000_000_000  # 2024-03-01T13:33:20Z in µs


def ga4_event(user="u1", ts=T0, name="page_view", page="https://shop.example.com/a?x=1", **params):
    event_params = [{"key": "page_location", "value": {"string_value": page}},
                    {"key": "ga_session_id", "value": {"int_value": "1709300000"}}]
    for key, value in params.items():
        event_params.append({"key": key, "value": {"int_value": str(value)}})
    return {
        "event_date": "20240301", "event_timestamp": str(ts), "event_name": name,
        "event_params": event_params, "user_pseudo_id": user,
        "device": {"category": "desktop", "operating_system": "Linux", "web_info": {"browser": "Firefox"}},
        "geo": {"country": "Germany", "city": "Berlin"},
    }


def line(obj) -> bytes:
    return json.dumps(obj).encode()


# (line content, expected reason or None for a valid event)
GA4_CATALOGUE: list[tuple[bytes, str | None]] = [
    (b"\xef\xbb\xbf" + line(ga4_event(ts=T0)), None),
    (line(ga4_event(ts=T0 + 10_000_000, engagement_time_msec=4000)), None),
    (line(ga4_event(ts=T0 + 10_000_000, engagement_time_msec=4000)), "exact duplicate of event"),
    (line(ga4_event(ts=T0 + 20_000_000))[:60], "malformed JSON"),
    (b"[1, 2, 3]", "malformed JSON"),
    (line({**ga4_event(ts=T0 + 30_000_000), "event_params": "oops"}), "JSON field of the wrong type"),
    (line(ga4_event(user=None, ts=T0 + 40_000_000)), "missing user id"),
    (line(ga4_event(ts="abc")), "unreadable timestamp 'abc'"),
    (line(ga4_event(ts=4_102_444_800_000_000)), "timestamp in the future"),
    (line(ga4_event(ts=473_385_600_000_000)), "timestamp before 1990-01-01"),
    (line(ga4_event(ts=T0 + 50_000_000, engagement_time_msec=-5)), "negative engagement time"),
    (line(ga4_event(ts=T0 + 60_000_000, engagement_time_msec=10**12)), "engagement time over"),
    (line(ga4_event(ts=T0 + 70_000_000)).replace(b"Berlin", b"Berl\xfcn"), "not valid UTF-8"),
    (line(ga4_event(ts=T0 + 80_000_000, page="https://shop.example.com/" + "x" * 6000)),
     "line longer than 5000 bytes"),
    (line({k: v for k, v in ga4_event().items() if k != "event_timestamp"}), "missing timestamp"),
    (line(ga4_event(ts=(T0 + 90_000_000) // 1000)), None),
    (line(ga4_event(ts=(T0 + 100_000_000) // 1_000_000)), None),
    (b"   ", "blank"),
    (line({**ga4_event(ts=T0 + 110_000_000), "event_params": [
        {"key": "engagement_time_msec", "value": {"string_value": "12abc"}}]}),
     "engagement time is not a number"),
    (line(ga4_event(ts=(T0 + 120_000_000) * 1000)), None),
    (line(ga4_event(ts=T0 + 10_000_000, engagement_time_msec=4000)), "exact duplicate of event"),
]


@pytest.fixture(scope="module")
def ga4_run(spark, tmp_path_factory):
    """One ingest of the GA4 catalogue plus a gzip file and a parquet file."""
    from beha2vec.config import load_config

    root = tmp_path_factory.mktemp("ga4")
    data = root / "export"
    data.mkdir()
    (data / "events_20240301.json").write_bytes(b"\n".join(c for c, _ in GA4_CATALOGUE) + b"\n")
    with gzip.open(data / "events_20240302.json.gz", "wb") as f:
        f.write(line(ga4_event(user="u2", ts=T0 + 86_400_000_000)) + b"\n")
        f.write(line(ga4_event(user="u2", ts=T0 + 86_410_000_000, name="user_engagement")) + b"\n")
    events = [ga4_event(user="u3", ts=T0 + i * 1_000_000) for i in range(2)]
    for e in events:
        e["event_timestamp"] = int(e["event_timestamp"])
        for p in e["event_params"]:
            if "int_value" in p["value"]:
                p["value"]["int_value"] = int(p["value"]["int_value"])
    pq.write_table(pa.Table.from_pylist(events), data / "events_20240303.parquet")
    (data / "SOURCE.md").write_text("not data: skipped inside folders")
    config = load_config(lake_root=str(root / "lake"), overrides=["ingest.max_line_bytes=5000"])
    ctx = Context(config)
    ctx.__dict__["spark"] = spark
    report = stages.ingest(ctx, "ga4", [str(data)])
    return ctx, report


def test_ga4_counts_are_conserved_and_recorded(ga4_run):
    ctx, report = ga4_run
    expected_in = sum(1 for _, r in GA4_CATALOGUE if r != "blank") + 2 + 2
    expected_rejected = sum(1 for _, r in GA4_CATALOGUE if r not in (None, "blank"))
    assert (report["rows_in"], report["rows_rejected"]) == (expected_in, expected_rejected)
    assert report["rows_out"] == expected_in - expected_rejected
    run = ctx.lake.read("runs").where("stage = 'ingest'").first()
    assert run.status == "ok"
    assert run.rows_in == run.rows_out + run.rows_rejected == expected_in
    assert ctx.lake.read("events").count() == run.rows_out
    assert ctx.lake.read("rejects").count() == run.rows_rejected


@pytest.mark.parametrize(
    "line_no,reason",
    [(i + 1, r) for i, (_, r) in enumerate(GA4_CATALOGUE) if r not in (None, "blank")],
)
def test_ga4_reject_reasons(ga4_run, line_no, reason):
    ctx, _ = ga4_run
    rows = ctx.lake.read("rejects").where(F.col("line") == line_no).collect()
    assert len(rows) == 1, f"line {line_no} should be rejected once"
    assert reason in rows[0].reason
    assert rows[0].file.endswith("events_20240301.json")
    assert rows[0].raw and len(rows[0].raw) <= 2000


def test_ga4_valid_events_are_typed(ga4_run):
    ctx, _ = ga4_run
    ev = ctx.lake.read("events")
    first = ev.where("src_line = 1 and user_id = 'u1'").first()
    assert first.event_ts == dt.datetime(2024, 3, 1, 13, 33, 20)
    assert (first.host, first.domain, first.path) == ("shop.example.com", "example.com", "/a")
    assert first.url == "https://shop.example.com/a?x=1"
    assert (first.ga_session_id, first.browser, first.country) == ("1709300000", "Firefox", "Germany")
    assert ev.where("src_line = 2 and user_id = 'u1'").first().engagement_ms == 4000
    units = {r.src_line: r.event_ts for r in ev.where("user_id = 'u1'").collect()}
    assert units[16] == dt.datetime(2024, 3, 1, 13, 34, 50)  # milliseconds
    assert units[17] == dt.datetime(2024, 3, 1, 13, 35)  # seconds
    assert units[20] == dt.datetime(2024, 3, 1, 13, 35, 20)  # nanoseconds
    assert ev.where("user_id = 'u2'").count() == 2  # gzip
    u3 = ev.where("user_id = 'u3'").collect()  # parquet, native INT64
    assert len(u3) == 2 and all(r.ga_session_id == "1709300000" for r in u3)
    assert ev.select("event_id").distinct().count() == ev.count()


def test_ga4_param_takes_the_first_entry_of_its_key_whatever_else_the_array_holds(spark):
    from beha2vec.ingest.ga4 import RAW_SCHEMA, param

    def params(*entries) -> str:
        return json.dumps({"event_params": list(entries)})

    lines = [
        params({"key": "a", "value": {"string_value": "x"}}, {"key": "b", "value": {"int_value": "7"}}),
        params(None, {"value": {"string_value": "no key"}}, {"key": "b", "value": {"double_value": 2.5}}),
        params({"key": "b", "value": {"float_value": 1.5}}, {"key": "b", "value": {"string_value": "2nd"}}),
        params({"key": "b", "value": {}}, {"key": "b", "value": {"string_value": "2nd"}}),
        params({"key": "a", "value": {"string_value": "x"}}),
        params(),
        json.dumps({"event_name": "no params"}),
    ]
    df = spark.createDataFrame([(i, t) for i, t in enumerate(lines)], "i int, raw string")
    got = (df.select("i", F.from_json("raw", RAW_SCHEMA).alias("e"))
           .select("i", param("b").alias("b")).orderBy("i").collect())
    assert [r.b for r in got] == ["7", "2.5", "1.5", None, None, None, None]


@pytest.mark.parametrize("broadcast", [True, False])
def test_duplicates_collapse_to_their_earliest_copy_with_or_without_broadcast(spark, broadcast):
    from beha2vec.config import IngestConfig
    from beha2vec.ingest import collapse_duplicates, repeated_ids, to_rejects
    from beha2vec.spark import setting

    rows = [  # event_id, file, line, offset, user_id: b three times over two files, d twice in one
        ("a", "f1", 1, 0, "u1"), ("b", "f2", 7, 90, "u1"), ("b", "f1", 3, 40, "u1"),
        ("b", "f1", 9, 120, "u1"), ("c", "f2", None, 5, "u2"), ("d", "f3", 2, None, "u3"),
        ("d", "f3", 1, None, "u3"),
    ]
    typed = spark.createDataFrame(
        [(*r, "ga4", None, None) for r in rows],
        "event_id string, file string, line long, offset long, user_id string, source string, "
        "reason string, raw string")
    valid = typed.where(F.col("reason").isNull()).drop("raw")
    repeated = repeated_ids(valid)
    assert {(r.event_id, r.n) for r in repeated.collect()} == {("b", 3), ("d", 2)}
    # without the hint Spark would still broadcast frames this small: only -1 makes the joins shuffle
    with setting(spark, "spark.sql.autoBroadcastJoinThreshold", "10MB" if broadcast else "-1"):
        collapsed = collapse_duplicates(valid, repeated, broadcast)
        plan = collapsed._jdf.queryExecution().executedPlan().toString()
        assert ("BroadcastHashJoin" in plan) == broadcast
        got = {r.event_id: (r.file, r.line, r.offset, r.n) for r in collapsed.collect()}
        rejects = to_rejects(typed, collapsed, "run", IngestConfig(), broadcast).collect()
    assert got == {"a": ("f1", 1, 0, 1), "b": ("f1", 3, 40, 3), "c": ("f2", None, 5, 1),
                   "d": ("f3", 1, None, 2)}
    assert sorted((r.file, r.line) for r in rejects) == [("f1", 9), ("f2", 7), ("f3", 2)]
    assert all(r.reason.startswith("exact duplicate of event ") for r in rejects)


def test_rerun_is_idempotent_with_a_new_version(ga4_run):
    ctx, report = ga4_run
    version = ctx.lake.version("events")
    again = stages.ingest(ctx, "ga4", report["inputs"])
    assert (again["rows_in"], again["rows_out"], again["rows_rejected"]) == (
        report["rows_in"], report["rows_out"], report["rows_rejected"])
    assert ctx.lake.version("events") == version + 1
    assert ctx.lake.read("events").count() == report["rows_out"]
    assert ctx.lake.read("rejects").count() == report["rows_rejected"]


WEBTRACKING = """panelist_id,wave,timestamp,url,active_seconds,device,extra
p1,1,2019-03-01T10:00:00.000,https://www.google.com/search?q=secret,10,desktop,z
p1,1,2019-03-01T10:00:30.500,https://news.bbc.co.uk/story,,desktop,z
p1,1,2019-03-01T10:20:30.500,https://youtube.com/watch?v=1,,desktop,z
p1,1,2019-03-01T10:21:00,https://youtube.com/watch?v=2,-4,desktop,z
p1,1,2019-03-01T10:22:00,https://youtube.com/x,abc,desktop,z
p1,1,2019-03-01T10:23:00,https://youtube.com/y,99999999,desktop,z
,1,2019-03-01T10:24:00,https://youtube.com/z,5,desktop,z
p1,1
p2,1,1551434400,https://amazon.co.uk/item,7,mobile,z
p2,1,1551434460,,7,mobile,z
"""


def test_webtracking_catalogue(ctx, tmp_path):
    path = tmp_path / "panel.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(WEBTRACKING)
    report = stages.ingest(ctx, "webtracking", [str(path)])
    assert (report["rows_in"], report["rows_out"], report["rows_rejected"]) == (10, 4, 6)
    reasons = {r.line: r.reason for r in ctx.lake.read("rejects").collect()}
    assert reasons == {
        5: "negative duration",
        6: "duration is not a number: 'abc'",
        7: "duration over 86400 s",
        8: "missing user id (GA4 consent mode or empty panelist_id)",
        9: "expected at least 6 fields, found 2",
        11: "missing url and domain",
    }
    ev = {(r.user_id, r.src_line): r for r in ctx.lake.read("events").collect()}
    assert ev[("p1", 2)].domain == "google.com" and ev[("p1", 2)].duration_s == 10
    assert ev[("p1", 3)].domain == "bbc.co.uk"
    assert ev[("p1", 3)].duration_s == pytest.approx(300.0)  # 20 min to the next visit, capped
    assert ev[("p1", 4)].duration_s is None  # last valid visit of p1: nothing to derive from
    assert ev[("p2", 10)].event_ts == dt.datetime(2019, 3, 1, 10, 0)
    assert ev[("p2", 10)].domain == "amazon.co.uk"


def test_missing_required_csv_column_fails_clearly(ctx, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("panelist_id,url\np1,https://a.com/\n")
    with pytest.raises(InputError, match=r"bad.csv: missing required column used_at or timestamp .*"
                                         r"the header has: panelist_id, url"):
        stages.ingest(ctx, "webtracking", [str(path)])
    failed = ctx.lake.read("runs").first()
    assert failed.status == "failed" and "missing required column" in failed.details


def test_empty_inputs(ctx, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="all 1 input file"):
        stages.ingest(ctx, "webtracking", [str(tmp_path / "empty.csv")])
    (tmp_path / "ok.csv").write_text("panelist_id,used_at,domain\np,2020-01-01 00:00:00,a.com\n")
    report = stages.ingest(ctx, "webtracking", [str(tmp_path / "*.csv")])
    assert report["rows_out"] == 1


def test_many_small_files_make_no_more_event_files_than_shuffle_partitions(ctx, tmp_path):
    data = tmp_path / "export"
    data.mkdir()
    for day in range(12):
        event = ga4_event(user=f"u{day % 3}", ts=T0 + day * 86_400_000_000)
        (data / f"events_202403{day + 1:02d}.json").write_bytes(line(event) + b"\n")
    ctx.config.spark.shuffle_partitions = 3  # this test's own config
    assert stages.ingest(ctx, "ga4", [str(data)])["rows_out"] == 12
    events = next(t for t in ctx.lake.tables() if t.name == "events")
    assert (events.rows, events.files) == (12, 3)


def test_msnbc_small(ctx, tmp_path):
    path = tmp_path / "m.seq"
    path.write_text("% Different categories found in input file:\n\nfrontpage news tech\n\n"
                    "% Sequences:\n\n1 1 \n2\n3 2 9 x\n")
    report = stages.ingest(ctx, "msnbc", [str(path)])
    assert (report["rows_in"], report["rows_out"], report["rows_rejected"]) == (7, 5, 2)
    ev = ctx.lake.read("events").orderBy("user_id", "event_ts").collect()
    assert [(e.user_id, e.path) for e in ev] == [
        ("msnbc-1", "/frontpage"), ("msnbc-1", "/frontpage"), ("msnbc-2", "/news"),
        ("msnbc-3", "/tech"), ("msnbc-3", "/news")]
    assert ev[1].event_ts - ev[0].event_ts == dt.timedelta(seconds=1)
    assert {r.reason for r in ctx.lake.read("rejects").collect()} == {
        "unknown msnbc category id '9'", "unknown msnbc category id 'x'"}


@pytest.mark.realdata
def test_real_webtracking_panel(ctx):
    path = shared_file("webtrackr_testdt_tracking", "testdt_tracking.csv")
    report = stages.ingest(ctx, "webtracking", [str(path)])
    assert report["rows_in"] == 49_612
    assert report["rows_in"] == report["rows_out"] + report["rows_rejected"]
    assert ctx.lake.read("events").select("user_id").distinct().count() == 5
    reasons = {r.reason.split(" event ")[0] for r in ctx.lake.read("rejects").collect()}
    assert reasons <= {"exact duplicate of"}


@pytest.mark.realdata
def test_real_ga4_merch_store_ids_stay_strings(ctx):
    path = shared_file("ga4_merch_store_purchase_items", "ga4_sample.csv")
    report = stages.ingest(ctx, "ga4-flat", [str(path)])
    assert report["rows_in"] == 16_003
    assert report["rows_in"] == report["rows_out"] + report["rows_rejected"]
    ev = ctx.lake.read("events")
    assert ev.where("user_id = '2697787.2422183099'").count() >= 1
    assert ev.where("user_id = '3868899112.4128253975'").count() >= 1
    assert ev.select("user_id").distinct().count() == 4_418
    first = ev.where("user_id = '3868899112.4128253975'").orderBy("event_ts").first()
    assert first.event_ts == dt.datetime(2020, 11, 21, 2, 10, 23, 681729)
    assert first.items[0].item_name == "Google F/C Longsleeve Charcoal"
    assert first.items[0].revenue_usd == 24.0 and first.country == "Japan"


@pytest.mark.realdata
def test_real_msnbc_first_sequences(ctx, tmp_path):
    source = shared_file("msnbc", "msnbc990928_part1.seq")
    sample = tmp_path / "msnbc_head.seq"
    with open(source, "rb") as src, open(sample, "wb") as dst:
        for i, raw in enumerate(src):
            if i >= 7 + 3000:
                break
            dst.write(raw)
    expected = sum(len(row.split()) for row in sample.read_text().splitlines()[7:] if row.strip())
    report = stages.ingest(ctx, "msnbc", [str(sample)])
    assert report["rows_in"] == expected and report["rows_rejected"] == 0
    assert ctx.lake.read("events").select("user_id").distinct().count() == 3000


def test_events_read_identically_through_deltalake_and_querybuilder(ga4_run):
    from deltalake import DeltaTable, QueryBuilder

    ctx, report = ga4_run
    spark_rows = sorted((r.event_id, r.user_id, r.event_ts, r.path, r.source,
                         None if r.items is None else len(r.items))
                        for r in ctx.lake.read("events").collect())
    table = DeltaTable(ctx.lake.uri("events")).to_pyarrow_table()
    arrow_rows = sorted(zip(
        table["event_id"].to_pylist(), table["user_id"].to_pylist(),
        [t.replace(tzinfo=None) for t in table["event_ts"].to_pylist()], table["path"].to_pylist(),
        table["source"].to_pylist(), [None if i is None else len(i) for i in table["items"].to_pylist()],
        strict=True))
    assert spark_rows == arrow_rows and len(spark_rows) == report["rows_out"]
    qb = QueryBuilder().register("events", DeltaTable(ctx.lake.uri("events")))
    got = pa.table(qb.execute("SELECT count(*) AS n, count(DISTINCT user_id) AS u FROM events").read_all())
    assert got.to_pylist() == [{"n": report["rows_out"], "u": 3}]
