"""Ingest: raw files of one source to candidate events, then to ``events`` and ``rejects``.

``read_candidates`` is the only source-specific part; everything after it is shared. Every input
record becomes exactly one row of ``events`` or ``rejects``: that is checked on every run.
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from beha2vec.config import IngestConfig
from beha2vec.ingest import ga4, msnbc, normalize, tabular
from beha2vec.ingest.files import (
    InputError,
    Split,
    is_blank,
    is_gzip,
    is_parquet,
    plan_splits,
    resolve_paths,
)
from beha2vec.ingest.records import read_records
from beha2vec.tables import EVENTS

log = logging.getLogger(__name__)

SOURCES = ("ga4", "ga4-flat", "webtracking", "msnbc")
# sources whose event times are ordinal positions, not clock times: no duration or hour means anything
UNTIMED_SOURCES = ("msnbc",)
FOLDER_MATCH = {
    "ga4": (".json", ".jsonl", ".ndjson", ".parquet", "events_"),
    "ga4-flat": (".csv",),
    "webtracking": (".csv",),
    "msnbc": (".seq",),
}


def resolve_inputs(source: str, patterns: list[str]) -> list[str]:
    """The input files of ``source`` that ``patterns`` name, in a stable order."""
    if source not in SOURCES:
        raise InputError(f"unknown source '{source}'; choose one of {', '.join(SOURCES)}")
    return resolve_paths(patterns, FOLDER_MATCH[source])


def read_candidates(spark: SparkSession, source: str, patterns: list[str], conf: IngestConfig) -> DataFrame:
    """One candidate row per input record of ``source``, with provenance and text fields."""
    if source not in SOURCES:
        raise InputError(f"unknown source '{source}'; choose one of {', '.join(SOURCES)}")
    paths = resolve_paths(patterns, FOLDER_MATCH[source])
    blank = [p for p in paths if is_blank(p)]
    for path in blank:
        log.warning("skipping empty file %s", path)
    paths = [p for p in paths if p not in blank]
    if not paths:
        raise InputError(f"all {len(blank)} input file(s) are empty: {', '.join(blank[:5])}")
    if source == "ga4":
        return _ga4(spark, paths, conf)
    if source == "msnbc":
        return _msnbc(spark, paths, conf)
    layout = tabular.LAYOUTS[source]
    headers = {p: layout.header_index(p) for p in paths}
    records = read_records(
        spark, "csv", plan_splits(paths, conf.split_bytes, splittable=False),
        conf.max_line_bytes, conf.batch_rows, columns=layout.columns, headers=headers,
    )
    return tabular.candidates(records, layout)


def _ga4(spark: SparkSession, paths: list[str], conf: IngestConfig) -> DataFrame:
    parquet = [p for p in paths if is_parquet(p)]
    text = [p for p in paths if p not in parquet]
    frames = []
    if text:
        splits = plan_splits(text, conf.split_bytes, splittable=True)
        frames.append(ga4.from_json_lines(
            read_records(spark, "lines", splits, conf.max_line_bytes, conf.batch_rows)))
    if parquet:
        frames.append(ga4.from_parquet(spark.read.parquet(*parquet).select("*", "_metadata")))
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def _msnbc(spark: SparkSession, paths: list[str], conf: IngestConfig) -> DataFrame:
    splits, first_lines, categories = [], {}, None
    for path in paths:
        compressed = is_gzip(path)
        names, offset, first_line = msnbc.read_layout(path, compressed)
        if categories is not None and names != categories:
            raise InputError(f"{path}: its msnbc categories differ from those of {paths[0]}")
        categories = names
        splits.append(Split(path, offset, -1, compressed, first_line))
        first_lines[path] = first_line
    records = read_records(spark, "lines", splits, conf.max_line_bytes, conf.batch_rows)
    return msnbc.candidates(records, categories or [], first_lines)


def validate(candidates: DataFrame, conf: IngestConfig, now: dt.datetime) -> DataFrame:
    """Typed candidates with ``reason`` and ``event_id``; ``raw`` kept only where rejected."""
    typed = normalize.type_fields(candidates, conf, now)
    typed = normalize.event_id(typed)
    return typed.withColumn(
        "raw", F.when(F.col("reason").isNotNull(), F.substring("raw", 1, conf.reject_raw_chars))
    )


# repeated ids broadcast below this many (their first copies' JSON, for rejects, is about 1 KB each)
BROADCAST_REPEATED = 50_000


def repeated_ids(valid: DataFrame) -> DataFrame:
    """The ids of events seen more than once, with their copy count ``n``.

    Counting ids shuffles only the ids. Grouping whole events by id instead shuffled 2.8 GB and took
    88 s of a 482 s ingest of 10M events without a single duplicate (docs/benchmarks.md).
    """
    return valid.groupBy("event_id").agg(F.count(F.lit(1)).alias("n")).where(F.col("n") > 1)


def _small(df: DataFrame, broadcast: bool) -> DataFrame:
    return F.broadcast(df) if broadcast else df


def _position() -> Column:
    """Where a record was read: the earliest copy of an event is the one kept."""
    return F.struct("file", "line", "offset")


def collapse_duplicates(valid: DataFrame, repeated: DataFrame, broadcast: bool) -> DataFrame:
    """One row per ``event_id``: the earliest copy (by file, line, offset) and the copy count ``n``.

    Exact duplicates agree on every event field, so the earliest copy's content stands for all. Only
    the rows of ``repeated`` ids are grouped; with ``broadcast`` (few repeated ids) nothing else is
    shuffled. :func:`to_rejects` finds the later copies from the ids seen more than once.
    """
    first = (
        valid.select("event_id", _position().alias("position")).join(_small(repeated, broadcast), "event_id")
        .groupBy("event_id", "n").agg(F.min("position").alias("first"))
    )
    return (
        valid.drop("reason").join(_small(first, broadcast), "event_id", "left")
        .where(F.col("first").isNull() | (_position() == F.col("first")))
        .withColumn("n", F.coalesce("n", F.lit(1)))
        .drop("first")
    )


def to_events(collapsed: DataFrame, conf: IngestConfig, derive_durations: bool) -> DataFrame:
    """The events table's rows; web-tracking durations derived where the source lacks them.

    URL parts come here, on de-duplicated rows without the raw text: the pandas UDF that computes
    them makes Spark queue each whole input row while Python works, so the rows must be narrow.
    """
    events = normalize.add_url_parts(normalize.finish(collapsed))
    if derive_durations:
        events = normalize.derive_durations(events, conf.duration_cap_s)
    return events.select(*EVENTS.fieldNames())


def seen_before(events: DataFrame, kept: DataFrame, run_id: str, conf: IngestConfig) -> DataFrame:
    """Rejects for the ``events`` that ``kept`` (events of files ingested before) already holds."""
    first = kept.select("event_id", F.col("src_file").alias("first_file")).dropDuplicates(["event_id"])
    event_cols = [c for c in EVENTS.fieldNames() if c not in ("src_file", "src_line")]
    return events.join(first, "event_id").select(
        F.lit(run_id).alias("run_id"), F.lit("ingest").alias("stage"), "source",
        F.col("src_file").alias("file"), F.col("src_line").alias("line"),
        F.lit(None).cast("long").alias("offset"),
        F.substring(F.to_json(F.struct(*event_cols)), 1, conf.reject_raw_chars).alias("raw"),
        F.concat(F.lit("exact duplicate of event "), F.col("event_id"), F.lit(", ingested before from "),
                 F.col("first_file")).alias("reason"),
    )


def to_rejects(typed: DataFrame, collapsed: DataFrame, run_id: str, conf: IngestConfig,
               broadcast: bool) -> DataFrame:
    """Invalid records and every copy of an event after its first, with provenance and reason.

    ``broadcast`` as for :func:`collapse_duplicates`: the first copies are few, the records many.
    """
    cols = ["source", "file", "line", "offset", "raw", "reason"]
    invalid = typed.where(F.col("reason").isNotNull()).select(*cols)
    event_cols = [c for c in EVENTS.fieldNames() if c in collapsed.columns and c not in ("file", "line")]
    first_copies = collapsed.where(F.col("n") > 1).select(
        "event_id", F.to_json(F.struct(*event_cols)).alias("event_json"), _position().alias("first"),
    )
    copies = typed.where(F.col("reason").isNull()).select("event_id", "source", "file", "line", "offset")
    duplicates = copies.join(_small(first_copies, broadcast), "event_id").where(
        _position() != F.col("first")
    ).select(
        "source", "file", "line", "offset",
        F.substring("event_json", 1, conf.reject_raw_chars).alias("raw"),
        F.concat(F.lit("exact duplicate of event "), F.col("event_id")).alias("reason"),
    )
    return invalid.unionByName(duplicates).select(
        F.lit(run_id).alias("run_id"), F.lit("ingest").alias("stage"), *cols
    )
