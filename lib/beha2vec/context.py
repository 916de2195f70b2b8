"""What a stage needs to run: the configuration, a Spark session and the lake, built lazily."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from pyspark.sql import SparkSession

from beha2vec.config import Config
from beha2vec.lake import Lake
from beha2vec.spark import get_spark


@dataclass
class Context:
    config: Config

    @cached_property
    def spark(self) -> SparkSession:
        return get_spark(self.config.spark)

    @cached_property
    def lake(self) -> Lake:
        return Lake(self.spark, self.config.lake.root, self.config.lake.route, self.config.lake.database)
