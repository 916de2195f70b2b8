"""GA4 BigQuery export (nested) to candidate events.

``bq extract`` writes newline-delimited JSON with INT64 as strings, or parquet with native types.
Both are parsed against one schema that reads every scalar as text, so a value is typed once, in
:mod:`beha2vec.ingest.normalize`, where a bad value becomes a reject reason instead of an error.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

VALUE = "struct<string_value string, int_value string, float_value string, double_value string>"
RAW_SCHEMA = (
    "event_date string, event_timestamp string, event_name string, "
    f"event_params array<struct<key string, value {VALUE}>>, "
    "user_id string, user_pseudo_id string, "
    "device struct<category string, mobile_brand_name string, mobile_model_name string, "
    "operating_system string, language string, "
    "web_info struct<browser string, browser_version string, hostname string>>, "
    "geo struct<continent string, country string, region string, city string>, "
    "traffic_source struct<name string, medium string, source string>, "
    "ecommerce struct<transaction_id string, purchase_revenue_in_usd string>, "
    "items array<struct<item_id string, item_name string, item_category string, "
    "price_in_usd string, quantity string, item_revenue_in_usd string>>, "
    "_corrupt_record string"
)

PERMISSIVE = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt_record"}
# Spark reads a bare JSON number into a string field through a double: an id such as
# 1234567890.1234567890 would become 1.2345678901234567E9, so such ids are quoted before parsing
BARE_NUMBER_ID = r'("(?:user_pseudo_id|user_id|transaction_id)"\s*:\s*)(-?[0-9][0-9.eE+-]*)'
# Spark's JSON parser stops after the first object and ignores what follows it on the line, so a
# second object or trailing junk would vanish: see text_after_object.
STRING_LITERAL = r'"[^"\\]*+(?:\\.[^"\\]*+)*+"'  # unrolled and possessive: no regex recursion
AFTER_CLOSE = r'\}\s*+[^\s,}\]]'
CLOSE_AT_END = r'\}[ \t\r]*+$'  # not rtrim(text, chars): Spark 4.2 warns that form is deprecated


def param(name: str) -> Column:
    """The set value of the first event parameter ``name`` (string, int, double or float), as text.

    Looked up by position in the array of keys, not by ``filter`` with a lambda: Spark evaluates
    lambdas without code generation, and five lookups that way took 15 times as long (6.1 s against
    0.4 s for 1M events, docs/benchmarks.md).
    """
    position = F.array_position(F.col("e.event_params.key"), name)  # 1-based; 0 where absent
    v = F.get(F.col("e.event_params.value"), position - 1)  # null outside the array
    return F.coalesce(v["string_value"], v["int_value"], v["double_value"], v["float_value"])


def _items() -> Column:
    return F.transform(
        "e.items",
        lambda i: F.struct(
            i["item_id"].alias("item_id"),
            i["item_name"].alias("item_name"),
            i["item_category"].alias("item_category"),
            i["price_in_usd"].try_cast("double").alias("price_usd"),
            i["quantity"].try_cast("long").alias("quantity"),
            i["item_revenue_in_usd"].try_cast("double").alias("revenue_usd"),
        ),
    )


def text_after_object(raw: Column) -> Column:
    """True where a line holds more than one JSON value, or text after its object.

    In valid JSON a '}' is followed only by ',', '}', ']' or the end, the text ends with '}', and
    the braces balance; that holds exactly once string literals are blanked out. The blanking is a
    costly regex, so it runs only on the lines that fail a looser test on the raw text; the check
    adds about 15% to the parse of GA4 lines of 1.1 KB (docs/reliability.md). A ``when``, not an
    ``and``: Spark's common subexpression elimination would blank every line before the ``and``
    short-circuits wherever this expression is evaluated unconditionally (3.2 times the cost).
    """
    def braces_differ(text: Column) -> Column:  # split on one character: Java's fast path
        return F.size(F.split(text, r"\{")) != F.size(F.split(text, r"\}"))

    suspect = raw.rlike(AFTER_CLOSE) | ~raw.endswith("}") | braces_differ(raw)
    structure = F.regexp_replace(raw, STRING_LITERAL, '""')
    return F.when(suspect, structure.rlike(AFTER_CLOSE) | ~structure.rlike(CLOSE_AT_END)
                  | braces_differ(structure)).otherwise(F.lit(False))


def _ids_as_written(raw: Column, e: str) -> Column:
    """True where every id that :data:`BARE_NUMBER_ID` names parsed from a quoted string (or is null).

    A parsed id that reappears in the line as ``"key":"id"`` came from that string, exactly. Only the
    other lines (bare numbers, escapes, spacing, a line Spark could not parse) pay for quoting: the
    regex over every line cost 10% of a GA4 ingest (docs/benchmarks.md).
    """
    ids = {"user_pseudo_id": f"{e}.user_pseudo_id", "user_id": f"{e}.user_id",
           "transaction_id": f"{e}.ecommerce.transaction_id"}
    ok = F.col(f"{e}._corrupt_record").isNull()
    for key, parsed in ids.items():
        ok &= F.col(parsed).isNull() | raw.contains(F.concat(F.lit(f'"{key}":"'), F.col(parsed), F.lit('"')))
    return ok


def from_json_lines(records: DataFrame, whole_line_check: bool = True) -> DataFrame:
    """Candidate events from NDJSON records (one GA4 event per line).

    ``whole_line_check`` rejects lines with text after their object; off only for JSON this module
    wrote itself, which cannot have any.
    """
    quoted = F.from_json(F.regexp_replace("raw", BARE_NUMBER_ID, '$1"$2"'), RAW_SCHEMA, PERMISSIVE)
    parsed = (  # an unreadable record (error set) has no e0, so no ids to quote: e stays null
        records.withColumn("e0", F.when(F.col("error").isNull(), F.from_json("raw", RAW_SCHEMA, PERMISSIVE)))
        .withColumn("e", F.when(_ids_as_written(F.col("raw"), "e0"), F.col("e0")).otherwise(quoted))
        .drop("e0")
    )
    partial = F.coalesce(F.col("e.event_timestamp"), F.col("e.user_pseudo_id"), F.col("e.event_name"))
    parse_error = F.when(F.col("error").isNotNull(), F.col("error"))
    if whole_line_check:
        parse_error = parse_error.when(
            F.col("e._corrupt_record").isNull() & text_after_object(F.col("raw")),
            F.lit("malformed JSON (text after the object: a second object or junk on the line)"))
    parse_error = (
        parse_error
        .when(F.col("e.event_timestamp").isNull() & F.col("e._corrupt_record").isNotNull() & partial.isNull(),
              F.lit("malformed JSON (truncated, invalid or not an object)"))
        .when(F.col("e._corrupt_record").isNotNull(), F.lit("JSON field of the wrong type"))
    )
    return _candidates(parsed, parse_error)


def from_parquet(df: DataFrame) -> DataFrame:
    """Candidate events from a parquet export: re-read through the JSON schema for one typing path."""
    present = [c for c in df.columns if not c.startswith("_")]
    records = df.select(
        F.col("_metadata.file_path").alias("file"),
        F.lit(None).cast("long").alias("line"),
        F.col("_metadata.row_index").alias("offset"),
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in present])).alias("raw"),
        F.lit(None).cast("string").alias("error"),
    )
    return from_json_lines(records, whole_line_check=False)


def _candidates(parsed: DataFrame, parse_error: Column) -> DataFrame:
    e = "e."
    return parsed.select(
        "file", "line", "offset", "raw",
        parse_error.alias("parse_error"),
        F.lit("ga4").alias("source"),
        F.col(e + "user_pseudo_id").alias("user_id"),
        F.col(e + "event_timestamp").alias("ts_raw"),
        F.col(e + "event_name").alias("event_name"),
        param("page_location").alias("url"),
        F.lit(None).cast("string").alias("domain_raw"),
        param("page_title").alias("page_title"),
        param("page_referrer").alias("referrer"),
        param("ga_session_id").alias("ga_session_id"),
        param("engagement_time_msec").alias("engagement_raw"),
        F.lit(None).cast("string").alias("duration_raw"),
        F.col(e + "device.category").alias("device_category"),
        F.col(e + "device.web_info.browser").alias("browser"),
        F.col(e + "device.operating_system").alias("os"),
        F.col(e + "device.mobile_brand_name").alias("mobile_brand"),
        F.col(e + "device.mobile_model_name").alias("mobile_model"),
        F.col(e + "geo.country").alias("country"),
        F.col(e + "geo.region").alias("region"),
        F.col(e + "geo.city").alias("city"),
        F.col(e + "traffic_source.source").alias("traffic_source"),
        F.col(e + "traffic_source.medium").alias("traffic_medium"),
        F.col(e + "ecommerce.transaction_id").alias("transaction_id"),
        F.col(e + "ecommerce.purchase_revenue_in_usd").alias("revenue_raw"),
        _items().alias("items"),
    )
