"""One Spark session for the whole run; a fresh lake folder per test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def spark():
    from beha2vec.config import SparkConfig
    from beha2vec.spark import get_spark

    session = get_spark(SparkConfig(master="local[2]", shuffle_partitions=2, progress_bar=False,
                                    driver_memory="2g"))
    yield session
    session.stop()


@pytest.fixture
def config(tmp_path):
    from beha2vec.config import load_config

    return load_config(lake_root=str(tmp_path / "lake"))


@pytest.fixture
def ctx(spark, config):
    """A stage context sharing the session-wide Spark session."""
    from beha2vec.context import Context

    context = Context(config)
    context.__dict__["spark"] = spark
    return context


@pytest.fixture
def lake(ctx):
    return ctx.lake


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test saying it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent")
    return path
