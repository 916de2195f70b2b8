"""Flat CSV sources: GA4 flattened exports and web-tracking panel logs.

Headers are matched by name (case-insensitive, ``.`` read as ``_``) against a list of aliases per
canonical column, on the driver, so a file that lacks a required column fails before any work
starts, with the file and the columns it does have in the message.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from beha2vec.ingest.files import InputError, read_header


@dataclass(frozen=True)
class Layout:
    """How one CSV source's headers map onto canonical columns."""

    source: str
    aliases: dict[str, tuple[str, ...]]
    required: tuple[tuple[str, ...], ...]

    @property
    def columns(self) -> list[str]:
        return list(self.aliases)

    def header_index(self, path: str) -> dict[str, int]:
        header, _ = read_header(path)
        if not header.strip():
            raise InputError(f"{path}: empty file (no header row)")
        names = [h.strip().strip('"').lower().replace(".", "_") for h in header.split(",")]
        index: dict[str, int] = {}
        for canonical, aliases in self.aliases.items():
            for alias in aliases:
                if alias in names:
                    index[canonical] = names.index(alias)
                    break
        for group in self.required:
            if not any(c in index for c in group):
                wanted = " or ".join(a for c in group for a in self.aliases[c])
                raise InputError(
                    f"{path}: missing required column {wanted} for source '{self.source}'; "
                    f"the header has: {', '.join(names)}"
                )
        return index


GA4_FLAT = Layout(
    "ga4-flat",
    {
        "user_id": ("user_pseudo_id",),
        "ts_raw": ("event_timestamp",),
        "event_name": ("event_name",),
        "url": ("page_location", "page_url"),
        "page_title": ("page_title",),
        "referrer": ("page_referrer",),
        "ga_session_id": ("ga_session_id",),
        "engagement_raw": ("engagement_time_msec",),
        "device_category": ("device_category", "category"),
        "browser": ("device_browser", "device_web_info_browser", "browser"),
        "os": ("device_operating_system", "operating_system", "os"),
        "mobile_brand": ("mobile_brand_name", "device_mobile_brand_name"),
        "mobile_model": ("mobile_model_name", "device_mobile_model_name"),
        "country": ("geo_country", "country"),
        "region": ("geo_region", "region"),
        "city": ("geo_city", "city"),
        "traffic_source": ("traffic_source_source", "source"),
        "traffic_medium": ("traffic_source_medium", "medium"),
        "transaction_id": ("transaction_id", "ecommerce_transaction_id"),
        "revenue_raw": ("purchase_revenue_in_usd", "ecommerce_purchase_revenue_in_usd"),
        "item_id": ("item_id",),
        "item_name": ("item_name",),
        "item_category": ("item_category",),
        "item_price": ("price_in_usd", "item_price_in_usd"),
        "item_quantity": ("quantity", "item_quantity"),
        "item_revenue": ("item_revenue_in_usd",),
    },
    (("user_id",), ("ts_raw",)),
)

WEBTRACKING = Layout(
    "webtracking",
    {
        "user_id": ("panelist_id",),
        "ts_raw": ("used_at", "timestamp"),
        "url": ("url",),
        "domain_raw": ("domain",),
        "duration_raw": ("active_seconds", "duration"),
        "device_category": ("device",),
    },
    (("user_id",), ("ts_raw",), ("url", "domain_raw")),
)

LAYOUTS = {layout.source: layout for layout in (GA4_FLAT, WEBTRACKING)}


def _col(df: DataFrame, name: str) -> Column:
    """A CSV field with empty text read as missing."""
    if name not in df.columns:
        return F.lit(None).cast("string")
    return F.nullif(F.trim(F.col(name)), F.lit(""))


def candidates(records: DataFrame, layout: Layout) -> DataFrame:
    """Candidate events from CSV records parsed into the layout's canonical columns."""
    c = lambda name: _col(records, name)  # noqa: E731
    has_item = c("item_id").isNotNull() | c("item_name").isNotNull()
    item = F.struct(
        c("item_id").alias("item_id"),
        c("item_name").alias("item_name"),
        c("item_category").alias("item_category"),
        c("item_price").try_cast("double").alias("price_usd"),
        c("item_quantity").try_cast("double").try_cast("long").alias("quantity"),
        c("item_revenue").try_cast("double").alias("revenue_usd"),
    )
    event_name = c("event_name") if layout is GA4_FLAT else F.lit("page_view")
    return records.select(
        "file", "line", "offset", "raw",
        F.col("error").alias("parse_error"),
        F.lit(layout.source).alias("source"),
        c("user_id").alias("user_id"),
        c("ts_raw").alias("ts_raw"),
        event_name.alias("event_name"),
        c("url").alias("url"),
        c("domain_raw").alias("domain_raw"),
        c("page_title").alias("page_title"),
        c("referrer").alias("referrer"),
        c("ga_session_id").alias("ga_session_id"),
        c("engagement_raw").alias("engagement_raw"),
        c("duration_raw").alias("duration_raw"),
        c("device_category").alias("device_category"),
        c("browser").alias("browser"),
        c("os").alias("os"),
        c("mobile_brand").alias("mobile_brand"),
        c("mobile_model").alias("mobile_model"),
        c("country").alias("country"),
        c("region").alias("region"),
        c("city").alias("city"),
        c("traffic_source").alias("traffic_source"),
        c("traffic_medium").alias("traffic_medium"),
        c("transaction_id").alias("transaction_id"),
        c("revenue_raw").alias("revenue_raw"),
        F.when(has_item, F.array(item)).alias("items"),
    )
