"""The one Spark session factory, for local mode and for clusters.

The settings here are the ones the lake relies on: UTC session time, Arrow transfers, and
parquet timestamps written as TIMESTAMP_MICROS so delta-rs commits plain ``timestamp`` columns.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyspark.logger import PySparkLogger
from pyspark.sql import DataFrame, SparkSession

from beha2vec.config import ConfigError, SparkConfig
from beha2vec.errors import brief, jvm_gone

log = logging.getLogger(__name__)

FIXED_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.parquet.int96RebaseModeInWrite": "CORRECTED",
    "spark.sql.parquet.datetimeRebaseModeInWrite": "CORRECTED",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.sources.partitionOverwriteMode": "static",
    "spark.ui.enabled": "false",
}


def _prepare_environment() -> None:
    """Workers must run this interpreter; loopback only when running locally."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")


def _quiet_query_context_loggers() -> None:
    """PySpark logs every SQL analysis error as a multi-kilobyte JSON record with the whole JVM
    stack before raising it; the CLI already prints the error's first line (all of it with -v)."""
    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).disabled = True


def get_spark(conf: SparkConfig) -> SparkSession:
    """Return the active session or build one from ``conf``.

    Under ``spark-submit`` the master comes from the command line; ``conf.master`` applies only
    when no master was given.
    """
    _prepare_environment()
    _quiet_query_context_loggers()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(conf.app_name)
    if not _under_spark_submit():
        builder = builder.master(conf.master)
        builder = builder.config("spark.driver.memory", conf.driver_memory)
    log_conf = Path(__file__).with_name("data") / "log4j2.properties"
    settings = {
        **FIXED_CONF,
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={log_conf.as_uri()}",
        "spark.executor.extraJavaOptions": f"-Dlog4j2.configurationFile={log_conf.as_uri()}",
        "spark.sql.shuffle.partitions": str(conf.shuffle_partitions),
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(conf.arrow_batch_size),
        "spark.ui.showConsoleProgress": str(conf.progress_bar).lower(),
        **conf.extra,
    }
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(conf.log_level)
    return spark


def _under_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands its gateway port to the Python driver."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def release(*frames: DataFrame | None) -> None:
    """Unpersist cached frames, never raising: this runs in ``finally`` blocks, where an error of its
    own (Spark already stopped by the failure being handled) would hide the failure that matters."""
    for frame in frames:
        if frame is None:
            continue
        try:
            frame.unpersist()
        except Exception as exc:
            if jvm_gone(exc):
                return  # its caches went with it
            log.warning("could not release a cached frame: %s", brief(exc))


@contextmanager
def setting(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    """A session setting for the queries of one block, restored afterwards."""
    before = spark.conf.get(key)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        try:
            spark.conf.set(key, before)
        except Exception as exc:  # as in release: never hide the failure being handled
            if not jvm_gone(exc):
                log.warning("could not restore %s: %s", key, brief(exc))


def partitions_for(rows: int, conf: SparkConfig) -> int:
    """Shuffle partitions for ``rows`` input rows: the configured number, more when each partition
    would hold over ``rows_per_partition`` rows. A task's aggregation and sort buffers grow with its
    rows; with a fixed number of partitions they grow with the input."""
    if conf.rows_per_partition < 1:
        raise ConfigError(f"spark.rows_per_partition must be at least 1, got {conf.rows_per_partition}")
    return max(conf.shuffle_partitions, math.ceil(rows / conf.rows_per_partition))


@contextmanager
def scaled_shuffle(spark: SparkSession, rows: int, conf: SparkConfig) -> Iterator[int]:
    """The shuffle partitions of :func:`partitions_for` (yielded, for the run's record), for the
    queries of one block."""
    partitions = partitions_for(rows, conf)
    with setting(spark, "spark.sql.shuffle.partitions", str(partitions)):
        yield partitions
