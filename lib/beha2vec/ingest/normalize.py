"""Candidate events to typed events: one chain of small steps shared by every source.

A candidate carries its provenance and text fields. Each step adds typed columns; ``reason`` holds
the first thing wrong with the record (null when it is a valid event). Nothing is filtered here.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from beha2vec.config import IngestConfig
from beha2vec.tables import EVENTS
from beha2vec.urls import split_urls

NUMERIC = r"^\s*-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?\s*$"
URL_PARTS = T.StructType(
    [T.StructField("host", T.StringType()), T.StructField("domain", T.StringType()),
     T.StructField("path", T.StringType())]
)


@F.pandas_udf(URL_PARTS)
def _url_parts(urls: pd.Series, domains: pd.Series) -> pd.DataFrame:
    return split_urls(urls, domains)


def parse_timestamp(raw: Column) -> Column:
    """Epoch numbers in s, ms, µs or ns (told apart by magnitude) or ISO-8601 text, as UTC."""
    num = raw.try_cast("double")
    magnitude = F.abs(num)
    micros = (
        F.when(magnitude < 1e11, num * 1e6)
        .when(magnitude < 1e14, num * 1e3)
        .when(magnitude < 1e17, num)
        .otherwise(num / 1e3)
    )
    exact = raw.try_cast("long")
    exact_micros = (
        F.when(magnitude >= 1e14, F.when(magnitude < 1e17, exact).otherwise(F.floor(exact / 1000)))
    )
    # try_cast: a number too large for µs in a long (say "1e30") is an unreadable timestamp, not a crash
    as_number = F.timestamp_micros(F.coalesce(exact_micros, micros).try_cast("long"))
    return F.when(raw.rlike(NUMERIC), as_number).otherwise(F.trim(raw).try_cast("timestamp"))


def _first_reason(*checks: tuple[Column, Column]) -> Column:
    expr = None
    for failed, reason in checks:
        expr = F.when(failed, reason) if expr is None else expr.when(failed, reason)
    return expr


def _quoted(col: str) -> Column:
    return F.concat(F.lit("'"), F.substring(F.col(col), 1, 40), F.lit("'"))


def type_fields(candidates: DataFrame, conf: IngestConfig, now: dt.datetime) -> DataFrame:
    """Typed event columns plus ``reason``, the first problem found (null for a valid event)."""
    min_ts = dt.datetime.fromisoformat(conf.min_date).replace(tzinfo=dt.UTC)
    max_ts = now + dt.timedelta(days=conf.max_future_days)
    df = (
        candidates
        .withColumn("user_id", F.nullif(F.trim("user_id"), F.lit("")))
        .withColumn("event_ts", parse_timestamp(F.col("ts_raw")))
        .withColumn("engagement_ms", F.col("engagement_raw").try_cast("double").try_cast("long"))
        .withColumn("duration_s", F.col("duration_raw").try_cast("double"))
        .withColumn("purchase_revenue_usd", F.col("revenue_raw").try_cast("double"))
    )
    reason = _first_reason(
        (F.col("parse_error").isNotNull(), F.col("parse_error")),
        (F.col("user_id").isNull(), F.lit("missing user id (GA4 consent mode or empty panelist_id)")),
        (F.col("ts_raw").isNull() | (F.trim("ts_raw") == ""), F.lit("missing timestamp")),
        (F.col("event_ts").isNull(), F.concat(F.lit("unreadable timestamp "), _quoted("ts_raw"))),
        (F.col("event_ts") < F.lit(min_ts),
         F.concat(F.lit(f"timestamp before {conf.min_date}: "), _quoted("ts_raw"))),
        (F.col("event_ts") > F.lit(max_ts), F.concat(F.lit("timestamp in the future: "), _quoted("ts_raw"))),
        (F.col("engagement_raw").isNotNull() & F.col("engagement_ms").isNull(),
         F.concat(F.lit("engagement time is not a number: "), _quoted("engagement_raw"))),
        (F.col("engagement_ms") < 0, F.lit("negative engagement time")),
        (F.col("engagement_ms") > F.lit(conf.max_duration_s * 1000),
         F.lit(f"engagement time over {conf.max_duration_s:g} s")),
        (F.col("duration_raw").isNotNull() & F.col("duration_s").isNull(),
         F.concat(F.lit("duration is not a number: "), _quoted("duration_raw"))),
        (F.col("duration_s") < 0, F.lit("negative duration")),
        (F.col("duration_s") > F.lit(conf.max_duration_s), F.lit(f"duration over {conf.max_duration_s:g} s")),
        (F.col("revenue_raw").isNotNull() & F.col("purchase_revenue_usd").isNull(),
         F.concat(F.lit("revenue is not a number: "), _quoted("revenue_raw"))),
        (F.col("url").isNull() & F.col("domain_raw").isNull() & (F.col("source") == "webtracking"),
         F.lit("missing url and domain")),
    )
    return df.withColumn("reason", reason)


def add_url_parts(df: DataFrame) -> DataFrame:
    """Host, registrable domain and path (no query string) of each event's URL."""
    parts = _url_parts(F.col("url"), F.col("domain_raw"))
    return (
        df.withColumn("_u", parts)
        .withColumn("host", F.col("_u.host"))
        .withColumn("domain", F.col("_u.domain"))
        .withColumn("path", F.col("_u.path"))
        .drop("_u")
    )


def derive_durations(df: DataFrame, cap_s: float) -> DataFrame:
    """Web-tracking visits without a duration get the time to the user's next visit, capped."""
    w = Window.partitionBy("user_id").orderBy("event_ts", "src_file", "src_line")
    gap = F.unix_micros(F.lead("event_ts").over(w)) - F.unix_micros("event_ts")
    derived = F.when(gap.isNotNull(), F.least(gap / 1e6, F.lit(cap_s)))
    return df.withColumn(
        "duration_s",
        F.when((F.col("source") == "webtracking") & F.col("duration_s").isNull(), derived)
        .otherwise(F.col("duration_s")),
    )


DERIVED = ("event_id", "event_date", "host", "domain", "path", "src_file", "src_line")


def event_id(df: DataFrame) -> DataFrame:
    """Deterministic id from every source field: exact duplicates share it, nothing else does.

    Fields derived later (URL parts, date) follow from these and are left out.
    """
    content = [c for c in EVENTS.fieldNames() if c not in DERIVED] + ["domain_raw"]
    parts = [F.coalesce(F.col(c).cast("string") if c != "items" else F.to_json("items"), F.lit("\u0000"))
             for c in content]
    return df.withColumn("event_id", F.md5(F.concat_ws("\u0001", *parts)))


def finish(valid: DataFrame) -> DataFrame:
    """The events table's columns from valid, typed candidates."""
    return (
        valid.withColumnRenamed("file", "src_file")
        .withColumnRenamed("line", "src_line")
        .withColumn("event_date", F.to_date("event_ts"))
        .withColumn(
            "ga_session_id",
            # integers first: through a double, ids past 2**53 would change their last digits
            F.coalesce(F.col("ga_session_id").try_cast("long").cast("string"),
                       F.col("ga_session_id").try_cast("double").try_cast("long").cast("string"),
                       F.col("ga_session_id")),
        )
    )
