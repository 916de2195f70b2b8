"""Applying a saved encoder in parallel: an iterator pandas UDF, the model loaded once per worker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

INPUT_COLUMNS = ("domains", "urls", "visit_us", "dwell_s", "start_us")
_LOADED: dict[tuple[str, str, int], tuple] = {}


def session_inputs(sessions: DataFrame) -> DataFrame:
    """The columns the encoder reads, times as epoch microseconds (cheap to move through Arrow)."""
    return sessions.select(
        "session_id", "user_id", "domains", "urls",
        F.transform("visit_ts", lambda t: F.unix_micros(t)).alias("visit_us"),
        "dwell_s", F.unix_micros("start_ts").alias("start_us"),
    )


def load_cached(path: str, device: str, threads: int):
    """(model, tokenizer, labeller) for this Python worker: built on first use, then reused."""
    key = (path, device, threads)
    if key not in _LOADED:
        import torch

        from beha2vec.encoder.driver import make_labeller
        from beha2vec.encoder.registry import categories, load

        if threads:
            torch.set_num_threads(threads)
        chosen = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        model, tokenizer, enrich = load(Path(path), chosen)
        _LOADED[key] = (model, tokenizer, make_labeller(enrich, categories(Path(path))), chosen)
    return _LOADED[key]


def encode_frame(frame: pd.DataFrame, model, tokenizer, labeller, device: str, batch_size: int) -> np.ndarray:
    """Vectors for the sessions of one pandas frame, exactly as the in-process model computes them."""
    import torch

    from beha2vec.encoder.tokens import encode_sessions
    from beha2vec.encoder.train import embed

    return embed(model, encode_sessions(frame, tokenizer, labeller), batch_size, torch.device(device))


def encoder_udf(path: str, device: str, threads: int, batch_size: int):
    """Session inputs (a struct of ``INPUT_COLUMNS``) -> L2-normalised ``array<float>``."""

    @F.pandas_udf(T.ArrayType(T.FloatType()))
    def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        model, tokenizer, labeller, chosen = load_cached(path, device, threads)
        for frame in batches:
            yield pd.Series(list(encode_frame(frame, model, tokenizer, labeller, chosen, batch_size)))

    return encode


def embed_sessions(sessions: DataFrame, path: str, model_name: str, device: str, threads: int,
                   batch_size: int) -> DataFrame:
    """``session_embeddings`` rows of the encoder saved at ``path``."""
    inputs = session_inputs(sessions)
    cores = sessions.sparkSession.sparkContext.defaultParallelism
    if inputs.rdd.getNumPartitions() < cores:  # a one-file table would otherwise use one core
        inputs = inputs.repartition(cores)
    udf = encoder_udf(os.path.abspath(path), device, threads, batch_size)
    vectors = inputs.select("session_id", "user_id", udf(F.struct(*INPUT_COLUMNS)).alias("embedding"))
    return vectors.select(
        "session_id", "user_id", F.lit(model_name).alias("model"),
        F.size("embedding").cast("int").alias("dim"), "embedding",
        F.lit(None).cast("array<int>").alias("indices"), F.lit(None).cast("array<float>").alias("values"),
    )
