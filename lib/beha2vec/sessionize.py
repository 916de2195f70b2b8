"""Events to sessions: one shuffle by user in Spark, then one sorted pass over each user's events.

Spark hashes users into buckets and hands each bucket's events to :func:`sessions_of` as one Arrow
table (``applyInArrow``); that pure function sorts them and finds sessions, visits and dwell with
array operations. One pass replaces the chain of ten window operators and two aggregations this
stage used to be, each of which buffered or copied every row: 3.7× less time at 10M events
(docs/benchmarks.md).

Rules (docs/data-model.md): a user's events are ordered by time (then file, line and event id, so
equal timestamps keep their input order); a new session starts when the idle time since the end
of the previous event (its time plus its measured duration) is longer than ``gap_minutes``, or
when the GA4 ``ga_session_id`` changes between two events that have one; sessions longer than
``max_events`` events or ``max_hours`` hours are cut and flagged ``is_capped``. Visits are the
page-view events; consecutive visits to the same unit merge; other events (``user_engagement``,
purchases...) count towards the visit before them.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

from beha2vec.config import SessionizeConfig
from beha2vec.sequence_text import cap_pieces, prefix, visit_piece
from beha2vec.tables import SESSIONS

US = 1_000_000
UNITS = ("auto", "domain", "path")
DOMAIN_SOURCES = ("webtracking",)
ORDER = ("user_id", "t", "src_file", "src_line", "event_id")
BUCKETS_PER_PARTITION = 4  # smaller Arrow tables per call, the same tasks
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
TS = pa.timestamp("us", tz="UTC")
SESSION_ARROW = to_arrow_schema(SESSIONS, timezone="UTC")


def visit_unit(unit: str) -> Column:
    """What one visit is: the registrable domain (panel data) or the page path (one-site data)."""
    if unit not in UNITS:
        raise ValueError(f"sessionize.unit must be one of {', '.join(UNITS)}, got '{unit}'")
    by_domain = F.col("source").isin(*DOMAIN_SOURCES) if unit == "auto" else F.lit(unit == "domain")
    chosen = F.when(by_domain, F.col("domain")).otherwise(F.col("path"))
    return F.coalesce(F.nullif(chosen, F.lit("")), F.lit("(not set)"))


def mark_visits(events: DataFrame, conf: SessionizeConfig) -> DataFrame:
    """Time in µs, the visit unit, and whether each event is a visit: what :func:`sessions_of` reads."""
    is_visit = F.col("event_name").isin(*conf.visit_events) | (
        F.col("event_name").isNull() & F.col("url").isNotNull()
    )
    return events.select(
        "user_id", "source", "event_id", "url", "ga_session_id", "engagement_ms", "duration_s",
        "src_file", "src_line",
        F.unix_micros("event_ts").alias("t"),
        visit_unit(conf.unit).alias("unit"),
        F.coalesce(is_visit, F.lit(False)).alias("is_visit"),
    )


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Integer codes that order like the strings (bytewise, as Spark compares them), -1 for null,
    and the distinct strings in that order."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    order = pc.sort_indices(encoded.dictionary)
    rank = np.full(len(order) + 1, -1)  # the last one for nulls, at index -1
    rank[order.to_numpy()] = np.arange(len(order))
    return rank[encoded.indices.fill_null(-1).to_numpy()], encoded.dictionary.take(order)


def _floats(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Values as floats with nulls as 0, and where they were set."""
    return (pc.fill_null(column, 0).to_numpy().astype(np.float64),
            pc.is_valid(column).to_numpy())


def sessions_of(events: pa.Table, conf: SessionizeConfig) -> pa.Table:
    """The ``sessions`` rows of whole users' events (columns of :func:`mark_visits`).

    Pure and single-process: Spark calls it per bucket of users, tests call it directly.
    """
    ev = events.sort_by([(c, "ascending", "at_start") for c in ORDER])
    n = ev.num_rows
    if n == 0:
        return SESSION_ARROW.empty_table()
    idx = np.arange(n)
    prev = np.maximum(idx - 1, 0)
    t = ev["t"].to_numpy()
    (user, _), (unit, _), (sid, sids) = (_codes(ev[c]) for c in ("user_id", "unit", "ga_session_id"))
    duration, has_duration = _floats(ev["duration_s"])
    engagement = _floats(ev["engagement_ms"])[0]
    is_visit = ev["is_visit"].to_numpy()
    new_user = (idx == 0) | (user != user[prev])

    # Sessions: idle gaps from the end of the previous event's measured dwell, session id
    # changes, then cuts every max_events events or max_hours hours of an idle-bounded stretch.
    end = t + duration * US
    new_idle = new_user | ((t - end[prev]) > conf.gap_minutes * 60 * US) | (
        (sid >= 0) & (sid[prev] >= 0) & (sid != sid[prev]))
    idle = np.cumsum(new_idle) - 1
    idle_start = np.flatnonzero(new_idle)[idle]
    piece_events = (idx - idle_start) // conf.max_events
    piece_hours = np.floor((t - t[idle_start]) / (conf.max_hours * 3600 * US))
    cut = ~new_idle & ((piece_events != piece_events[prev]) | (piece_hours != piece_hours[prev]))
    new_session = new_idle | cut
    session = np.cumsum(new_session) - 1

    # Visit groups: a page view that does not repeat the previous page view of its session, with
    # the events after it. A group holds a visit if and only if it starts with one. A merged
    # repeat adds the time since the page view before it (capped) to the visit's dwell.
    visits = np.flatnonzero(is_visit)
    repeat, inner = np.zeros(n, dtype=bool), np.zeros(n)
    if conf.merge_repeats and len(visits) > 1:
        a, b = visits[1:], visits[:-1]
        repeat[a] = (session[a] == session[b]) & (unit[a] == unit[b])
        inner[a] = np.where(repeat[a], np.minimum(t[a] - t[b], conf.max_dwell_s * US), 0.0)
    new_visit = is_visit & ~repeat
    groups = np.flatnonzero(new_session | new_visit)
    gv = new_visit[groups]
    v = groups[gv]
    v_session, v_t = session[v], t[v]
    v_last = np.maximum.reduceat(np.where(is_visit, t, np.iinfo(np.int64).min), groups)[gv]
    v_inner = np.add.reduceat(inner, groups)[gv] / US
    explicit = np.add.reduceat(np.where(is_visit, duration, 0.0), groups)[gv]
    has_explicit = np.logical_or.reduceat(is_visit & has_duration, groups)[gv]
    v_engagement = np.add.reduceat(engagement, groups)[gv] / 1000.0
    has_next = np.r_[v_session[1:] == v_session[:-1], False]
    to_next = np.where(has_next, np.minimum((np.r_[v_t[1:], 0] - v_last) / US, conf.max_dwell_s), 0.0)
    dwell = np.where(has_explicit, explicit,
                     np.where(v_engagement > 0, v_engagement, v_inner + to_next))

    starts = np.flatnonzero(new_session)
    n_sessions = len(starts)
    n_visits = np.bincount(v_session, minlength=n_sessions)
    end_t = np.maximum.reduceat(end, starts)
    np.maximum.at(end_t, v_session, v_t + dwell * US)
    duration_s = (end_t - t[starts]) / US
    n_events = np.diff(np.r_[starts, n])
    sid_min = np.minimum.reduceat(np.where(sid >= 0, sid, len(sids)), starts)

    flags = _flags(conf, t, user, idle, cut, new_session, starts, n_events, duration_s)
    user_ids = ev["user_id"].take(starts)
    first_ids = ev["event_id"].take(starts)
    session_ids = [hashlib.md5(f"{u}\x01{e}".encode()).hexdigest()
                   for u, e in zip(user_ids.to_pylist(), first_ids.to_pylist(), strict=True)]
    offsets = pa.array(np.r_[0, np.cumsum(n_visits)], pa.int32())
    units = ev["unit"].take(v).combine_chunks()
    texts = _texts(conf, t[starts], units.to_pylist(), dwell, offsets.to_numpy())
    session_no = session - session[np.flatnonzero(new_user)[np.cumsum(new_user) - 1]] + 1
    columns = {
        "session_id": pa.array(session_ids, pa.string()),
        "user_id": user_ids,
        "source": ev["source"].take(starts),
        "session_no": pa.array(session_no[starts], pa.int64()),
        "start_ts": pa.array(t[starts], TS),
        "end_ts": pa.array(end_t.astype(np.int64), TS),
        "n_events": pa.array(n_events, pa.int64()),
        "n_visits": pa.array(n_visits, pa.int64()),
        "duration_s": pa.array(duration_s, pa.float64()),
        "engagement_s": pa.array(np.bincount(session, engagement, minlength=n_sessions) / 1000.0),
        "domains": pa.ListArray.from_arrays(offsets, units),
        "urls": pa.ListArray.from_arrays(offsets, ev["url"].take(v).combine_chunks()),
        "visit_ts": pa.ListArray.from_arrays(offsets, pa.array(v_t, TS)),
        "dwell_s": pa.ListArray.from_arrays(offsets, pa.array(dwell, pa.float64())),
        "ga_session_id": sids.take(pa.array(sid_min, mask=sid_min == len(sids))),
        "sequence_text": pa.array([x[0] for x in texts], pa.string()),
        "text_tokens": pa.array([x[1] for x in texts], pa.int32()),
        "text_truncated": pa.array([x[2] for x in texts], pa.bool_()),
        **flags,
    }
    return pa.table(columns, schema=SESSION_ARROW)


def _flags(conf: SessionizeConfig, t: np.ndarray, user: np.ndarray, idle: np.ndarray,
           cut: np.ndarray, new_session: np.ndarray, starts: np.ndarray, n_events: np.ndarray,
           duration_s: np.ndarray) -> dict[str, pa.Array]:
    """``is_capped`` for every piece of a cut session; ``is_bot`` for users that look automated.

    A user is bot-like if some session has at least ``bot_min_events`` events at more than
    ``bot_max_events_per_minute``, or if, over at least ``bot_min_events`` gaps between events
    of one session, the gap is nearly constant (coefficient of variation below ``bot_max_gap_cv``).
    """
    capped = np.bincount(idle, cut, minlength=idle[-1] + 1) > 0
    s_user = user[starts]
    k = int(user.max()) + 1
    minutes = np.maximum(duration_s / 60.0, 1.0 / 60)
    fast = (n_events >= conf.bot_min_events) & (n_events / minutes > conf.bot_max_events_per_minute)
    inside = ~new_session
    gaps = np.diff(t, prepend=t[0])[inside] / US
    g_user = user[inside]
    count = np.bincount(g_user, minlength=k)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.bincount(g_user, gaps, minlength=k) / count
        var = np.bincount(g_user, gaps * gaps, minlength=k) / count - mean**2
        regular = (count >= conf.bot_min_events) & (mean > 0) & (
            np.sqrt(np.maximum(var, 0)) / mean < conf.bot_max_gap_cv)
    any_fast = np.bincount(s_user, fast, minlength=k) > 0
    reason = np.where(any_fast, f"over {conf.bot_max_events_per_minute:g} events per minute",
                      np.where(regular, f"regular timing (gap CV below {conf.bot_max_gap_cv:g})", None))
    return {
        "is_capped": pa.array(capped[idle[starts]]),
        "is_bot": pa.array((any_fast | regular)[s_user]),
        "bot_reason": pa.array(reason[s_user], pa.string()),
    }


def _texts(conf: SessionizeConfig, start_us: np.ndarray, units: list[str], dwell: np.ndarray,
           offsets: np.ndarray) -> list[tuple[str, int, bool]]:
    """``sequence_text``, its token count and whether it was cut, per session."""
    tz, count = ZoneInfo(conf.timezone), _counter(conf.tokenizer)
    pieces = [visit_piece(u, d) for u, d in zip(units, dwell.tolist(), strict=True)]
    return [cap_pieces(prefix(EPOCH + dt.timedelta(microseconds=int(s)), tz),
                       pieces[offsets[i]:offsets[i + 1]], conf.text_max_tokens, count)
            for i, s in enumerate(start_us.tolist())]


@functools.cache
def _counter(tokenizer_name: str):
    """Token counts of texts as sums of per-word counts, cached per worker.

    Exact for tokenizers whose pre-tokenizer splits on whitespace (BERT WordPiece, as the bundled
    MiniLM): words are tokenized independently. Visit pieces (``/cart (5s)``) repeat across
    sessions, so most lookups hit the cache of whole texts; a miss adds up its words' counts, also
    cached, and the tokenizer runs once per distinct word.
    """
    from beha2vec.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name)

    @functools.lru_cache(maxsize=1_000_000)
    def word(w: str) -> int:
        return len(tokenizer.encode(w, add_special_tokens=False).ids)

    @functools.lru_cache(maxsize=1_000_000)
    def one(text: str) -> int:
        return sum(word(w) for w in text.split())

    def count(texts) -> list[int]:
        return [one(t) for t in texts]

    return count


def validate(conf: SessionizeConfig) -> None:
    """Fail before any work on settings that cannot make sense."""
    ZoneInfo(conf.timezone)
    if conf.gap_minutes <= 0 or conf.max_events < 1 or conf.max_hours <= 0:
        raise ValueError("sessionize.gap_minutes, max_events and max_hours must be positive")
    if conf.text_max_tokens < 32:
        raise ValueError("sessionize.text_max_tokens must be at least 32")
    if conf.unit not in UNITS:
        raise ValueError(f"sessionize.unit must be one of {', '.join(UNITS)}, got '{conf.unit}'")


def sessionize(events: DataFrame, conf: SessionizeConfig) -> DataFrame:
    """The ``sessions`` table from the ``events`` table: one shuffle, users kept whole per bucket."""
    validate(conf)
    partitions = int(events.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    bucket = F.pmod(F.xxhash64("user_id"), F.lit(partitions * BUCKETS_PER_PARTITION))
    marked = events.transform(mark_visits, conf).withColumn("_bucket", bucket)
    return marked.groupBy("_bucket").applyInArrow(
        lambda table: sessions_of(table.drop_columns(["_bucket"]), conf), SESSIONS)
