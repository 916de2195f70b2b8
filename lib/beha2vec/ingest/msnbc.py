"""The UCI msnbc.com format: a header of category names, then one user per line.

The data has no timestamps. Each page request gets an ordinal position on a nominal day
(1999-09-28, the day the logs were taken), one second apart, so order is kept and sessions are
whole days; times, dwell and durations of msnbc sessions are therefore nominal, not measured.
Each page request is one input record: a line of five requests is five records. A line that
cannot be read (not UTF-8, or cut at ``max_line_bytes``) is one record, rejected whole: its requests
cannot be told apart, and the cut part of an over-long line was never read.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from beha2vec.ingest.files import DAMAGED_GZIP, InputError, damaged_header, open_binary

NOMINAL_DAY_EPOCH_S = 938_476_800  # 1999-09-28T00:00:00Z
SEQUENCES_MARKER = "% Sequences:"


def read_layout(path: str, compressed: bool) -> tuple[list[str], int, int]:
    """Category names, the byte offset of the first sequence line, and its line number."""
    categories: list[str] = []
    offset = 0
    try:
        with open_binary(path, compressed) as f:
            for line_no, raw in enumerate(iter(f.readline, b""), start=1):
                offset += len(raw)
                text = raw.decode("utf-8", errors="replace").strip()
                if text.startswith(SEQUENCES_MARKER):
                    nxt = f.readline()
                    if nxt.strip():
                        return categories, offset, line_no + 1
                    return categories, offset + len(nxt), line_no + 2
                if text and not text.startswith("%"):
                    categories = text.split()
                if line_no > 100:
                    break
    except DAMAGED_GZIP as exc:
        raise damaged_header(path, exc) from exc
    raise InputError(f"{path}: not in msnbc format (no '{SEQUENCES_MARKER}' line in the header)")


def candidates(records: DataFrame, categories: list[str], header_lines: dict[str, int]) -> DataFrame:
    """One candidate event per page request; the user is the sequence's number in its file."""
    first_line = F.create_map(*[x for p, n in header_lines.items() for x in (F.lit(p), F.lit(n))])
    # trim() strips only spaces: a leading tab would make an empty first request
    spaced = F.regexp_replace("raw", r"^\s+|\s+$", "")
    requests = F.when(F.col("error").isNull(), F.split(spaced, r"\s+")).otherwise(F.array("raw"))
    tokens = records.select("*", F.posexplode(requests).alias("pos", "token"))
    names = F.array(*[F.lit(c) for c in categories])
    index = F.col("token").try_cast("int")
    # ids are 1-based; element_at fails on index 0 and counts negative indexes from the end
    category = F.when(index > 0, F.try_element_at(names, index))
    user_no = F.col("line") - first_line[F.col("file")] + 1
    ok_token = F.col("token").rlike(r"^[0-9]+$") & category.isNotNull()
    return tokens.select(
        "file", "line",
        F.col("pos").cast("long").alias("offset"),
        F.col("token").alias("raw"),
        F.when(F.col("error").isNotNull(), F.col("error"))
        .when(~ok_token, F.concat(F.lit("unknown msnbc category id '"), F.col("token"), F.lit("'")))
        .alias("parse_error"),
        F.lit("msnbc").alias("source"),
        F.concat(F.lit("msnbc-"), user_no.cast("string")).alias("user_id"),
        (F.lit(NOMINAL_DAY_EPOCH_S) + F.col("pos")).cast("string").alias("ts_raw"),
        F.lit("page_view").alias("event_name"),
        F.concat(F.lit("https://msnbc.com/"), category).alias("url"),
        *[F.lit(None).cast("string").alias(c) for c in (
            "domain_raw", "page_title", "referrer", "ga_session_id", "engagement_raw",
            "duration_raw", "device_category", "browser", "os", "mobile_brand", "mobile_model",
            "country", "region", "city", "traffic_source", "traffic_medium", "transaction_id",
            "revenue_raw")],
        F.lit(None).cast("array<struct<item_id:string,item_name:string,item_category:string,"
                         "price_usd:double,quantity:bigint,revenue_usd:double>>").alias("items"),
    )
