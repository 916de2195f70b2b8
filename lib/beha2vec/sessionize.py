"""Events to sessions, in Spark: a chain of small steps over one ordering per user.

The only shuffle is the first one, by user; every later window and aggregation is keyed by user
plus something finer, so Spark reuses that partitioning and only sorts within it.

Rules (docs/sessions.md): a user's events are ordered by time (then file and line, so equal
timestamps keep their input order); a new session starts when the idle time since the end of the
previous event (its time plus its measured duration) is longer than ``gap_minutes``, or when the
GA4 ``ga_session_id`` changes; sessions longer than ``max_events`` events or ``max_hours`` hours
are cut and flagged ``is_capped``. Visits are the page-view events; consecutive visits to the same
unit merge; other events (``user_engagement``, purchases...) count towards the visit before them.
"""

from __future__ import annotations

import functools
from zoneinfo import ZoneInfo

import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from beha2vec.config import SessionizeConfig
from beha2vec.sequence_text import cap_pieces, prefix, visit_piece
from beha2vec.tables import SESSIONS

US = 1_000_000
UNITS = ("auto", "domain", "path")
DOMAIN_SOURCES = ("webtracking",)


def _user_order() -> Window:
    return Window.partitionBy("user_id").orderBy("t", "src_file", "src_line", "event_id")


def _running(w: Window) -> Window:
    return w.rowsBetween(Window.unboundedPreceding, Window.currentRow)


def visit_unit(unit: str) -> Column:
    """What one visit is: the registrable domain (panel data) or the page path (one-site data)."""
    if unit not in UNITS:
        raise ValueError(f"sessionize.unit must be one of {', '.join(UNITS)}, got '{unit}'")
    by_domain = F.col("source").isin(*DOMAIN_SOURCES) if unit == "auto" else F.lit(unit == "domain")
    chosen = F.when(by_domain, F.col("domain")).otherwise(F.col("path"))
    return F.coalesce(F.nullif(chosen, F.lit("")), F.lit("(not set)"))


def mark_visits(events: DataFrame, conf: SessionizeConfig) -> DataFrame:
    """Time in µs, the visit unit, and whether each event is a visit."""
    is_visit = F.col("event_name").isin(*conf.visit_events) | (
        F.col("event_name").isNull() & F.col("url").isNotNull()
    )
    return events.select(
        "user_id", "source", "event_id", "event_ts", "url", "ga_session_id", "engagement_ms",
        "duration_s", "src_file", "src_line",
        F.unix_micros("event_ts").alias("t"),
        visit_unit(conf.unit).alias("unit"),
        is_visit.alias("is_visit"),
    )


def assign_sessions(events: DataFrame, conf: SessionizeConfig) -> DataFrame:
    """``session_no`` per user from idle gaps, session id changes and the caps."""
    w = _user_order()
    run = _running(w)
    end = F.col("t") + F.coalesce(F.col("duration_s"), F.lit(0.0)) * US
    prev_end = F.lag(end).over(w)
    prev_sid = F.lag("ga_session_id").over(w)
    gap_us = conf.gap_minutes * 60 * US
    new = (
        prev_end.isNull()
        | ((F.col("t") - prev_end) > F.lit(gap_us))
        | (F.col("ga_session_id").isNotNull() & prev_sid.isNotNull() & (F.col("ga_session_id") != prev_sid))
    )
    df = (
        events.withColumn("new_idle", new)
        .withColumn("rn", F.row_number().over(w))
        .withColumn("first_rn", F.max(F.when(F.col("new_idle"), F.col("rn"))).over(run))
        .withColumn("first_t", F.max(F.when(F.col("new_idle"), F.col("t"))).over(run))
        .withColumn("piece_events", F.floor((F.col("rn") - F.col("first_rn")) / F.lit(conf.max_events)))
        .withColumn("piece_hours",
                    F.floor((F.col("t") - F.col("first_t")) / F.lit(conf.max_hours * 3600 * US)))
    )
    cut = ~F.col("new_idle") & (
        (F.col("piece_events") != F.lag("piece_events").over(w))
        | (F.col("piece_hours") != F.lag("piece_hours").over(w))
    )
    return (
        df.withColumn("new_cap", F.coalesce(cut, F.lit(False)))
        .withColumn("session_no", F.sum((F.col("new_idle") | F.col("new_cap")).cast("long")).over(run))
        .withColumn("idle_no", F.sum(F.col("new_idle").cast("long")).over(run))
        .withColumn("gap_us", F.when(~F.col("new_idle") & ~F.col("new_cap"), F.col("t") - F.lag("t").over(w)))
    )


def number_visits(events: DataFrame, conf: SessionizeConfig) -> DataFrame:
    """``visit_no`` per user: a new visit at each page view, unless it repeats the previous unit.

    A merged repeat keeps the time since the page view before it (capped) as ``inner_us``, so a
    merged visit's dwell covers its repeats.
    """
    w = _user_order()
    before = w.rowsBetween(Window.unboundedPreceding, -1)

    def prev_visit(col: str) -> Column:
        return F.last(F.when(F.col("is_visit"), F.col(col)), ignorenulls=True).over(before)

    repeat = (prev_visit("unit") == F.col("unit")) & (prev_visit("session_no") == F.col("session_no"))
    if not conf.merge_repeats:
        repeat = F.lit(False)
    repeat = F.col("is_visit") & F.coalesce(repeat, F.lit(False))
    inner = F.least(F.col("t") - prev_visit("t"), F.lit(conf.max_dwell_s * US))
    return (
        events.withColumn("visit_no", F.sum((F.col("is_visit") & ~repeat).cast("long")).over(_running(w)))
        .withColumn("inner_us", F.when(repeat, inner))
    )


def to_visits(events: DataFrame) -> DataFrame:
    """One row per visit group (a visit and the non-visit events after it in its session)."""
    first = F.min(F.struct("t", "src_file", "src_line", "event_id"))
    return events.groupBy("user_id", "session_no", "visit_no").agg(
        F.first("source").alias("source"),
        F.max("idle_no").alias("idle_no"),
        F.max(F.col("is_visit").cast("int")).cast("boolean").alias("has_visit"),
        F.min(F.when(F.col("is_visit"), F.col("t"))).alias("visit_t"),
        F.max(F.when(F.col("is_visit"), F.col("t"))).alias("last_visit_t"),
        (F.coalesce(F.sum("inner_us"), F.lit(0)) / US).alias("inner_s"),
        F.min("t").alias("first_t"),
        F.max(F.col("t") + F.coalesce(F.col("duration_s"), F.lit(0.0)) * US).alias("last_end"),
        F.min_by("unit", F.when(F.col("is_visit"), F.col("t"))).alias("unit"),
        F.min_by("url", F.when(F.col("is_visit"), F.col("t"))).alias("url"),
        F.sum(F.when(F.col("is_visit"), F.col("duration_s"))).alias("explicit_s"),
        (F.sum("engagement_ms") / 1000.0).alias("engagement_s"),
        F.count(F.lit(1)).alias("n_events"),
        first["event_id"].alias("first_event_id"),
        first["t"].alias("first_event_t"),
        F.min("ga_session_id").alias("ga_session_id"),
        F.count("gap_us").alias("n_gaps"),
        F.sum(F.col("gap_us") / US).alias("gap_sum"),
        F.sum((F.col("gap_us") / US) ** 2).alias("gap_sq"),
        F.max(F.col("new_cap").cast("int")).alias("cap_cut"),
    )


def add_dwell(visits: DataFrame, conf: SessionizeConfig) -> DataFrame:
    """Dwell per visit: measured duration, else GA4 engagement, else time to the next visit.

    Time to the next visit is capped at ``max_dwell_s`` per page view; the last visit of a
    session with nothing measured gets only the time between its merged repeats.
    """
    w = Window.partitionBy("user_id", "session_no").orderBy("visit_t")
    next_t = F.lead("visit_t").over(w)
    to_next = F.when(next_t.isNotNull(),
                     F.least((next_t - F.col("last_visit_t")) / US, F.lit(conf.max_dwell_s)))
    dwell = F.coalesce(
        F.col("explicit_s"),
        F.when(F.col("engagement_s") > 0, F.col("engagement_s")),
        F.col("inner_s") + F.coalesce(to_next, F.lit(0.0)),
    )
    return visits.withColumn("dwell", F.when(F.col("has_visit"), dwell))


def to_sessions(visits: DataFrame) -> DataFrame:
    """Aggregate visit groups into sessions with time-ordered visit arrays."""
    v = F.when(F.col("has_visit"), F.struct("visit_t", "visit_no", "unit", "url", "dwell"))
    ordered = F.array_sort(F.collect_list(v))
    first = F.min(F.struct("first_event_t", "first_event_id"))
    sessions = visits.groupBy("user_id", "session_no").agg(
        F.first("source").alias("source"),
        F.max("idle_no").alias("idle_no"),
        F.min("first_t").alias("start_t"),
        F.greatest(F.max("last_end"), F.max(F.col("visit_t") + F.col("dwell") * US)).alias("end_t"),
        F.sum("n_events").alias("n_events"),
        F.sum(F.col("has_visit").cast("long")).alias("n_visits"),
        F.sum("engagement_s").alias("engagement_s"),
        ordered.alias("v"),
        first["first_event_id"].alias("first_event_id"),
        F.min("ga_session_id").alias("ga_session_id"),
        F.sum("n_gaps").alias("n_gaps"),
        F.sum("gap_sum").alias("gap_sum"),
        F.sum("gap_sq").alias("gap_sq"),
        F.max("cap_cut").alias("cap_cut"),
    )
    return sessions.select(
        F.md5(F.concat_ws("\u0001", "user_id", "first_event_id")).alias("session_id"),
        "user_id", "source", "session_no", "idle_no",
        F.timestamp_micros(F.col("start_t")).alias("start_ts"),
        F.timestamp_micros(F.col("end_t").cast("long")).alias("end_ts"),
        "n_events", "n_visits",
        ((F.col("end_t") - F.col("start_t")) / US).alias("duration_s"),
        F.coalesce("engagement_s", F.lit(0.0)).alias("engagement_s"),
        F.col("v.unit").alias("domains"),
        F.col("v.url").alias("urls"),
        F.transform("v.visit_t", lambda t: F.timestamp_micros(t)).alias("visit_ts"),
        F.col("v.dwell").alias("dwell_s"),
        "ga_session_id", "n_gaps", "gap_sum", "gap_sq", "cap_cut",
    )


def flag_caps_and_bots(sessions: DataFrame, conf: SessionizeConfig) -> DataFrame:
    """``is_capped`` for every piece of a cut session; ``is_bot`` for users that look automated.

    A user is bot-like if some session has at least ``bot_min_events`` events at more than
    ``bot_max_events_per_minute``, or if, over at least ``bot_min_events`` gaps, the time between
    events is nearly constant (coefficient of variation below ``bot_max_gap_cv``).
    """
    by_idle = Window.partitionBy("user_id", "idle_no")
    by_user = Window.partitionBy("user_id")
    minutes = F.greatest(F.col("duration_s") / 60.0, F.lit(1.0 / 60))
    fast = (F.col("n_events") >= conf.bot_min_events) & (
        F.col("n_events") / minutes > conf.bot_max_events_per_minute
    )
    n = F.sum("n_gaps").over(by_user)
    mean = F.sum("gap_sum").over(by_user) / n
    var = F.sum("gap_sq").over(by_user) / n - mean * mean
    cv = F.sqrt(F.greatest(var, F.lit(0.0))) / mean
    regular = (n >= conf.bot_min_events) & (mean > 0) & (cv < conf.bot_max_gap_cv)
    any_fast = F.max(fast.cast("int")).over(by_user) == 1
    reason = (
        F.when(any_fast, F.lit(f"over {conf.bot_max_events_per_minute:g} events per minute"))
        .when(regular, F.lit(f"regular timing (gap CV below {conf.bot_max_gap_cv:g})"))
    )
    return (
        sessions.withColumn("is_capped", F.max("cap_cut").over(by_idle) == 1)
        .withColumn("bot_reason", reason)
        .withColumn("is_bot", F.col("bot_reason").isNotNull())
    )


TEXT = T.StructType([
    T.StructField("text", T.StringType()),
    T.StructField("tokens", T.IntegerType()),
    T.StructField("truncated", T.BooleanType()),
])


def text_udf(conf: SessionizeConfig):
    """A pandas UDF building ``sequence_text``; the tokenizer loads once per Python worker."""
    tz_name, budget, tokenizer_name = conf.timezone, conf.text_max_tokens, conf.tokenizer

    @F.pandas_udf(TEXT)
    def sequence_text(start: pd.Series, units: pd.Series, dwell: pd.Series) -> pd.DataFrame:
        tz = ZoneInfo(tz_name)
        count = _counter(tokenizer_name)
        starts = pd.to_datetime(start).dt.tz_localize("UTC")
        rows = []
        for s, us, ds in zip(starts, units, dwell, strict=True):
            pieces = [visit_piece(u, d) for u, d in zip(us, ds, strict=True)] if us is not None else []
            rows.append(cap_pieces(prefix(s.to_pydatetime(), tz), pieces, budget, count))
        return pd.DataFrame(rows, columns=["text", "tokens", "truncated"])

    return sequence_text


@functools.cache
def _counter(tokenizer_name: str):
    """Token counts of texts as sums of per-word counts, cached per worker.

    Exact for tokenizers whose pre-tokenizer splits on whitespace (BERT WordPiece, as the bundled
    MiniLM): words are tokenized independently. Units and ``(Ns)`` dwell words repeat across
    sessions, so almost every lookup is a cache hit and the tokenizer runs once per distinct word.
    """
    from beha2vec.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name)
    words: dict[str, int] = {}

    def word(w: str) -> int:
        n = words.get(w)
        if n is None:
            if len(words) > 1_000_000:
                words.clear()
            n = words[w] = len(tokenizer.encode(w, add_special_tokens=False).ids)
        return n

    def count(texts) -> list[int]:
        return [sum(word(w) for w in t.split()) for t in texts]

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
    """The ``sessions`` table from the ``events`` table."""
    validate(conf)
    visits = (
        events.transform(mark_visits, conf)
        .transform(assign_sessions, conf)
        .transform(number_visits, conf)
        .transform(to_visits)
        .transform(add_dwell, conf)
    )
    sessions = visits.transform(to_sessions).transform(flag_caps_and_bots, conf)
    text = text_udf(conf)(F.col("start_ts"), F.col("domains"), F.col("dwell_s"))
    return (
        sessions.withColumn("_text", text)
        .withColumn("sequence_text", F.col("_text.text"))
        .withColumn("text_tokens", F.col("_text.tokens"))
        .withColumn("text_truncated", F.col("_text.truncated"))
        .select(*SESSIONS.fieldNames())
    )

