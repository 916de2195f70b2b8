"""Session embeddings: swappable embedders chosen by name, applied in parallel by Spark.

- ``minilm`` or any sentence-transformers name or path: an iterator pandas UDF over
  ``sequence_text``, the model loaded once per Python worker;
- ``openai:<model>``: any OpenAI-compatible embeddings API over ``sequence_text``, cached in Delta
  (``embed_openai``);
- ``tfidf``: Spark MLlib CountVectorizer + IDF over the visit units (sparse rows);
- ``features``: the standardised ``session_features``;
- ``encoder`` or ``encoder:<version>``: the trained sequence encoder (``beha2vec.encoder``).

Text models embed each distinct ``sequence_text`` once and join the vectors back to sessions.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator

import pandas as pd
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import IDF, CountVectorizer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from beha2vec.config import EmbedConfig

log = logging.getLogger(__name__)

VECTOR = T.ArrayType(T.FloatType())
ST_OUTPUT = T.StructType([
    T.StructField("embedding", VECTOR),
    T.StructField("worker_pid", T.IntegerType()),
    T.StructField("worker_loads", T.IntegerType()),
])
_LOADED: dict[tuple, object] = {}
_LOADS: dict[tuple, int] = {}


def kind_of(model: str) -> str:
    """Which embedder a model name selects."""
    if model in ("tfidf", "features"):
        return model
    if model == "encoder" or model.startswith("encoder:"):
        return "encoder"
    if model.startswith("openai:"):
        return "openai"
    return "sentence-transformers"


def text_prefix(model: str, conf: EmbedConfig) -> str:
    """The prefix E5-style models expect before a query text; configurable per model."""
    if model in conf.prefixes:
        return conf.prefixes[model]
    return "query: " if "e5" in os.path.basename(model.rstrip("/")).lower() else ""


def distinct_texts(sessions: DataFrame) -> DataFrame:
    """One row per distinct ``sequence_text`` with its sha256: each is embedded once."""
    return (
        sessions.select(F.sha2("sequence_text", 256).alias("text_hash"), F.col("sequence_text").alias("text"))
        .dropDuplicates(["text_hash"])
    )


def load_sentence_transformer(name: str, device: str, threads: int):
    """The model for this Python worker: loaded on first use, then reused by every batch and task."""
    key = (name, device, threads)
    if key not in _LOADED:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import torch
        from sentence_transformers import SentenceTransformer

        from beha2vec.models import model_path

        torch.set_num_threads(threads)
        chosen = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        _LOADED[key] = SentenceTransformer(model_path(name), device=chosen)
        _LOADS[key] = _LOADS.get(key, 0) + 1
    return _LOADED[key], _LOADS[key]


def sentence_transformer_udf(model: str, conf: EmbedConfig):
    """Iterator pandas UDF: text -> (L2-normalised embedding, worker pid, model loads in that worker)."""
    prefix, batch_size = text_prefix(model, conf), conf.batch_size
    device, threads = conf.device, conf.torch_threads

    @F.pandas_udf(ST_OUTPUT)
    def encode(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        st, loads = load_sentence_transformer(model, device, threads)
        pid = os.getpid()
        for texts in batches:
            vectors = st.encode([prefix + t for t in texts], batch_size=batch_size,
                                normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            yield pd.DataFrame({"embedding": list(vectors.astype("float32")),
                                "worker_pid": pid, "worker_loads": loads})

    return encode


def inference_partitions(rows: int, cores: int, batch_rows: int) -> int:
    """Tasks for a model UDF over ``rows`` rows: whole waves of one task per core, each task at most
    one Arrow batch. Fewer, fuller tasks pad less: sentence-transformers sorts each call's texts by
    length, and 8 tasks of 232 texts took 1.11x as long as 2 of 927 (docs/benchmarks.md)."""
    return cores * max(1, math.ceil(rows / (cores * batch_rows)))


def over_every_core(frame: DataFrame, rows: int, batch_rows: int) -> DataFrame:
    """``frame`` (of ``rows`` rows) dealt round-robin into :func:`inference_partitions` tasks.

    A model's cost is per row, but adaptive execution sizes a shuffle's partitions by bytes (1 MB at
    least), so the few thousand texts of a small input would run in one task with the other cores idle.
    A repartition to a fixed number is never coalesced."""
    cores = frame.sparkSession.sparkContext.defaultParallelism
    return frame.repartition(inference_partitions(rows, cores, batch_rows))


def embed_texts_st(model: str, texts: DataFrame, conf: EmbedConfig) -> DataFrame:
    """``text_hash, dim, embedding, worker_pid, worker_loads`` for every distinct text."""
    out = texts.select("text_hash", sentence_transformer_udf(model, conf)(F.col("text")).alias("o"))
    return out.select(
        "text_hash", F.size("o.embedding").alias("dim"), F.col("o.embedding").alias("embedding"),
        F.col("o.worker_pid").alias("worker_pid"), F.col("o.worker_loads").alias("worker_loads"),
    )


def join_back(sessions: DataFrame, vectors: DataFrame, model: str) -> DataFrame:
    """Session rows of ``session_embeddings`` from per-text vectors."""
    keyed = sessions.select("session_id", "user_id", F.sha2("sequence_text", 256).alias("text_hash"))
    return keyed.join(vectors, "text_hash").select(
        "session_id", "user_id", F.lit(model).alias("model"), F.col("dim").cast("int").alias("dim"),
        "embedding", F.lit(None).cast("array<int>").alias("indices"),
        F.lit(None).cast("array<float>").alias("values"),
    )


def visit_tokens(sessions: DataFrame, path_segments: bool) -> DataFrame:
    """The TF-IDF document of a session: its visit units, plus their path prefixes if asked."""
    units = F.col("domains")
    if path_segments:
        prefixes = F.flatten(F.transform(units, lambda u: _path_prefixes(u)))
        units = F.concat(units, prefixes)
    return sessions.select("session_id", "user_id", units.alias("tokens"))


def _path_prefixes(unit):
    """``/a/b/c`` -> ``[/a/, /a/b/]``: sections of a site as extra tokens; none for domains."""
    parts = F.filter(F.split(unit, "/"), lambda p: p != "")
    depth = F.size(parts) - 1
    prefixes = F.transform(
        F.sequence(F.lit(1), depth),
        lambda k: F.concat(F.lit("/"), F.array_join(F.slice(parts, 1, k), "/"), F.lit("/")),
    )
    return F.when(unit.startswith("/") & (depth >= 1), prefixes).otherwise(F.array().cast("array<string>"))


def fit_tfidf(documents: DataFrame, conf: EmbedConfig) -> PipelineModel:
    """Vocabulary and IDF weights from the documents (Estimator -> Model, saved with the run)."""
    pipeline = Pipeline(stages=[
        CountVectorizer(inputCol="tokens", outputCol="tf", vocabSize=conf.tfidf_vocab_size,
                        minDF=float(conf.tfidf_min_df)),
        IDF(inputCol="tf", outputCol="tfidf"),
    ])
    return pipeline.fit(documents.where(F.size("tokens") > 0))


SPARSE = T.StructType([
    T.StructField("dim", T.IntegerType()),
    T.StructField("indices", T.ArrayType(T.IntegerType())),
    T.StructField("values", T.ArrayType(T.FloatType())),
])


@F.udf(SPARSE)
def _sparse_parts(vector):
    """MLlib vectors carry no SQL accessors for their indices; one small Python UDF does it."""
    norm = float(vector.norm(2)) or 1.0
    return (int(vector.size), [int(i) for i in vector.indices], [float(v) / norm for v in vector.values])


def transform_tfidf(model: PipelineModel, documents: DataFrame) -> DataFrame:
    """Sparse, L2-normalised TF-IDF rows of ``session_embeddings`` (empty sessions: no entries)."""
    parts = model.transform(documents).select("session_id", "user_id", _sparse_parts("tfidf").alias("p"))
    return parts.select(
        "session_id", "user_id", F.lit("tfidf").alias("model"), F.col("p.dim").alias("dim"),
        F.lit(None).cast("array<float>").alias("embedding"),
        F.col("p.indices").alias("indices"), F.col("p.values").alias("values"),
    )


def features_rows(standardised: DataFrame) -> DataFrame:
    """``session_embeddings`` rows from standardised features (``session_id, user_id, embedding``)."""
    return standardised.select(
        "session_id", "user_id", F.lit("features").alias("model"),
        F.size("embedding").cast("int").alias("dim"), F.col("embedding").cast("array<float>"),
        F.lit(None).cast("array<int>").alias("indices"), F.lit(None).cast("array<float>").alias("values"),
    )

