"""Where `run --resume` starts, from each stage's latest run."""

from __future__ import annotations

import datetime as dt

from beha2vec.runs import first_stale

T = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
STAGES = ["ingest", "sessionize", "embed", "cluster"]


def at(minutes: int) -> dt.datetime:
    return T + dt.timedelta(minutes=minutes)


def test_everything_fresh_means_nothing_to_do():
    latest = {s: ("ok", at(i)) for i, s in enumerate(STAGES)}
    assert first_stale(STAGES, latest) is None


def test_first_failed_or_missing_stage():
    latest = {"ingest": ("ok", at(0)), "sessionize": ("ok", at(1)), "embed": ("failed", at(2)),
              "cluster": ("ok", at(3))}
    assert first_stale(STAGES, latest) == "embed"
    del latest["embed"]
    assert first_stale(STAGES, latest) == "embed"
    assert first_stale(STAGES, {}) == "ingest"


def test_a_stage_older_than_its_input_is_stale():
    latest = {"ingest": ("ok", at(0)), "sessionize": ("ok", at(10)), "embed": ("ok", at(5)),
              "cluster": ("ok", at(11))}
    assert first_stale(STAGES, latest) == "embed"
