"""The lake's tables: one place for every table name, schema and partitioning.

All columns are nullable in the stored schema so that appends never flip nullability; keys are
checked by the stages that produce them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import types as T

from beha2vec.features import FEATURE_COLUMNS


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: T.StructType
    doc: str
    partition_by: tuple[str, ...] = field(default_factory=tuple)


def _s(*fields: tuple[str, T.DataType]) -> T.StructType:
    return T.StructType([T.StructField(n, t, True) for n, t in fields])


ITEM = _s(
    ("item_id", T.StringType()),
    ("item_name", T.StringType()),
    ("item_category", T.StringType()),
    ("price_usd", T.DoubleType()),
    ("quantity", T.LongType()),
    ("revenue_usd", T.DoubleType()),
)

EVENTS = _s(
    ("event_id", T.StringType()),
    ("source", T.StringType()),
    ("user_id", T.StringType()),
    ("event_ts", T.TimestampType()),
    ("event_date", T.DateType()),
    ("event_name", T.StringType()),
    ("url", T.StringType()),
    ("host", T.StringType()),
    ("domain", T.StringType()),
    ("path", T.StringType()),
    ("page_title", T.StringType()),
    ("referrer", T.StringType()),
    ("ga_session_id", T.StringType()),
    ("engagement_ms", T.LongType()),
    ("duration_s", T.DoubleType()),
    ("device_category", T.StringType()),
    ("browser", T.StringType()),
    ("os", T.StringType()),
    ("mobile_brand", T.StringType()),
    ("mobile_model", T.StringType()),
    ("country", T.StringType()),
    ("region", T.StringType()),
    ("city", T.StringType()),
    ("traffic_source", T.StringType()),
    ("traffic_medium", T.StringType()),
    ("transaction_id", T.StringType()),
    ("purchase_revenue_usd", T.DoubleType()),
    ("items", T.ArrayType(ITEM, True)),
    ("src_file", T.StringType()),
    ("src_line", T.LongType()),
)

REJECTS = _s(
    ("run_id", T.StringType()),
    ("stage", T.StringType()),
    ("source", T.StringType()),
    ("file", T.StringType()),
    ("line", T.LongType()),
    ("offset", T.LongType()),
    ("raw", T.StringType()),
    ("reason", T.StringType()),
)

SESSIONS = _s(
    ("session_id", T.StringType()),
    ("user_id", T.StringType()),
    ("source", T.StringType()),
    ("session_no", T.LongType()),
    ("start_ts", T.TimestampType()),
    ("end_ts", T.TimestampType()),
    ("n_events", T.LongType()),
    ("n_visits", T.LongType()),
    ("duration_s", T.DoubleType()),
    ("engagement_s", T.DoubleType()),
    ("domains", T.ArrayType(T.StringType(), True)),
    ("urls", T.ArrayType(T.StringType(), True)),
    ("visit_ts", T.ArrayType(T.TimestampType(), True)),
    ("dwell_s", T.ArrayType(T.DoubleType(), True)),
    ("ga_session_id", T.StringType()),
    ("sequence_text", T.StringType()),
    ("text_tokens", T.IntegerType()),
    ("text_truncated", T.BooleanType()),
    ("is_capped", T.BooleanType()),
    ("is_bot", T.BooleanType()),
    ("bot_reason", T.StringType()),
)

RUNS = _s(
    ("run_id", T.StringType()),
    ("stage", T.StringType()),
    ("started_at", T.TimestampType()),
    ("finished_at", T.TimestampType()),
    ("status", T.StringType()),
    ("rows_in", T.LongType()),
    ("rows_out", T.LongType()),
    ("rows_rejected", T.LongType()),
    ("config_hash", T.StringType()),
    ("code_version", T.StringType()),
    ("details", T.StringType()),
)

SESSION_FEATURES = _s(
    ("session_id", T.StringType()),
    ("user_id", T.StringType()),
    *((name, T.DoubleType()) for name in FEATURE_COLUMNS),
    ("fingerprint", T.StringType()),
)

SESSION_EMBEDDINGS = _s(
    ("session_id", T.StringType()),
    ("user_id", T.StringType()),
    ("model", T.StringType()),
    ("dim", T.IntegerType()),
    ("embedding", T.ArrayType(T.FloatType(), True)),
    ("indices", T.ArrayType(T.IntegerType(), True)),
    ("values", T.ArrayType(T.FloatType(), True)),
    ("fingerprint", T.StringType()),
)

EMBEDDING_CACHE = _s(
    ("model", T.StringType()),
    ("text_hash", T.StringType()),
    ("dim", T.IntegerType()),
    ("embedding", T.ArrayType(T.FloatType(), True)),
    ("tokens", T.IntegerType()),
    ("created_at", T.TimestampType()),
)

EVALUATION = _s(
    ("run_id", T.StringType()),
    ("model", T.StringType()),
    ("metric", T.StringType()),
    ("value", T.DoubleType()),
    ("n_users", T.LongType()),
    ("n_sessions", T.LongType()),
    ("params", T.StringType()),
)

ENCODER_RUNS = _s(
    ("run_id", T.StringType()),
    ("version", T.IntegerType()),
    ("path", T.StringType()),
    ("started_at", T.TimestampType()),
    ("finished_at", T.TimestampType()),
    ("device", T.StringType()),
    ("num_processes", T.IntegerType()),
    ("loss", T.StringType()),
    ("epochs_run", T.IntegerType()),
    ("best_epoch", T.IntegerType()),
    ("stopped_early", T.BooleanType()),
    ("train_users", T.LongType()),
    ("train_sessions", T.LongType()),
    ("validation_users", T.LongType()),
    ("validation_sessions", T.LongType()),
    ("monitor", T.StringType()),
    ("best_value", T.DoubleType()),
    ("best_metrics", T.StringType()),
    ("checksum", T.StringType()),
    ("config", T.StringType()),
)

USER_VECTORS = _s(
    ("user_id", T.StringType()),
    ("model", T.StringType()),
    ("dim", T.IntegerType()),
    ("vector", T.ArrayType(T.FloatType(), True)),
    ("n_sessions", T.LongType()),
)

CLUSTER_SCORES = _s(
    ("run_id", T.StringType()),
    ("model", T.StringType()),
    ("algorithm", T.StringType()),
    ("k", T.IntegerType()),
    ("seed", T.IntegerType()),
    ("silhouette", T.DoubleType()),
    ("stability", T.DoubleType()),
    ("cost", T.DoubleType()),
    ("iterations", T.IntegerType()),
    ("fit_s", T.DoubleType()),
    ("n_users", T.LongType()),
    ("smallest", T.LongType()),
    ("largest", T.LongType()),
    ("chosen_k", T.BooleanType()),
    ("chosen", T.BooleanType()),
    ("selected", T.BooleanType()),
    ("all_users", T.BooleanType()),
)

USER_CLUSTERS = _s(
    ("user_id", T.StringType()),
    ("model", T.StringType()),
    ("algorithm", T.StringType()),
    ("k", T.IntegerType()),
    ("seed", T.IntegerType()),
    ("cluster", T.IntegerType()),
    ("distance", T.DoubleType()),
    ("is_small", T.BooleanType()),
    ("selected", T.BooleanType()),
)

CLUSTER_PROFILES = _s(
    ("model", T.StringType()),
    ("algorithm", T.StringType()),
    ("k", T.IntegerType()),
    ("cluster", T.IntegerType()),
    ("is_small", T.BooleanType()),
    ("users", T.LongType()),
    ("facet", T.StringType()),
    ("key", T.StringType()),
    ("value", T.DoubleType()),
    ("share", T.DoubleType()),
    ("base_share", T.DoubleType()),
    ("lift", T.DoubleType()),
    ("rank", T.IntegerType()),
)

CLUSTER_INTERPRETATIONS = _s(
    ("run_id", T.StringType()),
    ("clustering", T.StringType()),
    ("cluster", T.IntegerType()),
    ("replicate", T.IntegerType()),
    ("backend", T.StringType()),
    ("model", T.StringType()),
    ("summary", T.StringType()),
    ("keywords", T.ArrayType(T.StringType(), True)),
    ("prompt_tokens", T.LongType()),
    ("completion_tokens", T.LongType()),
    ("cost_usd", T.DoubleType()),
    ("consistency", T.DoubleType()),
    ("keyword_overlap", T.DoubleType()),
    ("summary_similarity", T.DoubleType()),
    ("sample_sessions", T.LongType()),
    ("sample_users", T.LongType()),
    ("sample_tokens", T.LongType()),
    ("created_at", T.TimestampType()),
)

CLUSTER_COMPARISONS = _s(
    ("run_id", T.StringType()),
    ("clustering", T.StringType()),
    ("cluster_a", T.IntegerType()),
    ("cluster_b", T.IntegerType()),
    ("backend", T.StringType()),
    ("model", T.StringType()),
    ("summary", T.StringType()),
    ("evidence", T.ArrayType(T.StringType(), True)),
    ("prompt_tokens", T.LongType()),
    ("completion_tokens", T.LongType()),
    ("cost_usd", T.DoubleType()),
    ("created_at", T.TimestampType()),
)

LLM_CACHE = _s(
    ("prompt_hash", T.StringType()),
    ("model", T.StringType()),
    ("response", T.StringType()),
    ("prompt_tokens", T.LongType()),
    ("completion_tokens", T.LongType()),
    ("cost_usd", T.DoubleType()),
    ("created_at", T.TimestampType()),
)

INGESTED_FILES = _s(
    ("source", T.StringType()),
    ("file", T.StringType()),
    ("size", T.LongType()),
    ("modified", T.TimestampType()),
    ("export_date", T.DateType()),
    ("run_id", T.StringType()),
)

CHANGED_USERS = _s(
    ("source", T.StringType()),
    ("user_id", T.StringType()),
    ("run_id", T.StringType()),
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec("events", EVENTS, "one typed, de-duplicated row per input event",
                  partition_by=("source",)),
        TableSpec("rejects", REJECTS, "every input record that did not become an event, with why",
                  partition_by=("stage", "source")),
        TableSpec("sessions", SESSIONS, "per-user visit sequences cut by inactivity or session id"),
        TableSpec("ingested_files", INGESTED_FILES, "every input file ingested: size, time, export date",
                  partition_by=("source",)),
        TableSpec("changed_users", CHANGED_USERS,
                  "users whose events an ingest changed since the last sessionize"),
        TableSpec("runs", RUNS, "one row per stage run, with conserved row counts"),
        TableSpec("session_features", SESSION_FEATURES, "behavioural features of each session"),
        TableSpec("session_embeddings", SESSION_EMBEDDINGS,
                  "one vector per session and model: dense `embedding`, or sparse `indices`/`values`",
                  partition_by=("model",)),
        TableSpec("embedding_cache", EMBEDDING_CACHE,
                  "paid API embeddings by (model, text hash), so no text is ever paid for twice",
                  partition_by=("model",)),
        TableSpec("evaluation", EVALUATION, "how well each model separates and identifies users"),
        TableSpec("encoder_runs", ENCODER_RUNS,
                  "one row per trained sequence encoder: version, data, metrics"),
        TableSpec("user_vectors", USER_VECTORS, "one vector per user and model, aggregated from sessions",
                  partition_by=("model",)),
        TableSpec("cluster_scores", CLUSTER_SCORES,
                  "one row per clustering fit (model, algorithm, k, seed): silhouette, stability, cost"),
        TableSpec("user_clusters", USER_CLUSTERS,
                  "each user's cluster in the chosen clustering of every model and algorithm"),
        TableSpec("cluster_profiles", CLUSTER_PROFILES,
                  "the selected clustering's clusters in numbers: one row per (cluster, facet, key)"),
        TableSpec("cluster_interpretations", CLUSTER_INTERPRETATIONS,
                  "a sentence and three keywords per cluster, per replicate, with what they cost"),
        TableSpec("cluster_comparisons", CLUSTER_COMPARISONS,
                  "how each pair of clusters differs, grounded in the profile numbers"),
        TableSpec("llm_cache", LLM_CACHE,
                  "every LLM answer by the hash of its request, so no prompt is ever paid for twice"),
    )
}


def spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table '{name}'; known tables: {', '.join(sorted(TABLES))}") from None
