"""The benchmark's single-process alternative does the Spark path's work: the same sessions.

``bench/sessionize.py`` checks this on 1M and 10M events whenever it runs; this keeps the reference
honest between benchmark runs, on a small export with a malformed line and a duplicated file.
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil

import pyarrow.parquet as pq

from beha2vec import stages
from beha2vec.synth import synth

from conftest import ROOT

COLUMNS = ["user_id", "start_ts", "n_events", "n_visits", "sequence_text", "is_bot"]


def _reference():
    spec = importlib.util.spec_from_file_location("pandas_reference", ROOT / "bench" / "pandas_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pandas_reference_gives_the_spark_paths_sessions(ctx, tmp_path):
    data = tmp_path / "ga4"
    made = synth("ga4", users=40, days=3, personas=8, seed=11, out=data)
    first = sorted(made.files)[0]
    shutil.copy(first, data / "events_intraday_20240301.json.gz")  # every event of a day again
    with gzip.open(data / "events_20240399.json.gz", "wt") as f:
        f.write('{"event_name": "page_view", "user_pseudo_id": \n')  # truncated
    with gzip.open(first, "rt") as f:
        copies = sum(1 for _ in f)
    ingest = stages.ingest(ctx, "ga4", [str(data)])
    stages.sessionize(ctx)
    sessions = ctx.lake.read("sessions").select(*COLUMNS).toArrow()
    spark = sorted(tuple(r.values()) for r in sessions.to_pylist())

    reference = _reference()
    out = tmp_path / "reference.parquet"
    counts = reference.run(reference.input_files([str(data)]), out, ctx.config)
    pandas = sorted(tuple(r.values()) for r in pq.read_table(out, columns=COLUMNS).to_pylist())

    assert counts["events"] == ingest["rows_out"] == made.events
    assert counts["rejected"] == ingest["rows_rejected"] == copies + 1
    assert len(spark) == counts["sessions"] >= 30 and pandas == spark
