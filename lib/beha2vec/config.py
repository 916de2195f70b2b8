"""Typed configuration: built-in defaults, YAML files, then ``--set`` overrides.

Every key is declared once here, with its type and default. A file or override that names an
unknown key or gives a value of the wrong type fails with the key and where it came from, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and its origin."""


@dataclass
class SparkConfig:
    master: str = "local[2]"
    app_name: str = "beha2vec"
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    rows_per_partition: int = 250_000
    arrow_batch_size: int = 10000
    log_level: str = "WARN"
    progress_bar: bool = True
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class LakeConfig:
    root: str = "lake"
    route: str = "auto"
    database: str = "beha2vec"


@dataclass
class IngestConfig:
    max_line_bytes: int = 1_000_000
    reject_raw_chars: int = 2000
    min_date: str = "1990-01-01"
    max_future_days: int = 2
    max_duration_s: float = 86400.0
    duration_cap_s: float = 300.0
    split_bytes: int = 134_217_728
    batch_rows: int = 20000
    reingest_days: int = 3


@dataclass
class SessionizeConfig:
    gap_minutes: float = 30.0
    unit: str = "auto"
    visit_events: list[str] = field(default_factory=lambda: ["page_view", "screen_view"])
    merge_repeats: bool = True
    max_events: int = 1000
    max_hours: float = 24.0
    max_dwell_s: float = 1800.0
    timezone: str = "UTC"
    text_max_tokens: int = 256
    tokenizer: str = "minilm"
    bot_min_events: int = 50
    bot_max_events_per_minute: float = 30.0
    bot_max_gap_cv: float = 0.1


@dataclass
class FeaturesConfig:
    categories_file: str = ""
    quick_bounce_s: float = 10.0
    long_view_s: float = 300.0
    rapid_transition_s: float = 5.0
    working_hours_start: int = 9
    working_hours_end: int = 17


@dataclass
class OpenAIConfig:
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    tokenizer: str = "tiktoken:cl100k_base"
    dimensions: int = 0
    max_inputs_per_request: int = 2048
    max_tokens_per_input: int = 8192
    max_tokens_per_request: int = 300_000
    concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    chunk_texts: int = 20_000
    budget_usd: float = 5.0
    price_per_million_tokens: dict[str, float] = field(default_factory=lambda: {
        "text-embedding-3-small": 0.02,
        "text-embedding-3-large": 0.13,
        "text-embedding-ada-002": 0.10,
    })


@dataclass
class EmbedConfig:
    models: list[str] = field(default_factory=lambda: ["minilm"])
    batch_size: int = 32
    arrow_batch_size: int = 2048
    torch_threads: int = 1
    device: str = "auto"
    prefixes: dict[str, str] = field(default_factory=dict)
    tfidf_min_df: int = 2
    tfidf_vocab_size: int = 20_000
    tfidf_path_segments: bool = False
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)


@dataclass
class EvaluateConfig:
    seed: int = 42
    max_users: int = 200
    max_sessions_per_user: int = 50
    min_sessions: int = 20
    test_fraction: float = 0.25
    neighbours: int = 10
    truth_users_file: str = ""
    holdout_fraction: float = 0.2
    holdout_by: str = "users"
    # lbfgs iterations of the identification classifier, each about n_sessions x dim x n_users
    # multiply-adds: 100 bounds a 200-user, 384-dim fit to about a minute on two cores
    lr_max_iter: int = 100


@dataclass
class EnrichConfig:
    """Page theme and page type labels per visit, fed to the encoder as extra token streams."""

    theme: str = "rules"
    page_type: str = "rules"
    zero_shot_model: str = "minilm"
    theme_labels: list[str] = field(default_factory=lambda: [
        "news", "shopping", "social media", "video", "search", "email", "finance", "travel",
        "sports", "education", "technology", "entertainment", "health", "government", "reference",
    ])
    type_labels: list[str] = field(default_factory=lambda: [
        "home page", "product page", "category listing", "search results", "shopping cart",
        "checkout", "article", "account or login", "help or support", "about or contact",
    ])


@dataclass
class EncoderConfig:
    registry: str = ""
    hash_buckets: int = 262_144
    vocab_size: int = 0
    min_count: int = 2
    path_prefixes: bool = False
    max_visits: int = 64
    dim: int = 64
    layers: int = 2
    heads: int = 4
    ff_dim: int = 128
    dropout: float = 0.1
    out_dim: int = 64
    loss: str = "triplet"
    margin: float = 0.2
    temperature: float = 0.1
    users_per_batch: int = 32
    sessions_per_user: int = 4
    epochs: int = 20
    steps_per_epoch: int = 0
    lr: float = 0.001
    weight_decay: float = 0.01
    patience: int = 3
    monitor: str = "recall_at_1"
    validation_fraction: float = 0.15
    max_validation_users: int = 200
    max_sessions_per_user: int = 200
    include_bots: bool = False
    seed: int = 42
    num_processes: int = 1
    device: str = "auto"
    torch_threads: int = 1
    inference_batch_size: int = 256
    weights: dict[str, float] = field(
        default_factory=lambda: {"url": 0.5, "theme": 0.3, "type": 0.2, "bag": 0.5})
    enrich: EnrichConfig = field(default_factory=EnrichConfig)


@dataclass
class UserVectorsConfig:
    """Per-user vectors from session embeddings (docs/clustering.md)."""

    models: list[str] = field(default_factory=list)
    aggregations: list[str] = field(default_factory=lambda: ["mean"])
    recency_half_life_days: float = 14.0
    min_sessions: int = 2
    include_bots: bool = False
    normalize: bool = True
    standardize: bool = False
    combine: dict[str, float] = field(default_factory=dict)
    sparse_dim: int = 256
    seed: int = 42


@dataclass
class ClusterConfig:
    """k sweep with MLlib KMeans and BisectingKMeans, k chosen by silhouette and stability."""

    models: list[str] = field(default_factory=list)
    algorithms: list[str] = field(default_factory=lambda: ["kmeans", "bisecting"])
    k_min: int = 3
    k_max: int = 20
    seeds: list[int] = field(default_factory=lambda: [42, 99, 1337, 7, 2024])
    max_iter: int = 20
    tol: float = 1e-4
    init_mode: str = "k-means||"
    init_steps: int = 2
    n_init: int = 3
    parallel_fits: int = 4
    min_stability: float = 0.6
    stability_sample: int = 20_000
    sweep_users: int = 20_000
    min_users: int = 5
    min_share: float = 0.01
    select_model: str = ""


@dataclass
class ProfileConfig:
    """What each cluster's profile lists (docs/clustering.md)."""

    top_n: int = 10
    min_support_users: int = 3


@dataclass
class LLMConfig:
    """An OpenAI-compatible chat endpoint; with no ``base_url`` everything runs offline."""

    base_url: str = ""
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    tokenizer: str = "tiktoken:o200k_base"
    temperature: float = 0.2
    max_completion_tokens: int = 400
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    concurrency: int = 4
    budget_usd: float = 1.0
    price_input_per_million: dict[str, float] = field(default_factory=lambda: {
        "gpt-4o": 2.5, "gpt-4o-mini": 0.15, "gpt-4.1": 2.0, "gpt-4.1-mini": 0.4, "gpt-4.1-nano": 0.1,
    })
    price_output_per_million: dict[str, float] = field(default_factory=lambda: {
        "gpt-4o": 10.0, "gpt-4o-mini": 0.6, "gpt-4.1": 8.0, "gpt-4.1-mini": 1.6, "gpt-4.1-nano": 0.4,
    })


@dataclass
class InterpretConfig:
    """Cluster descriptions (docs/interpretation.md): offline rules, or an LLM on sampled sessions."""

    backend: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [42, 99, 1337])
    sample_tokens: int = 20_000
    max_sessions_per_user: int = 20
    top_n: int = 5
    similarity_model: str = "minilm"
    offline_sample_fraction: float = 0.8
    compare_max_pairs: int = 45


@dataclass
class AskConfig:
    """``beha2vec ask``: bounds on the SQL tool and the conversation."""

    max_rows: int = 50
    query_timeout_s: float = 60.0
    max_tool_calls: int = 5
    history_tokens: int = 6000


@dataclass
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sessionize: SessionizeConfig = field(default_factory=SessionizeConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    user_vectors: UserVectorsConfig = field(default_factory=UserVectorsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    interpret: InterpretConfig = field(default_factory=InterpretConfig)
    ask: AskConfig = field(default_factory=AskConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Short stable hash of the effective configuration, recorded with every run."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# mappings that name a set of things (the models to combine): a later file or --set replaces them
REPLACED_MAPPINGS = {"user_vectors.combine"}

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _check_scalar(value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise TypeError
    if not isinstance(value, kind):
        raise TypeError
    return value


def _coerce(value: Any, annotation: Any) -> Any:
    """Return ``value`` if it fits ``annotation`` (ints widen to floats), else raise TypeError."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise TypeError
        return [_check_scalar(v, item) for v in value]
    if origin is dict:
        _, item = typing.get_args(annotation)
        if not isinstance(value, dict):
            raise TypeError
        return {str(k): str(v) if item is str else _check_scalar(v, item) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return None if value is None else _coerce(value, args[0])
    return _check_scalar(value, annotation)


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is list:
        return f"a list of {_describe(typing.get_args(annotation)[0])}s"
    if origin is dict:
        return "a mapping"
    return _TYPE_NAMES.get(annotation, str(annotation))


def _apply(section: Any, values: dict[str, Any], prefix: str, origin: str) -> None:
    """Set ``values`` on ``section``; mappings (prices, prefixes, extra Spark settings) merge, except
    those in ``REPLACED_MAPPINGS``."""
    hints = typing.get_type_hints(type(section))
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            close = difflib.get_close_matches(key, list(hints), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{origin}: unknown key '{dotted}'{hint}")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: '{dotted}' must be a mapping of settings")
            _apply(current, value, f"{dotted}.", origin)
            continue
        if isinstance(current, dict) and isinstance(value, dict) and dotted not in REPLACED_MAPPINGS:
            value = {**current, **value}
        try:
            setattr(section, key, _coerce(value, hints[key]))
        except TypeError:
            raise ConfigError(
                f"{origin}: '{dotted}' must be {_describe(hints[key])}, "
                f"got {value!r} ({type(value).__name__})"
            ) from None


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(
    files: list[str | Path] | None = None,
    overrides: list[str] | None = None,
    lake_root: str | None = None,
) -> Config:
    """Build the effective configuration: defaults < files (in order) < ``--set`` < ``--lake``."""
    config = Config()
    for path in files or []:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"configuration file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        _apply(config, data, "", str(path))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        value = yaml.safe_load(raw) if raw.strip() else ""
        _apply(config, _nest(key.strip(), value), "", f"--set {key.strip()}")
    if lake_root:
        config.lake.root = lake_root
    return config
