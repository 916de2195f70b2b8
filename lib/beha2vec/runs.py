"""The ``runs`` table: one row per stage run, with row counts that must add up.

A stage reports ``rows_in``, ``rows_out`` and ``rows_rejected``; a run whose counts do not satisfy
in = out + rejected is recorded as failed, because a row went missing somewhere.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from pyspark.sql import functions as F

from beha2vec import __version__
from beha2vec.config import Config
from beha2vec.errors import brief, text_of
from beha2vec.lake import Lake
from beha2vec.tables import RUNS

log = logging.getLogger(__name__)


class ConservationError(RuntimeError):
    """A stage's counts do not add up: rows were lost or invented."""


@dataclass
class Run:
    stage: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    rows_in: int = 0
    rows_out: int = 0
    rows_rejected: int = 0
    details: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.rows_in != self.rows_out + self.rows_rejected:
            raise ConservationError(
                f"stage {self.stage}: {self.rows_in} rows in but {self.rows_out} out + "
                f"{self.rows_rejected} rejected"
            )


@cache
def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    try:
        root = Path(__file__).resolve().parents[2]
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


@contextmanager
def recorded(lake: Lake, config: Config, stage: str) -> Iterator[Run]:
    """Record a stage run in ``runs``: ok with checked counts, or failed with the error."""
    run = Run(stage)
    status = "failed"
    try:
        yield run
        run.check()
        status = "ok"
    except BaseException as exc:
        run.details["error"] = f"{type(exc).__name__}: {text_of(exc)}"[:2000]
        raise
    finally:
        row = (
            run.run_id, stage, run.started_at, dt.datetime.now(dt.UTC), status,
            run.rows_in, run.rows_out, run.rows_rejected, config.hash(), code_version(),
            json.dumps(run.details, default=str, sort_keys=True),
        )
        _record(lake, row)


def _record(lake: Lake, row: tuple) -> None:
    """Append one row to ``runs``; through delta-rs alone when Spark cannot (a failure such as the
    JVM running out of memory stops Spark, and that failure is the one most worth a record)."""
    try:
        lake.write(lake.spark.createDataFrame([row], RUNS), "runs", mode="append")
        return
    except Exception as exc:
        log.warning("recording run %s of %s through Spark failed (%s); recording it through delta-rs",
                    row[0], row[1], brief(exc))
    try:
        lake.append_rows("runs", [row])
    except Exception as exc:  # the stage's own outcome matters more than its record
        log.error("could not record run %s of %s: %s", row[0], row[1], brief(exc))


def resume_point(lake: Lake, stages: list[str]) -> str | None:
    """The first of ``stages`` to run again: its latest run failed or is missing, or it finished
    before the latest run of the stage before it (its input changed since); None when all is fresh."""
    if not lake.exists("runs"):
        return stages[0]
    latest = {r["stage"]: r for r in lake.read("runs").groupBy("stage").agg(
        F.max_by(F.struct("status", "finished_at"), "started_at").alias("last")).select(
        "stage", "last.status", "last.finished_at").collect()}
    return first_stale(stages, {s: (r["status"], r["finished_at"]) for s, r in latest.items()})


def first_stale(stages: list[str], latest: dict[str, tuple[str, dt.datetime]]) -> str | None:
    """Pure part of :func:`resume_point`: ``latest`` maps a stage to its last (status, finished_at)."""
    previous = None
    for stage in stages:
        status, finished = latest.get(stage, (None, None))
        if status != "ok" or (previous is not None and finished < previous):
            return stage
        previous = finished
    return None
