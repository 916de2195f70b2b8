"""Sessions into the encoder's inputs: stable token ids and per-visit time features (numpy only).

Token ids never depend on the process: a visit unit maps to a learned vocabulary id when it is
among the ``vocab_size`` most frequent training units, else to one of ``hash_buckets`` buckets by
BLAKE2b (Python's ``hash()`` is salted per process, which made the reference model's training and
embedding ids disagree). Id 0 is padding. Theme and type labels get their own small hashed space.

Each visit also carries six numbers: log dwell, log gap since the previous visit ended, and the
hour of day and weekday of the visit (sine and cosine, in the configured time zone).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from beha2vec.enrich import OFF

PAD = 0
LABEL_BUCKETS = 4096
N_TIME_FEATURES = 6
EMPTY = "(empty)"
HASH = "blake2b-64"


def stable_hash(token: str) -> int:
    """A 64-bit hash of ``token`` that is identical in every process and on every machine."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")


def path_prefixes(unit: str, depth: int) -> list[str]:
    """``/a/b/c`` -> ``['/a/', '/a/b/']`` (at most ``depth``): the sections of a site a page is in."""
    if not unit.startswith("/"):
        return []
    parts = [p for p in unit.split("/") if p]
    return ["/" + "/".join(parts[:k]) + "/" for k in range(1, min(len(parts) - 1, depth) + 1)]


@dataclass
class Tokenizer:
    """Unit -> id: learned vocabulary first (ids 1..V), then hash buckets (V+1..V+B); 0 pads."""

    hash_buckets: int
    vocab: list[str] = field(default_factory=list)
    prefix_depth: int = 0
    timezone: str = "UTC"
    max_visits: int = 64
    hash: str = HASH

    def __post_init__(self) -> None:
        if self.hash != HASH:
            raise ValueError(f"model was saved with token hash '{self.hash}'; this version knows '{HASH}'")
        self._index = {u: i + 1 for i, u in enumerate(self.vocab)}
        self._cache: dict[str, int] = {}

    @property
    def n_tokens(self) -> int:
        return 1 + len(self.vocab) + self.hash_buckets

    def token_id(self, token: str) -> int:
        cached = self._cache.get(token)
        if cached is None:
            cached = self._index.get(token) or 1 + len(self.vocab) + stable_hash(token) % self.hash_buckets
            self._cache[token] = cached
        return cached

    def unit_ids(self, unit: str) -> list[int]:
        """The unit's id followed by its path prefixes' ids (padded to ``1 + prefix_depth``)."""
        prefixes = path_prefixes(unit, self.prefix_depth)
        ids = [self.token_id(unit)] + [self.token_id("prefix:" + p) for p in prefixes]
        return ids + [PAD] * (1 + self.prefix_depth - len(ids))

    def to_dict(self) -> dict:
        return asdict(self)


def learn_vocab(unit_lists: pd.Series, size: int, min_count: int) -> list[str]:
    """The ``size`` most frequent units seen at least ``min_count`` times (ties by name: stable)."""
    if size <= 0:
        return []
    counts = Counter(u for units in unit_lists for u in units)
    ranked = sorted(((c, u) for u, c in counts.items() if c >= min_count), key=lambda cu: (-cu[0], cu[1]))
    return [u for _, u in ranked[:size]]


def label_id(label: str) -> int:
    """A theme or type label's id; a switched-off stream (``enrich.OFF``) is padding."""
    return PAD if label == OFF else 1 + stable_hash("label:" + label) % LABEL_BUCKETS


def keep_positions(n: int, max_visits: int) -> np.ndarray:
    """Which visits a long session keeps: the first and last halves of the budget, like the text."""
    if n <= max_visits:
        return np.arange(n)
    head = (max_visits + 1) // 2
    return np.concatenate([np.arange(head), np.arange(n - (max_visits - head), n)])


@dataclass
class Encoded:
    """Ragged per-visit arrays of many sessions; ``offsets[i]:offsets[i+1]`` are session i's visits."""

    tokens: np.ndarray  # int64 [visits, 1 + prefix_depth]
    themes: np.ndarray  # int64 [visits]
    types: np.ndarray  # int64 [visits]
    time: np.ndarray  # float32 [visits, N_TIME_FEATURES]
    offsets: np.ndarray  # int64 [sessions + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def pad(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Dense, zero-padded arrays of the sessions ``rows`` and the mask of real visits."""
        lengths = self.lengths()[rows]
        width = int(lengths.max())
        mask = np.arange(width)[None, :] < lengths[:, None]
        index = self.offsets[rows][:, None] + np.arange(width)[None, :]
        index = np.where(mask, index, 0)
        out = {
            "tokens": np.where(mask[..., None], self.tokens[index], PAD),
            "themes": np.where(mask, self.themes[index], PAD),
            "types": np.where(mask, self.types[index], PAD),
            "time": np.where(mask[..., None], self.time[index], 0.0).astype(np.float32),
            "mask": mask,
        }
        return out


def token_idf(encoded: Encoded, n_tokens: int) -> np.ndarray:
    """Smoothed IDF of each unit token over the sessions of ``encoded`` (scikit-learn's formula,
    ``ln((1 + n) / (1 + df)) + 1``), so units never seen in training weigh the most."""
    n = len(encoded)
    session = np.repeat(np.arange(n), encoded.lengths())
    pairs = np.unique(np.stack([session, encoded.tokens[:, 0]]), axis=1)
    df = np.bincount(pairs[1], minlength=n_tokens)
    return (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)


def time_features(visit_ts: np.ndarray, dwell: np.ndarray, first: np.ndarray, timezone: str) -> np.ndarray:
    """Six numbers per visit from flat arrays: log dwell, log gap, hour and weekday on the circle.

    ``visit_ts`` are epoch microseconds (UTC), ``first`` marks each session's first visit (gap 0).
    """
    ts = pd.DatetimeIndex(pd.to_datetime(visit_ts.astype(np.int64), unit="us", utc=True)).tz_convert(timezone)
    seconds = visit_ts / 1e6
    prev_end = np.concatenate([[0.0], seconds[:-1] + dwell[:-1]])
    gap = np.where(first, 0.0, np.clip(seconds - prev_end, 0.0, None))
    hour = (ts.hour.to_numpy() + ts.minute.to_numpy() / 60.0) * (2 * np.pi / 24)
    day = ts.weekday.to_numpy() * (2 * np.pi / 7)
    return np.stack([
        np.log1p(np.clip(dwell, 0.0, None)) / 5.0, np.log1p(gap) / 5.0,
        np.sin(hour), np.cos(hour), np.sin(day), np.cos(day),
    ], axis=1).astype(np.float32)


def encode_sessions(frame: pd.DataFrame, tokenizer: Tokenizer, labels=None) -> Encoded:
    """``domains``, ``urls``, ``visit_us``, ``dwell_s``, ``start_us`` of sessions into ``Encoded``.

    Times are epoch microseconds (``encoder.inputs.session_inputs`` selects them in Spark).
    ``labels`` is an ``enrich.Labeller`` (theme and type per visit) or None for no enrichment.
    A session without visits becomes one ``(empty)`` visit, so every session has a vector.
    """
    units_all: list[str] = []
    urls_all: list[str | None] = []
    ts_all, dwell_all, lengths = [], [], []
    for units, urls, ts, dwell, start in zip(frame["domains"], frame["urls"], frame["visit_us"],
                                             frame["dwell_s"], frame["start_us"], strict=True):
        units = list(units) if units is not None and len(units) else [EMPTY]
        n = len(units)
        keep = keep_positions(n, tokenizer.max_visits)
        urls = list(urls) if urls is not None and len(urls) == n else [None] * n
        ts = _filled(ts, n, float(start or 0))
        dwell = _filled(dwell, n, 0.0)
        units_all += [units[i] for i in keep]
        urls_all += [urls[i] for i in keep]
        ts_all.append(ts[keep])
        dwell_all.append(dwell[keep])
        lengths.append(len(keep))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.array([tokenizer.unit_ids(u) for u in units_all], dtype=np.int64).reshape(
        len(units_all), 1 + tokenizer.prefix_depth)
    if labels is None:
        themes = types = np.zeros(len(units_all), dtype=np.int64)
    else:
        theme_labels, type_labels = labels.label(units_all, urls_all)
        themes = np.array([label_id(t) for t in theme_labels], dtype=np.int64)
        types = np.array([label_id(t) for t in type_labels], dtype=np.int64)
    first = np.zeros(len(units_all), dtype=bool)
    first[offsets[:-1]] = True
    time = time_features(np.concatenate(ts_all) if ts_all else np.zeros(0),
                         np.concatenate(dwell_all) if dwell_all else np.zeros(0), first, tokenizer.timezone)
    return Encoded(tokens, themes, types, time, offsets)


def _filled(values, n: int, default: float) -> np.ndarray:
    """A float array of length ``n``: missing arrays or entries become ``default``."""
    if values is None or len(values) != n:
        return np.full(n, default)
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=default)
