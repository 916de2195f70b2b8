"""Session settings: shuffle partitions that grow with a stage's input, and settings scoped to a block."""

from __future__ import annotations

import pytest

from beha2vec.config import ConfigError, SparkConfig
from beha2vec.spark import partitions_for, scaled_shuffle


def test_partitions_grow_with_rows_beyond_the_configured_number():
    conf = SparkConfig(shuffle_partitions=8, rows_per_partition=250_000)
    assert partitions_for(0, conf) == 8
    assert partitions_for(1_000_000, conf) == 8
    assert partitions_for(2_000_001, conf) == 9
    assert partitions_for(9_895_127, conf) == 40
    with pytest.raises(ConfigError, match="spark.rows_per_partition must be at least 1, got 0"):
        partitions_for(10, SparkConfig(rows_per_partition=0))


def test_scaled_shuffle_applies_inside_the_block_and_is_restored(spark):
    key = "spark.sql.shuffle.partitions"
    before = spark.conf.get(key)
    conf = SparkConfig(shuffle_partitions=int(before), rows_per_partition=10)
    with scaled_shuffle(spark, 1000, conf) as partitions:
        assert partitions == 100
        assert spark.conf.get(key) == "100"
        plan = _plan(spark.range(1000).repartition("id"))
        assert "hashpartitioning(id#" in plan and ", 100)" in plan
    assert spark.conf.get(key) == before


def _plan(df) -> str:
    """The physical plan Spark chose before adaptive execution changes it."""
    return df._jdf.queryExecution().executedPlan().toString()
