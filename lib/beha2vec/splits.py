"""The one split of sessions into train, validation and test, shared by every stage that needs it.

``evaluate.holdout_by`` chooses what is held out:

* ``users`` (default): a seeded hash of ``user_id`` puts each user, with all their sessions, in one
  part. The encoder never trains on a user that ``evaluate`` later scores, and validation users
  (early stopping) are never test users. The same user lands in the same part in every run,
  process and partitioning.
* ``time``: every user is in every part; each user's latest sessions (by ``start_ts``) are test,
  the ones just before are validation, the earlier ones train. For panels with too few users to
  hold any out (the real web-tracking sample has 5): models are scored on future sessions of
  known users.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from beha2vec.config import ConfigError

BUCKETS = 10_000
HOLDOUT_BY = ("users", "time")


def check(test_fraction: float, validation_fraction: float, holdout_by: str = "users") -> None:
    """Fractions in [0, 1) that leave some sessions for training; a known mode."""
    if holdout_by not in HOLDOUT_BY:
        raise ConfigError(f"evaluate.holdout_by must be one of {', '.join(HOLDOUT_BY)}, got '{holdout_by}'")
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"evaluate.holdout_fraction must be in [0, 1), got {test_fraction}")
    if not 0 <= validation_fraction < 1 or test_fraction + validation_fraction >= 1:
        raise ConfigError(
            f"encoder.validation_fraction must be in [0, 1) and leave training users next to "
            f"evaluate.holdout_fraction={test_fraction}, got {validation_fraction}"
        )


def _part(position: Column, test_fraction: float, validation_fraction: float) -> Column:
    """``position`` in [0, 1): below the test cut is test, then validation, then train."""
    test_cut = test_fraction
    validation_cut = test_fraction + validation_fraction
    return (F.when(position < test_cut, F.lit("test"))
            .when(position < validation_cut, F.lit("validation"))
            .otherwise(F.lit("train")))


def user_part(user_id: Column, seed: int, test_fraction: float, validation_fraction: float = 0.0) -> Column:
    """``'test'``, ``'validation'`` or ``'train'`` for each row, from a seeded hash of the user id."""
    check(test_fraction, validation_fraction)
    bucket = F.pmod(F.xxhash64(F.lit(seed), F.lit("user-split"), user_id), F.lit(BUCKETS)) / BUCKETS
    return _part(bucket, test_fraction, validation_fraction)


def session_parts(sessions: DataFrame, holdout_by: str, seed: int, test_fraction: float,
                  validation_fraction: float = 0.0) -> DataFrame:
    """``session_id, user_id, part`` for every session of ``sessions`` (which needs ``start_ts``)."""
    check(test_fraction, validation_fraction, holdout_by)
    if holdout_by == "users":
        part = user_part(F.col("user_id"), seed, test_fraction, validation_fraction)
        return sessions.select("session_id", "user_id", part.alias("part"))
    latest_first = Window.partitionBy("user_id").orderBy(F.col("start_ts").desc(), F.col("session_id").desc())
    per_user = Window.partitionBy("user_id")
    position = (F.row_number().over(latest_first) - 1) / F.count(F.lit(1)).over(per_user)
    part = _part(position, test_fraction, validation_fraction)
    return sessions.select("session_id", "user_id", part.alias("part"))
