"""Stage runners: read tables, call the library, write tables, record the run.

These are the only functions that combine I/O with logic; the CLI and ``jobs/`` call them.
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark import StorageLevel
from pyspark.sql import functions as F

from beha2vec import ingest as ingest_lib
from beha2vec.context import Context
from beha2vec.runs import recorded
from beha2vec.sessionize import sessionize as sessionize_events
from beha2vec.sessionize import validate as validate_sessionize

log = logging.getLogger(__name__)


def ingest(ctx: Context, source: str, paths: list[str]) -> dict:
    """Raw files of one source into ``events`` (that source's partition) and ``rejects``."""
    conf = ctx.config.ingest
    with recorded(ctx.lake, ctx.config, "ingest") as run:
        candidates = ingest_lib.read_candidates(ctx.spark, source, paths, conf)
        typed = ingest_lib.validate(candidates, conf, dt.datetime.now(dt.UTC))
        typed = typed.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            counts = {r["ok"]: r["n"] for r in typed.groupBy(F.col("reason").isNull().alias("ok"))
                      .agg(F.count(F.lit(1)).alias("n")).collect()}
            ranked = ingest_lib.rank_duplicates(typed.where(F.col("reason").isNull()).drop("raw"))
            ranked = ranked.persist(StorageLevel.MEMORY_AND_DISK)
            events = ctx.lake.write(ingest_lib.to_events(ranked, conf), "events",
                                    replace={"source": source})
            rejects = ctx.lake.write(ingest_lib.to_rejects(typed, ranked, run.run_id, conf), "rejects",
                                     replace={"stage": "ingest", "source": source})
            ranked.unpersist()
        finally:
            typed.unpersist()
        run.rows_in = counts.get(True, 0) + counts.get(False, 0)
        run.rows_out = events.rows
        run.rows_rejected = rejects.rows
        run.details.update(source=source, inputs=paths, invalid=counts.get(False, 0),
                           duplicates=rejects.rows - counts.get(False, 0),
                           events_version=events.version, rejects_version=rejects.version)
    return run.details | {"rows_in": run.rows_in, "rows_out": run.rows_out,
                          "rows_rejected": run.rows_rejected}


def sessionize(ctx: Context) -> dict:
    """``events`` into ``sessions``; every event lands in exactly one session."""
    conf = ctx.config.sessionize
    validate_sessionize(conf)
    with recorded(ctx.lake, ctx.config, "sessionize") as run:
        events = ctx.lake.read("events")
        written = ctx.lake.write(sessionize_events(events, conf), "sessions")
        stats = ctx.lake.read("sessions").agg(
            F.sum("n_events").alias("events"), F.count(F.lit(1)).alias("sessions"),
            F.sum(F.col("is_bot").cast("long")).alias("bot_sessions"),
            F.sum(F.col("is_capped").cast("long")).alias("capped_sessions"),
            F.sum(F.col("text_truncated").cast("long")).alias("truncated_texts"),
        ).first()
        run.rows_in = ctx.lake.read("events").count()
        run.rows_out = int(stats["events"] or 0)
        run.details.update({k: int(stats[k] or 0) for k in
                            ("sessions", "bot_sessions", "capped_sessions", "truncated_texts")},
                           sessions_version=written.version)
    return run.details | {"rows_in": run.rows_in, "rows_out": run.rows_out}
