"""The lake through real Spark and real Delta tables: writes, reads, versions, schema checks."""

import datetime as dt

import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder

from beha2vec.lake import Lake, LakeError, check_file_schema, choose_route, registration_sql
from beha2vec.tables import RUNS


def _runs(spark, n, tag="x"):
    t = dt.datetime(2024, 1, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)
    rows = [(f"{tag}{i}", "ingest", t, t, "ok", i, i, 0, "h", "v", None) for i in range(n)]
    return spark.createDataFrame(rows, RUNS)


def test_native_tables_are_registered_by_location():
    assert registration_sql("beha2vec", "user_clusters", "s3a://b/lake/user_clusters") == [
        "CREATE DATABASE IF NOT EXISTS `beha2vec`",
        "CREATE TABLE IF NOT EXISTS `beha2vec`.`user_clusters` USING DELTA LOCATION 's3a://b/lake/user_clusters'"]
    assert registration_sql("", "sessions", "/x") == []
    with pytest.raises(LakeError, match="lake.database 'my-db'"):
        registration_sql("my-db", "sessions", "/x")


def test_route_choice():
    assert choose_route("auto", False) == "delta-rs"
    assert choose_route("auto", True) == "native"
    assert choose_route("delta-rs", True) == "delta-rs"
    with pytest.raises(LakeError, match="not on Spark's classpath"):
        choose_route("native", False)
    with pytest.raises(LakeError, match="must be one of"):
        choose_route("hdfs", False)


def test_local_session_uses_delta_rs(lake):
    assert lake.route == "delta-rs"


def test_overwrite_append_versions_and_history(lake, spark):
    assert lake.write(_runs(spark, 3), "runs").version == 0
    assert lake.write(_runs(spark, 2, "y"), "runs", mode="append").rows == 2
    assert lake.read("runs").count() == 5
    written = lake.write(_runs(spark, 4, "z"), "runs")
    assert (written.version, written.rows) == (2, 4)
    assert sorted(r.run_id for r in lake.read("runs").collect()) == ["z0", "z1", "z2", "z3"]
    assert [h["version"] for h in lake.history("runs")] == [2, 1, 0]
    info = {t.name: t for t in lake.tables()}["runs"]
    assert (info.rows, info.version) == (4, 2)


def test_same_rows_through_spark_deltalake_and_querybuilder(lake, spark):
    lake.write(_runs(spark, 5), "runs")
    via_spark = sorted((r.run_id, r.rows_in, r.started_at) for r in lake.read("runs").collect())
    table = DeltaTable(lake.uri("runs")).to_pyarrow_table()
    via_arrow = sorted(zip(table["run_id"].to_pylist(), table["rows_in"].to_pylist(),
                           [t.replace(tzinfo=None) for t in table["started_at"].to_pylist()], strict=True))
    assert via_spark == via_arrow
    assert table.schema.field("started_at").type == pa.timestamp("us", tz="UTC")
    qb = QueryBuilder().register("runs", DeltaTable(lake.uri("runs")))
    out = pa.table(qb.execute("SELECT count(*) AS n, sum(rows_in) AS s FROM runs").read_all())
    assert out.to_pylist() == [{"n": 5, "s": 10}]


def test_overwrite_never_exposes_old_rows_and_ignores_foreign_files(lake, spark, tmp_path):
    lake.write(_runs(spark, 3, "old"), "runs")
    lake.write(_runs(spark, 2, "new"), "runs")
    root = tmp_path / "lake" / "runs"
    (root / "stray.parquet").write_bytes(b"not parquet at all")
    (root / "notes.txt").write_text("hello")
    assert sorted(r.run_id for r in lake.read("runs").collect()) == ["new0", "new1"]
    table = DeltaTable(lake.uri("runs")).to_pyarrow_table()
    assert sorted(table["run_id"].to_pylist()) == ["new0", "new1"]


def test_partition_replace_keeps_other_partitions(lake, spark):
    schema = ("run_id string, stage string, source string, file string, line long, offset long, "
              "raw string, reason string")
    a = spark.createDataFrame([("r", "ingest", "ga4", "f", 1, 0, "x", "bad")], schema)
    b = spark.createDataFrame([("r", "ingest", "msnbc", "g", 2, 0, "y", "bad")] * 2, schema)
    lake.write(a, "rejects", replace={"stage": "ingest", "source": "ga4"})
    lake.write(b, "rejects", replace={"stage": "ingest", "source": "msnbc"})
    lake.write(a.union(a), "rejects", replace={"stage": "ingest", "source": "ga4"})
    rows = lake.read("rejects").groupBy("source").count().collect()
    assert {r["source"]: r["count"] for r in rows} == {"ga4": 2, "msnbc": 2}
    with pytest.raises(LakeError, match="partition columns"):
        lake.write(a, "rejects", replace={"file": "f"})


def test_partition_replace_refuses_a_table_of_another_schema(lake, spark):
    """A table written by another version (one column less) keeps its other partitions: replacing
    one partition is refused rather than turned into a whole-table overwrite."""
    from deltalake import write_deltalake

    older = pa.table({"run_id": ["r"], "stage": ["ingest"], "source": ["msnbc"], "file": ["g"],
                      "line": pa.array([2], pa.int64()), "offset": pa.array([0], pa.int64()), "raw": ["y"]})
    write_deltalake(lake.uri("rejects"), older, partition_by=["stage", "source"])
    row = spark.createDataFrame([("r", "ingest", "ga4", "f", 1, 0, "x", "bad")],
                                "run_id string, stage string, source string, file string, line long, "
                                "offset long, raw string, reason string")
    with pytest.raises(LakeError, match="has another schema .* rows cannot be replaced in part of it"):
        lake.write(row, "rejects", replace={"stage": "ingest", "source": "ga4"})
    assert DeltaTable(lake.uri("rejects")).to_pyarrow_table().num_rows == 1
    lake.write(row, "rejects")
    assert lake.read("rejects").count() == 1


def test_schema_check_refuses_mismatched_files():
    want = pa.schema([("a", pa.int64()), ("b", pa.list_(pa.float32()))])
    check_file_schema(pa.schema([("a", pa.int64()), ("b", pa.list_(pa.field("element", pa.float32())))]),
                      want, "t/f.parquet")
    with pytest.raises(LakeError, match=r"t/f.parquet: missing columns \['b'\]; type changes a"):
        check_file_schema(pa.schema([("a", pa.int32())]), want, "t/f.parquet")


def test_write_refuses_wrong_columns_and_missing_table_is_clear(lake, spark):
    with pytest.raises(LakeError, match="missing columns"):
        lake.write(spark.createDataFrame([(1,)], "x long"), "runs")
    with pytest.raises(LakeError, match="table 'sessions' does not exist"):
        lake.read("sessions")
    with pytest.raises(KeyError, match="unknown table"):
        lake.write(_runs(spark, 1), "nope")


def test_empty_write_makes_an_empty_table(lake, spark):
    lake.write(_runs(spark, 0), "runs")
    assert lake.read("runs").count() == 0
    assert {t.name: t.rows for t in lake.tables()}["runs"] == 0


def test_unwritable_lake_gives_clear_error(spark, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the lake should be")
    lake = Lake(spark, str(blocker))
    with pytest.raises(LakeError, match="writing table 'runs' at .*not-a-folder/runs failed"):
        lake.write(_runs(spark, 1), "runs")
