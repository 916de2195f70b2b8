"""Which input files an incremental ingest reads again, and which users sessionize recomputes.

GA4's BigQuery export writes one file per day (``events_YYYYMMDD``) and rewrites the last days
as late events arrive. An incremental ingest therefore reads a file when it is new, when its size
or modification time changed since it was ingested, or when its export date is among the
``ingest.reingest_days`` latest dates already ingested; every other file's events stay as they
are. The events of the files read replace those the same files gave before, in one commit.

The ``ingested_files`` table is the ledger of what was read (path, size, time, export date); the
``changed_users`` table collects the users whose events any ingest changed since the last
sessionize, which then recomputes all their sessions and only theirs.

Per-session stages (``features``, and ``embed`` for models that read one session at a time) keep a
``fingerprint`` beside each row: the SHA-256 of the whole session row and of what computed the row
(the model and its settings). An incremental run reuses a row exactly when its session and its
computation are unchanged, and computes the rest; sessions that vanished lose their rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from dataclasses import dataclass

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

EXPORT_DATE = re.compile(r"^events_(?:intraday_)?(\d{8})(?:\.|$)")
INCREMENTAL_SOURCES = ("ga4", "ga4-flat")


@dataclass(frozen=True)
class FileState:
    """A file as the ledger keeps it."""

    path: str
    size: int
    modified: dt.datetime
    export_date: dt.date | None


def export_date(path: str) -> dt.date | None:
    """The date in a GA4 export file name (``events_20240301.json.gz`` → 2024-03-01), else None."""
    match = EXPORT_DATE.match(os.path.basename(path))
    if not match:
        return None
    try:
        return dt.datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:
        return None


def file_state(path: str) -> FileState:
    info = os.stat(path)
    modified = dt.datetime.fromtimestamp(info.st_mtime, dt.UTC).replace(microsecond=0)
    return FileState(path, info.st_size, modified, export_date(path))


def plan(files: list[FileState], ledger: pd.DataFrame, reingest_days: int) -> list[FileState]:
    """The files to read: new, changed, or of the ``reingest_days`` latest export dates ingested.

    ``ledger`` holds ``file, size, modified, export_date`` of the files ingested before (of this
    source). Files without an export date are read when new or changed only.
    """
    known = {r.file: (int(r.size), pd.Timestamp(r.modified).to_pydatetime().replace(microsecond=0))
             for r in ledger.itertuples()}
    dates = sorted({d for d in pd.to_datetime(ledger["export_date"]).dropna().dt.date}) if len(ledger) else []
    recent = set(dates[-reingest_days:]) if reingest_days > 0 else set()

    def wanted(f: FileState) -> bool:
        before = known.get(f.path)
        modified = f.modified.astimezone(dt.UTC).replace(tzinfo=None) if f.modified.tzinfo else f.modified
        changed = before is None or before[0] != f.size or before[1].replace(tzinfo=None) != modified
        return changed or f.export_date in recent

    return [f for f in files if wanted(f)]


def fingerprints(sessions: DataFrame, identity: str) -> DataFrame:
    """``session_id, fingerprint`` of every session: SHA-256 of ``identity`` (what computes from the
    session) and of every column of the session, so any change to either gives a new fingerprint."""
    content = F.to_json(F.struct(*sorted(sessions.columns)))
    computation = hashlib.sha256(identity.encode()).hexdigest()
    return sessions.select("session_id", F.sha2(F.concat_ws(" ", F.lit(computation), content), 256)
                           .alias("fingerprint"))


def split(previous: DataFrame, sessions: DataFrame, current: DataFrame) -> tuple[DataFrame, DataFrame]:
    """``(rows to keep, sessions to compute)``: the rows of ``previous`` whose session and fingerprint
    are still ``current``, and every session without such a row."""
    kept = previous.join(current, ["session_id", "fingerprint"], "left_semi")
    return kept, sessions.join(kept.select("session_id"), "session_id", "left_anti")
