"""Incremental ingest, sessionize, features and embed: two batches give the tables of one full run."""

from __future__ import annotations

import datetime as dt
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from beha2vec import stages
from beha2vec.config import load_config
from beha2vec.context import Context
from beha2vec.incremental import FileState, export_date, fingerprints, plan, split

BIN = Path(sys.executable).parent
T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)


def _state(name: str, size: int = 10, hours: int = 0) -> FileState:
    return FileState(f"/x/{name}", size, T0 + dt.timedelta(hours=hours), export_date(name))


def _ledger(*files: FileState) -> pd.DataFrame:
    return pd.DataFrame({"file": [f.path for f in files], "size": [f.size for f in files],
                         "modified": [f.modified.replace(tzinfo=None) for f in files],
                         "export_date": [f.export_date for f in files]})


def test_export_dates_from_ga4_file_names():
    assert export_date("/a/events_20240301.json.gz") == dt.date(2024, 3, 1)
    assert export_date("events_intraday_20240302") == dt.date(2024, 3, 2)
    assert export_date("events_20241399.json") is None and export_date("panel.csv") is None


def test_plan_reads_new_changed_and_the_latest_export_dates():
    days = [_state(f"events_202403{d:02d}.json") for d in range(1, 7)]
    ledger = _ledger(*days[:5])
    now = [*days[:2], _state("events_20240303.json", size=11), *days[3:], _state("panel.csv")]
    chosen = [f.path.rsplit("/", 1)[1] for f in plan(now, ledger, reingest_days=2)]
    # day 3 changed in size, days 4-5 are the two latest ingested dates, day 6 and panel.csv are new
    assert chosen == ["events_20240303.json", "events_20240304.json", "events_20240305.json",
                      "events_20240306.json", "panel.csv"]
    touched = [_state("events_20240301.json", hours=1), *days[1:5]]
    assert [f.path for f in plan(touched, ledger, reingest_days=0)] == ["/x/events_20240301.json"]


def _ctx(spark, root: Path) -> Context:
    ctx = Context(load_config(lake_root=str(root)))
    ctx.__dict__["spark"] = spark
    return ctx


def _lines(path: Path) -> list[bytes]:
    with gzip.open(path, "rb") as f:
        return f.read().splitlines(keepends=True)


def _write(path: Path, lines: list[bytes]) -> None:
    with gzip.open(path, "wb") as f:
        f.writelines(lines)


def _events(ctx: Context) -> pd.DataFrame:
    frame = ctx.lake.read("events").drop("src_file").toPandas()
    return frame.sort_values("event_id").reset_index(drop=True).astype(str)


def _sessions(ctx: Context) -> pd.DataFrame:
    return ctx.lake.read("sessions").toPandas().sort_values("session_id").reset_index(drop=True).astype(str)


def test_two_incremental_batches_equal_one_full_run(spark, tmp_path):
    source = tmp_path / "export"
    proc = subprocess.run([str(BIN / "beha2vec"), "synth", "--kind", "ga4", "--users", "30", "--days", "10",
                           "--personas", "3", "--seed", "4", "--out", str(source)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    days = sorted(source.glob("events_*.json.gz"))
    assert len(days) == 10
    late = source / "events_20240311.json.gz"  # a late file repeating an event of day 2
    _write(late, [_lines(days[1])[0]])

    full = _ctx(spark, tmp_path / "full")
    stages.ingest(full, "ga4", [str(source)])
    stages.sessionize(full)

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for day in days[:7]:
        shutil.copy(day, inbox / day.name)
    for day in days[5:7]:  # days 6 and 7 arrive half-exported, as GA4's latest days do
        lines = _lines(day)
        _write(inbox / day.name, lines[: len(lines) // 2])
    lake = _ctx(spark, tmp_path / "lake")
    first = stages.ingest(lake, "ga4", [str(inbox)], incremental=True)
    stages.sessionize(lake, incremental=True)
    assert first["files_read"] == 7
    first_features = stages.features(lake, incremental=True)
    (first_embed,) = stages.embed(lake, ["minilm"], incremental=True)

    for day in [*days[5:], late]:
        shutil.copy(day, inbox / day.name)
    second = stages.ingest(lake, "ga4", [str(inbox)], incremental=True)
    assert (second["files"], second["files_read"]) == (11, 7), "days 5-7 again, 8-10 and the late file"
    assert second["events_kept"] > 0 and second["rows_rejected"] >= 1
    recomputed = stages.sessionize(lake, incremental=True)
    assert 0 < recomputed["users_recomputed"] <= 30

    assert _events(lake).equals(_events(full))
    assert _sessions(lake).equals(_sessions(full))
    _downstream_equal_full_run(lake, full, first_features, first_embed)
    rejects = lake.lake.read("rejects").toPandas()
    assert rejects["reason"].str.contains("ingested before from .*events_20240302", regex=True).sum() == 1
    assert lake.lake.read("changed_users").count() == 0
    runs = lake.lake.read("runs").toPandas()
    assert (runs["status"] == "ok").all()
    assert (runs["rows_in"] == runs["rows_out"] + runs["rows_rejected"]).all()
    again = stages.ingest(lake, "ga4", [str(inbox)], incremental=True)
    assert again["files_read"] == 3, "nothing new: only the files of the latest 3 export dates"
    assert _events(lake).equals(_events(full))
    one = stages.ingest(lake, "ga4", [str(inbox / late.name)], incremental=True)
    assert one["files_read"] == 1 and _events(lake).equals(_events(full)), "files not named keep their events"


def _table(ctx: Context, name: str) -> pd.DataFrame:
    return ctx.lake.read(name).toPandas().sort_values("session_id").reset_index(drop=True)


def _downstream_equal_full_run(lake: Context, full: Context, first_features: dict, first_embed: dict) -> None:
    """Features and embeddings of the merged sessions: only new or changed sessions are computed,
    and the tables equal those of a full run (vectors up to float noise of batching)."""
    features = stages.features(lake, incremental=True)
    (embedded,) = stages.embed(lake, ["minilm"], incremental=True)
    stages.features(full)
    stages.embed(full, ["minilm"])
    assert first_features["reused"] == 0 and first_embed["embedded"] == first_embed["rows_out"]
    assert 0 < features["reused"] < features["rows_out"] and features["computed"] > 0
    assert 0 < embedded["reused"] < embedded["rows_out"]
    assert embedded["embedded"] == features["computed"], "the same sessions changed for both stages"
    assert _table(lake, "session_features").astype(str).equals(_table(full, "session_features").astype(str))
    ours, theirs = _table(lake, "session_embeddings"), _table(full, "session_embeddings")
    keys = ["session_id", "user_id", "fingerprint"]
    assert ours[keys].equals(theirs[keys])
    np.testing.assert_allclose(np.stack(ours["embedding"]), np.stack(theirs["embedding"]), atol=1e-5)
    again = stages.features(lake, incremental=True)
    (unchanged,) = stages.embed(lake, ["minilm"], incremental=True)
    assert again["computed"] == 0 and unchanged["embedded"] == 0 and unchanged["rows_out"] == len(ours)
    (tfidf,) = stages.embed(lake, ["tfidf"], incremental=True)
    assert "reused" not in tfidf, "tfidf is fitted on all sessions: always recomputed"


def test_fingerprints_change_with_the_session_and_the_computation(spark):
    rows = spark.createDataFrame([("s1", "u1", 3, ["a.com"]), ("s2", "u1", 2, ["b.com"])],
                                 "session_id string, user_id string, n int, domains array<string>")
    changed = spark.createDataFrame([("s1", "u1", 3, ["a.com"]), ("s2", "u1", 2, ["b.com", "c.com"])],
                                    rows.schema)

    def prints(frame, identity: str) -> dict:
        return {r["session_id"]: r["fingerprint"] for r in fingerprints(frame, identity).collect()}

    base = prints(rows, "m")
    assert base == prints(rows, "m") and base["s1"] != base["s2"]
    other = prints(changed, "m")
    assert other["s1"] == base["s1"] and other["s2"] != base["s2"]
    assert set(prints(rows, "m2").values()).isdisjoint(base.values()), "another model or setting"
    previous = fingerprints(rows, "m").withColumn("vector", F.lit(1))
    kept, todo = split(previous, changed, fingerprints(changed, "m"))
    assert [r["session_id"] for r in kept.collect()] == ["s1"]
    assert [r["session_id"] for r in todo.collect()] == ["s2"]


def test_incremental_ingest_refuses_sources_whose_rows_span_files(ctx, tmp_path):
    panel = tmp_path / "panel.csv"
    panel.write_text("panelist_id,used_at,url\np1,2024-03-01T10:00:00,https://a.com/\n")
    with pytest.raises(ValueError, match="ingest webtracking in full"):
        stages.ingest(ctx, "webtracking", [str(panel)], incremental=True)
