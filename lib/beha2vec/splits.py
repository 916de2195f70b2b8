"""The one split of users into train, validation and test, shared by every stage that needs it.

A user's part depends only on a seeded hash of their ``user_id``: the same user lands in the same
part in every run, process and partitioning, so the encoder never trains on a user that
``evaluate`` later scores as held out, and validation users (early stopping) are never test users.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from beha2vec.config import ConfigError

BUCKETS = 10_000
PARTS = ("train", "validation", "test")


def check(test_fraction: float, validation_fraction: float) -> None:
    """Fractions in [0, 1) that leave some users for training."""
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"evaluate.holdout_fraction must be in [0, 1), got {test_fraction}")
    if not 0 <= validation_fraction < 1 or test_fraction + validation_fraction >= 1:
        raise ConfigError(
            f"encoder.validation_fraction must be in [0, 1) and leave training users next to "
            f"evaluate.holdout_fraction={test_fraction}, got {validation_fraction}"
        )


def user_part(user_id: Column, seed: int, test_fraction: float, validation_fraction: float = 0.0) -> Column:
    """``'test'``, ``'validation'`` or ``'train'`` for each row, from a seeded hash of the user id."""
    check(test_fraction, validation_fraction)
    bucket = F.pmod(F.xxhash64(F.lit(seed), F.lit("user-split"), user_id), F.lit(BUCKETS))
    test_cut = round(test_fraction * BUCKETS)
    validation_cut = test_cut + round(validation_fraction * BUCKETS)
    return (F.when(bucket < test_cut, F.lit("test"))
            .when(bucket < validation_cut, F.lit("validation"))
            .otherwise(F.lit("train")))
