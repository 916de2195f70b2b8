"""Stage runners: read tables, call the library, write tables, record the run.

These are the only functions that combine I/O with logic; the CLI and ``jobs/`` call them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from contextlib import ExitStack, contextmanager

from pyspark import StorageLevel
from pyspark.sql import functions as F

from beha2vec import embed as embed_lib
from beha2vec import ingest as ingest_lib
from beha2vec.context import Context
from beha2vec.runs import recorded
from beha2vec.sessionize import sessionize as sessionize_events
from beha2vec.sessionize import validate as validate_sessionize
from beha2vec.spark import release, scaled_shuffle, setting

log = logging.getLogger(__name__)
# ingest's cached frames are as big as its input: on disk they cannot run the heap out, as the
# columnar cache in memory did at 10M events with a 4g driver (docs/benchmarks.md)
INPUT_SIZED = StorageLevel.DISK_ONLY


def ingest(ctx: Context, source: str, paths: list[str], incremental: bool = False) -> dict:
    """Raw files of one source into ``events`` (that source's partition) and ``rejects``.

    ``incremental`` reads only new, changed and recently exported files (:mod:`beha2vec.incremental`)
    and keeps the events of every other file; either way the users whose events changed are added
    to ``changed_users`` for sessionize, and ``ingested_files`` records what was read.
    """
    from beha2vec import incremental as inc

    conf = ctx.config.ingest
    with recorded(ctx.lake, ctx.config, "ingest") as run:
        if incremental and source not in inc.INCREMENTAL_SOURCES:
            raise ValueError(f"incremental ingest is for {', '.join(inc.INCREMENTAL_SOURCES)} exports; "
                             f"ingest {source} in full (web-tracking durations and msnbc user numbers "
                             "span files)")
        files = [inc.file_state(p) for p in ingest_lib.resolve_inputs(source, paths)]
        ledger = _ledger(ctx, source)
        keep_unread = incremental and len(ledger) > 0  # files not read again keep their events
        chosen = inc.plan(files, ledger, conf.reingest_days) if keep_unread else files
        run.details.update(source=source, inputs=paths, incremental=incremental, files=len(files),
                           files_read=len(chosen))
        if not chosen:
            return run.details | {"rows_in": 0, "rows_out": 0, "rows_rejected": 0}
        read = [f.path for f in chosen]
        typed = ingest_lib.validate(ingest_lib.read_candidates(ctx.spark, source, read, conf), conf,
                                    dt.datetime.now(dt.UTC)).persist(INPUT_SIZED)
        repeated = fresh = None
        try:
            counts = {r["ok"]: r["n"] for r in typed.groupBy(F.col("reason").isNull().alias("ok"))
                      .agg(F.count(F.lit(1)).alias("n")).collect()}
            rows = counts.get(True, 0) + counts.get(False, 0)
            with scaled_shuffle(ctx.spark, rows, ctx.config.spark) as partitions:
                run.details["shuffle_partitions"] = partitions
                valid = typed.where(F.col("reason").isNull()).drop("raw")
                repeated = ingest_lib.repeated_ids(valid).persist(INPUT_SIZED)  # input-sized at worst
                run.details["repeated_ids"] = n_repeated = repeated.count()
                broadcast = n_repeated <= ingest_lib.BROADCAST_REPEATED
                collapsed = ingest_lib.collapse_duplicates(valid, repeated, broadcast)
                # cached: read by changed_users, events and (incrementally) rejects, so URL parts are
                # computed once; coalesced: no shuffle precedes it, so it would keep a file per input split
                fresh = ingest_lib.to_events(collapsed, conf, derive_durations=source == "webtracking")
                new = fresh = fresh.coalesce(partitions).persist(INPUT_SIZED)
                rejects = ingest_lib.to_rejects(typed, collapsed, run.run_id, conf, broadcast)
                old = (ctx.lake.read("events").where(F.col("source") == source)
                       if ctx.lake.exists("events") else None)
                if old is None or not keep_unread:
                    changed = new.select("user_id") if old is None else new.select("user_id").unionByName(
                        old.select("user_id"))
                    kept_events = kept_rejects = 0
                else:
                    new, rejects, changed, kept_events, kept_rejects = _keep_unread(
                        ctx, source, read, old, new, rejects, run.run_id)
                _record_changed_users(ctx, changed, source, run.run_id)
                events = ctx.lake.write(new, "events", replace={"source": source})
                written = ctx.lake.write(rejects, "rejects", replace={"stage": "ingest", "source": source})
        finally:
            release(typed, repeated, fresh)
        _record_files(ctx, source, chosen, ledger, run.run_id, keep_unread=keep_unread)
        run.rows_in = rows
        run.rows_out = events.rows - kept_events
        run.rows_rejected = written.rows - kept_rejects
        run.details.update(invalid=counts.get(False, 0), events_kept=kept_events,
                           duplicates=run.rows_rejected - counts.get(False, 0),
                           events_version=events.version, rejects_version=written.version)
    return run.details | {"rows_in": run.rows_in, "rows_out": run.rows_out,
                          "rows_rejected": run.rows_rejected}


def _keep_unread(ctx: Context, source: str, read: list[str], old, new, rejects, run_id: str):
    """An incremental ingest's tables: the events and rejects of the files not read again, plus the
    new ones; events seen before in a kept file become rejects. Returns the new events and rejects
    tables of ``source``, the users whose events change, and how many rows were kept."""
    kept = old.where(~_from_files(F.col("src_file"), read))
    earlier = ctx.lake.read("rejects").where(
        (F.col("stage") == "ingest") & (F.col("source") == source) & ~_from_files(F.col("file"), read))
    rejects = rejects.unionByName(ingest_lib.seen_before(new, kept, run_id, ctx.config.ingest))
    new = new.join(kept.select("event_id"), "event_id", "left_anti")
    replaced = old.where(_from_files(F.col("src_file"), read))
    changed = new.select("user_id").unionByName(replaced.select("user_id"))
    return (kept.unionByName(new), earlier.unionByName(rejects.select(*earlier.columns)), changed,
            kept.count(), earlier.count())


def _from_files(column, paths: list[str]):
    """Whether a provenance column names one of ``paths`` (parquet gives URL-encoded ``file:`` URIs)."""
    local = F.when(column.startswith("file:"), F.try_url_decode(F.regexp_replace(column, "^file:(//)?", "")))
    return F.coalesce(local, column).isin(paths)


def _ledger(ctx: Context, source: str):
    import pandas as pd

    if not ctx.lake.exists("ingested_files"):
        return pd.DataFrame(columns=["file", "size", "modified", "export_date"])
    return ctx.lake.read("ingested_files").where(F.col("source") == source).toPandas()


def _record_files(ctx: Context, source: str, chosen: list, ledger, run_id: str, keep_unread: bool) -> None:
    """The ledger of this source: the files read now, and (incrementally) those kept from before."""
    import pandas as pd

    from beha2vec.tables import INGESTED_FILES

    rows = [(source, f.path, f.size, f.modified, f.export_date, run_id) for f in chosen]
    if keep_unread:
        read = {f.path for f in chosen}
        rows += [(source, r.file, int(r.size), r.modified.to_pydatetime().replace(tzinfo=dt.UTC),
                  None if pd.isna(r.export_date) else r.export_date, r.run_id)
                 for r in ledger.itertuples() if r.file not in read]
    ctx.lake.write(ctx.spark.createDataFrame(rows, INGESTED_FILES), "ingested_files",
                   replace={"source": source})


def _record_changed_users(ctx: Context, users, source: str, run_id: str) -> None:
    """Add the users whose events change to ``changed_users``, for the next sessionize."""
    rows = users.distinct().select(F.lit(source).alias("source"), "user_id", F.lit(run_id).alias("run_id"))
    ctx.lake.write(rows, "changed_users", mode="append")


def sessionize(ctx: Context, incremental: bool = False) -> dict:
    """``events`` into ``sessions``; every event lands in exactly one session.

    ``incremental`` recomputes the sessions of the users in ``changed_users`` only (all their
    sessions, so numbering and gaps across days stay those of a full run) and keeps everyone
    else's; either way ``changed_users`` is emptied afterwards.
    """
    from beha2vec.tables import CHANGED_USERS

    conf = ctx.config.sessionize
    validate_sessionize(conf)
    with recorded(ctx.lake, ctx.config, "sessionize") as run:
        events = ctx.lake.read("events")
        changed = None
        if incremental and ctx.lake.exists("changed_users") and ctx.lake.exists("sessions"):
            changed = (ctx.lake.read("changed_users").select("user_id").distinct()
                       .persist(StorageLevel.MEMORY_AND_DISK))
            events = events.join(changed, "user_id", "left_semi")
            run.details["users_recomputed"] = changed.count()
        try:
            run.rows_in = events.count()
            with scaled_shuffle(ctx.spark, run.rows_in, ctx.config.spark) as partitions:
                run.details["shuffle_partitions"] = partitions
                sessions = sessionize_events(events, conf)
                if changed is not None:
                    kept = ctx.lake.read("sessions").join(changed, "user_id", "left_anti")
                    sessions = kept.unionByName(sessions)
                written = ctx.lake.write(sessions, "sessions")
            scope = ctx.lake.read("sessions")
            if changed is not None:
                scope = scope.join(changed, "user_id", "left_semi")
            stats = scope.agg(
                F.sum("n_events").alias("events"), F.count(F.lit(1)).alias("sessions"),
                F.sum(F.col("is_bot").cast("long")).alias("bot_sessions"),
                F.sum(F.col("is_capped").cast("long")).alias("capped_sessions"),
                F.sum(F.col("text_truncated").cast("long")).alias("truncated_texts"),
            ).first()
        finally:
            release(changed)
        ctx.lake.write(ctx.spark.createDataFrame([], CHANGED_USERS), "changed_users")
        run.rows_out = int(stats["events"] or 0)
        run.details.update({k: int(stats[k] or 0) for k in
                            ("sessions", "bot_sessions", "capped_sessions", "truncated_texts")},
                           sessions_version=written.version, incremental=changed is not None)
    return run.details | {"rows_in": run.rows_in, "rows_out": run.rows_out}


def _arrow_batch(spark, rows: int):
    """Rows per Arrow batch for the pandas UDFs of one stage, restored afterwards. Spark reads the
    setting when a plan runs, not when it is built, so the stage's actions must run inside it."""
    return setting(spark, "spark.sql.execution.arrow.maxRecordsPerBatch", str(rows))


def _encoder_name(model: str, version: int) -> str:
    """``encoder`` (the latest version, replaced by each run) or a pinned ``encoder:v<N>``."""
    return "encoder" if model == "encoder" else f"encoder:v{version}"


def _persisted(cache: ExitStack, frame):
    """``frame`` persisted until ``cache`` closes, however the work using it ends."""
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    cache.callback(release, frame)
    return frame


def _model_rows(ctx: Context, model: str, sessions, details: dict, cache: ExitStack):
    """``session_embeddings`` rows of one model; adds what was learned about the work to ``details``.
    Frames it caches stay cached until ``cache`` closes (after the caller's write)."""
    conf = ctx.config.embed
    kind = embed_lib.kind_of(model)
    if kind == "sentence-transformers":
        texts = _persisted(cache, embed_lib.distinct_texts(sessions))
        details["distinct_texts"] = texts.count()
        spread = embed_lib.over_every_core(texts, details["distinct_texts"], conf.arrow_batch_size)
        vectors = _persisted(cache, embed_lib.embed_texts_st(model, spread, conf))
        loads = vectors.withColumn("task", F.spark_partition_id()).groupBy("worker_pid").agg(
            F.max("worker_loads").alias("loads"), F.countDistinct("task").alias("tasks")).collect()
        details.update(tasks=sum(r["tasks"] for r in loads),
                       model_loads_per_worker={str(r["worker_pid"]): r["loads"] for r in loads})
        return embed_lib.join_back(sessions, vectors.drop("worker_pid", "worker_loads"), model)
    if kind == "openai":
        from beha2vec.embed_openai import embed_texts_openai

        def announce(estimate) -> None:
            print(f"embed {model}: {estimate}")
            details["estimate"] = dataclasses.asdict(estimate)

        texts = _persisted(cache, embed_lib.distinct_texts(sessions))
        details["distinct_texts"] = texts.count()
        vectors = embed_texts_openai(ctx, model, texts, on_estimate=announce)
        return embed_lib.join_back(sessions, vectors, model)
    if kind == "encoder":
        from beha2vec.encoder.apply import embed_sessions

        enc = ctx.config.encoder
        return embed_sessions(sessions, details["model_path"], _encoder_name(model, details["version"]),
                              enc.device, enc.torch_threads or 1, enc.inference_batch_size)
    if kind == "tfidf":
        documents = embed_lib.visit_tokens(sessions, conf.tfidf_path_segments)
        fitted = embed_lib.fit_tfidf(documents, conf)
        path = f"{ctx.lake.root}/_models/tfidf"
        fitted.write().overwrite().save(path)
        details.update(vocabulary=len(fitted.stages[0].vocabulary), model_path=path)
        return embed_lib.transform_tfidf(fitted, documents)
    from beha2vec.features import standardize

    return embed_lib.features_rows(standardize(ctx.lake.read("session_features")))


def _identity(ctx: Context, model: str, details: dict) -> str | None:
    """What a model's vector of one session depends on besides the session, for its fingerprint;
    None for models fitted on all sessions (``tfidf``, standardised ``features``), which are
    always recomputed. The encoder's is its resolved version and weights (``details``)."""
    conf = ctx.config.embed
    kind = embed_lib.kind_of(model)
    if kind in ("tfidf", "features"):
        return None
    if kind == "encoder":
        from pathlib import Path

        from beha2vec.encoder.registry import digest

        return f"encoder v{details['version']} {digest(Path(details['model_path']))}"
    settings = {"prefix": embed_lib.text_prefix(model, conf)}
    if kind == "openai":
        from urllib.parse import urlsplit

        url = urlsplit(conf.openai.base_url)  # host and path only: credentials never reach a table
        settings.update(dimensions=conf.openai.dimensions, tokens=conf.openai.max_tokens_per_input,
                        tokenizer=conf.openai.tokenizer, endpoint=f"{url.hostname}:{url.port}{url.path}")
    return f"{model} {json.dumps(settings, sort_keys=True)}"


@contextmanager
def _per_session(ctx: Context, table: str, sessions, identity: str | None, model: str | None,
                 incremental: bool, details: dict):
    """``(sessions to compute, complete)`` for a per-session table. ``complete(rows)`` gives the
    computed rows their fingerprints (null without ``identity``) and, with ``incremental``, adds
    the rows kept because their session and computation are unchanged (``details['reused']``).
    The frames cached for this are released on exit."""
    from beha2vec.incremental import fingerprints, split

    if identity is None:
        yield sessions, lambda rows: rows.withColumn("fingerprint", F.lit(None).cast("string"))
        return
    current = fingerprints(sessions, identity)
    if not incremental or not ctx.lake.exists(table):
        if incremental:
            details["reused"] = 0
        yield sessions, lambda rows: rows.join(current, "session_id")
        return
    previous = ctx.lake.read(table)
    if model is not None:
        previous = previous.where(F.col("model") == model)
    current = current.persist(StorageLevel.MEMORY_AND_DISK)  # read by the split and by complete
    kept, todo = split(previous, sessions, current)
    kept = kept.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        details["reused"] = kept.count()
        yield todo, lambda rows: kept.unionByName(rows.join(current, "session_id"))
    finally:
        release(kept, current)


def embed(ctx: Context, models: list[str] | None = None, incremental: bool = False) -> list[dict]:
    """``sessions`` into ``session_embeddings``, one partition per model, replaced per model.

    ``incremental`` embeds only the sessions whose fingerprint changed (:mod:`beha2vec.incremental`)
    and keeps the other vectors of the model; models fitted on all sessions are recomputed.
    """
    reports = []
    for model in models or ctx.config.embed.models:
        with recorded(ctx.lake, ctx.config, "embed") as run:
            run.details["model"] = model
            sessions = ctx.lake.read("sessions")
            name = model
            if embed_lib.kind_of(model) == "encoder":
                from beha2vec.encoder.registry import registry_root, resolve

                root = registry_root(ctx.config.encoder.registry, ctx.lake.root)
                version, path = resolve(root, model.partition(":")[2] or None)
                run.details.update(version=version, model_path=str(path))
                name = _encoder_name(model, version)
            identity = _identity(ctx, model, run.details)
            with (_per_session(ctx, "session_embeddings", sessions, identity, name, incremental,
                               run.details) as (todo, complete), ExitStack() as cache,
                  _arrow_batch(ctx.spark, ctx.config.embed.arrow_batch_size)):  # until the write has run
                rows = _model_rows(ctx, model, todo, run.details, cache)
                written = ctx.lake.write(complete(rows), "session_embeddings", replace={"model": name})
            run.rows_in = sessions.count()
            run.rows_out = written.rows
            run.rows_rejected = 0
            run.details["embedded"] = written.rows - run.details.get("reused", 0)
        reports.append(run.details | {"rows_in": run.rows_in, "rows_out": run.rows_out})
    return reports


def features(ctx: Context, incremental: bool = False) -> dict:
    """``sessions`` into ``session_features``: one row of behavioural features per session.

    ``incremental`` computes only the sessions whose fingerprint changed and keeps the other rows.
    """
    from beha2vec import features as features_lib

    conf = ctx.config.features
    with recorded(ctx.lake, ctx.config, "features") as run:
        sessions = ctx.lake.read("sessions")
        categories = features_lib.load_categories(conf.categories_file)
        timezone = ctx.config.sessionize.timezone
        identity = json.dumps({"features": dataclasses.asdict(conf), "categories": categories,
                               "timezone": timezone}, sort_keys=True)
        with _per_session(ctx, "session_features", sessions, identity, None, incremental,
                          run.details) as (todo, complete):
            rows = features_lib.session_features(todo, conf, categories, timezone)
            written = ctx.lake.write(complete(rows), "session_features")
        run.rows_in = sessions.count()
        run.rows_out = written.rows
        run.details.update(features=len(features_lib.FEATURE_COLUMNS), categories=len(categories),
                           computed=written.rows - run.details.get("reused", 0))
    return run.details | {"rows_in": run.rows_in, "rows_out": run.rows_out}


def train_encoder(ctx: Context, resume: str | None = None) -> dict:
    """``sessions`` of train and validation users into a new encoder version and an ``encoder_runs`` row."""
    from beha2vec import evaluate as evaluate_lib
    from beha2vec.encoder import driver, registry
    from beha2vec.encoder.train import check
    from beha2vec.tables import ENCODER_RUNS

    conf = ctx.config.encoder
    check(conf)
    evaluate_lib.validate(ctx.config.evaluate)  # validation epochs compute evaluate's metrics
    root = registry.registry_root(conf.registry, ctx.lake.root)
    with recorded(ctx.lake, ctx.config, "train-encoder") as run:
        if resume:
            version, run_dir = registry.resolve_incomplete(root, resume)
        else:
            version, run_dir = registry.new_version(root)
        frame = driver.training_sessions(ctx.lake.read("sessions"), ctx.config).toPandas()
        prepared, result = driver.train(frame, ctx.config, run_dir, resume=bool(resume))
        counts = driver.summary_counts(prepared)
        registry.save_model(run_dir, result["weights"], {k: v for k, v in result.items() if k != "weights"})
        row = (run.run_id, version, str(run_dir), run.started_at, dt.datetime.now(dt.UTC), result["device"],
               conf.num_processes, conf.loss, result["epochs_run"], result["best_epoch"],
               result["stopped_early"],
               counts["train_users"], counts["train_sessions"], counts["validation_users"],
               counts["validation_sessions"], conf.monitor, float(result["best"][conf.monitor]),
               json.dumps(result["best"], sort_keys=True), result["checksum"],
               json.dumps(dataclasses.asdict(conf), sort_keys=True))
        ctx.lake.write(ctx.spark.createDataFrame([row], ENCODER_RUNS), "encoder_runs", mode="append")
        run.rows_in = run.rows_out = len(frame)
        run.details.update(version=version, path=str(run_dir), **counts, best_epoch=result["best_epoch"],
                           best=result["best"], device=result["device"])
    return run.details | {"rows_in": run.rows_in}


def evaluate(ctx: Context):
    """``session_embeddings`` into ``evaluation``; returns the comparison table (one row per model)."""
    import pandas as pd

    from beha2vec import evaluate as evaluate_lib
    from beha2vec.tables import EVALUATION

    conf = ctx.config.evaluate
    with recorded(ctx.lake, ctx.config, "evaluate") as run:
        truth = pd.read_csv(conf.truth_users_file, dtype=str) if conf.truth_users_file else None
        results = evaluate_lib.evaluate_models(ctx.lake.read("session_embeddings"), conf, truth,
                                               ctx.lake.read("sessions"))
        if truth is not None and ctx.lake.exists("user_clusters"):
            recovery = evaluate_lib.persona_recovery(ctx.lake.read("user_clusters"),
                                                     ctx.spark.createDataFrame(truth[["user_id", "persona"]]))
            results = pd.concat([results, recovery], ignore_index=True)
        results.insert(0, "run_id", run.run_id)
        frame = ctx.spark.createDataFrame(results[EVALUATION.fieldNames()], EVALUATION)
        written = ctx.lake.write(frame, "evaluation")
        run.rows_in = run.rows_out = written.rows
        run.details.update(models=sorted(results["model"].unique().tolist()))
    return evaluate_lib.comparison_table(results)


def user_vectors(ctx: Context) -> dict:
    """``session_embeddings`` into ``user_vectors``; users left out land in ``rejects`` with why."""
    from beha2vec import user_vectors as uv
    from beha2vec.config import ConfigError

    conf = ctx.config.user_vectors
    with recorded(ctx.lake, ctx.config, "user-vectors") as run:
        embeddings = ctx.lake.read("session_embeddings")
        present = sorted(r["model"] for r in embeddings.select("model").distinct().collect())
        models = conf.models or present
        missing = sorted((set(models) | set(conf.combine)) - set(present))
        if missing:
            raise ConfigError(f"user_vectors: no session embeddings of model(s) {', '.join(missing)} "
                              f"(embedded: {', '.join(present) or 'none'}); run embed first")
        wanted = sorted(set(models) | set(conf.combine))
        vectors, rejected = uv.user_vectors(embeddings, ctx.lake.read("sessions"), conf, wanted)
        run.rows_in = (embeddings.where(F.col("model").isin(*wanted))
                       .select("model", "user_id").distinct().count())
        written = ctx.lake.write(vectors, "user_vectors")
        rejects = ctx.lake.write(
            rejected.select(F.lit(run.run_id).alias("run_id"), F.lit("user-vectors").alias("stage"),
                            F.col("model").alias("source"),
                            *(F.lit(None).alias(c) for c in ("file", "line", "offset")),
                            F.col("user_id").alias("raw"), "reason"),
            "rejects", replace={"stage": "user-vectors"})
        per_model = {r["model"]: r["n"] for r in ctx.lake.read("user_vectors").groupBy("model")
                     .agg(F.count(F.lit(1)).alias("n")).collect()}
        run.rows_out = sum(n for m, n in per_model.items() if m != uv.COMBINED)
        run.rows_rejected = rejects.rows
        run.details.update(users_per_model=per_model, aggregations=conf.aggregations,
                           user_vectors_version=written.version)
    return run.details | {"rows_in": run.rows_in, "rows_out": run.rows_out,
                          "rows_rejected": run.rows_rejected}


def cluster(ctx: Context) -> dict:
    """``user_vectors`` into ``cluster_scores`` and ``user_clusters`` (see :mod:`beha2vec.cluster`)."""
    import pandas as pd

    from beha2vec import cluster as cluster_lib
    from beha2vec.config import ConfigError
    from beha2vec.tables import CLUSTER_SCORES
    from beha2vec.user_vectors import COMBINED

    conf = ctx.config.cluster
    cluster_lib.validate(conf)
    with recorded(ctx.lake, ctx.config, "cluster") as run:
        vectors = ctx.lake.read("user_vectors")
        present = sorted(r["model"] for r in vectors.select("model").distinct().collect())
        models = conf.models or present
        missing = sorted(set(models) - set(present))
        if missing:
            raise ConfigError(f"cluster.models: no user vectors of {', '.join(missing)} "
                              f"(present: {', '.join(present)}); run user-vectors first")
        selected = cluster_lib.selected_model(models, conf, COMBINED)
        scores, parts = [], []
        for name in models:
            rows = vectors.where(F.col("model") == name).select("user_id", "vector")
            model_scores, chosen = cluster_lib.sweep(rows, conf, name)
            best = max(chosen.values(), key=lambda f: f.silhouette).algorithm
            model_scores["selected"] = (name == selected) & model_scores["chosen"] & (
                model_scores["algorithm"] == best)
            scores.append(model_scores)
            for algorithm, fit in chosen.items():
                parts.append(cluster_lib.assignments(rows, name, fit, conf).withColumn(
                    "selected", F.lit(name == selected and algorithm == best)))
        table = pd.concat(scores, ignore_index=True)
        table.insert(0, "run_id", run.run_id)
        ctx.lake.write(ctx.spark.createDataFrame(table[CLUSTER_SCORES.fieldNames()], CLUSTER_SCORES),
                       "cluster_scores")
        union = parts[0]
        for part in parts[1:]:
            union = union.unionByName(part)
        written = ctx.lake.write(union, "user_clusters")
        chosen_rows = table[table["chosen"]]
        run.rows_in = int(sum(chosen_rows["n_users"]))
        run.rows_out = written.rows
        run.details.update(
            fits=len(table), selected=table.loc[table["selected"], ["model", "algorithm", "k"]]
            .to_dict("records"),
            chosen=chosen_rows[["model", "algorithm", "k", "seed", "silhouette", "stability"]]
            .to_dict("records"))
    return run.details | {"rows_in": run.rows_in, "rows_out": run.rows_out}


def profile(ctx: Context) -> dict:
    """``user_clusters`` (the selected clustering), ``sessions`` and ``events`` into ``cluster_profiles``."""
    from beha2vec.profile import cluster_profiles

    with recorded(ctx.lake, ctx.config, "profile") as run:
        clusters = ctx.lake.read("user_clusters").where(F.col("selected"))
        rows = cluster_profiles(clusters, ctx.lake.read("sessions"), ctx.lake.read("events"),
                                ctx.config.profile, ctx.config.sessionize.timezone)
        written = ctx.lake.write(rows, "cluster_profiles")
        baseline_users = (F.col("cluster") < 0) & (F.col("facet") == "summary") & (F.col("key") == "users")
        stats = ctx.lake.read("cluster_profiles").agg(
            F.countDistinct(F.when(F.col("cluster") >= 0, F.col("cluster"))).alias("clusters"),
            F.countDistinct(F.when(F.col("is_small"), F.col("cluster"))).alias("small"),
            F.max(F.when(baseline_users, F.col("value"))).alias("users")).first()
        run.rows_in = clusters.count()
        run.rows_out = int(stats["users"] or 0)  # the users the profiles describe, counted by profile
        run.details.update(rows=written.rows, clusters=int(stats["clusters"]), small=int(stats["small"]))
    return run.details | {"rows_in": run.rows_in}


def interpret_backend(ctx: Context) -> str:
    """``offline`` or ``llm``: ``interpret.backend``; ``auto`` is llm when ``llm.base_url`` is set."""
    from beha2vec.config import ConfigError

    backend = ctx.config.interpret.backend
    if backend not in ("auto", "offline", "llm"):
        raise ConfigError(f"interpret.backend must be auto, offline or llm, got '{backend}'")
    if backend == "llm" and not ctx.config.llm.base_url.strip():
        raise ConfigError("interpret.backend=llm needs llm.base_url (an OpenAI-compatible endpoint)")
    return "llm" if backend == "llm" or (backend == "auto" and ctx.config.llm.base_url.strip()) else "offline"


def _clustering_of(profiles) -> str:
    first = profiles.iloc[0] if len(profiles) else None
    return f"{first['model']}/{first['algorithm']}/k={first['k']}" if first is not None else ""


def interpret(ctx: Context) -> dict:
    """``cluster_profiles`` (and, with an LLM, sampled ``sessions``) into ``cluster_interpretations``:
    one sentence and three keywords per cluster that is not small, per replicate."""
    from beha2vec.tables import CLUSTER_INTERPRETATIONS

    backend = interpret_backend(ctx)
    with recorded(ctx.lake, ctx.config, "interpret") as run:
        profiles = ctx.lake.read("cluster_profiles").toPandas()
        large = (profiles["cluster"] >= 0) & ~profiles["is_small"].fillna(False).astype(bool)
        clusters = sorted(int(c) for c in profiles.loc[large, "cluster"].unique())
        clustering = _clustering_of(profiles)
        rows = (_interpret_llm(ctx, profiles, clusters, run.details) if backend == "llm"
                else _interpret_offline(ctx, profiles))
        now = dt.datetime.now(dt.UTC)
        table = [(run.run_id, clustering, *row, now) for row in rows]
        written = ctx.lake.write(ctx.spark.createDataFrame(table, CLUSTER_INTERPRETATIONS),
                                 "cluster_interpretations")
        run.rows_in = len(clusters)
        run.rows_out = len({row[0] for row in rows})
        run.details.update(clustering=clustering, backend=backend, rows=written.rows)
    return run.details | {"rows_in": run.rows_in, "rows_out": run.rows_out,
                          "interpretations": [(r[0], r[1], r[4], list(r[5]), r[9]) for r in rows]}


def _interpret_offline(ctx: Context, profiles) -> list[tuple]:
    """Replicate 0 from the profile of all users; one more per further seed of ``interpret.seeds``,
    from the profile of a seeded ``interpret.offline_sample_fraction`` of each cluster's users, so
    the consistency says how much the words depend on which users happen to be in the data."""
    from beha2vec.embed import load_sentence_transformer
    from beha2vec.features import load_categories
    from beha2vec.interpret_llm import consistency
    from beha2vec.interpret_offline import OFFLINE_MODEL, interpret_all
    from beha2vec.profile import cluster_profiles

    conf = ctx.config.interpret
    categories = load_categories(ctx.config.features.categories_file)
    replicates = [interpret_all(profiles, categories)]
    if len(conf.seeds) > 1 and replicates[0]:
        members = ctx.lake.read("user_clusters").where(F.col("selected"))
        sessions, events = ctx.lake.read("sessions"), ctx.lake.read("events")
        keep = int(conf.offline_sample_fraction * 1000)
        for seed in conf.seeds[1:]:
            sample = members.where(F.pmod(F.xxhash64(F.lit(seed), F.col("user_id")), F.lit(1000)) < keep)
            rows = cluster_profiles(sample, sessions, events, ctx.config.profile,
                                    ctx.config.sessionize.timezone).toPandas()
            replicates.append(interpret_all(rows, categories))
    scores: dict[int, tuple] = {}
    if len(replicates) > 1:
        model, _ = load_sentence_transformer(conf.similarity_model, "cpu", 1)
        answers: dict[int, list[dict]] = {}
        for results in replicates:
            for r in results:
                answers.setdefault(r.cluster, []).append({"summary": r.summary, "keywords": list(r.keywords)})
        scores = {cluster: consistency(found, model.encode) for cluster, found in answers.items()}
    out = []
    for i, results in enumerate(replicates):
        for r in results:
            overlap, similarity, score = scores.get(r.cluster, (None, None, None))
            out.append((r.cluster, i, "offline", OFFLINE_MODEL, r.summary, list(r.keywords), 0, 0, 0.0,
                        score, overlap, similarity, None, None, None))
    return out


def _interpret_llm(ctx: Context, profiles, clusters: list[int], details: dict) -> list[tuple]:
    """Samples, requests (cached, budgeted), answers and consistency per cluster."""
    from beha2vec import interpret_llm as lib
    from beha2vec.embed import load_sentence_transformer
    from beha2vec.llm import complete_all

    conf, llm = ctx.config.interpret, ctx.config.llm
    if not conf.seeds or len(set(conf.seeds)) != len(conf.seeds):
        raise ValueError("interpret.seeds must list distinct seeds, at least one (one replicate per seed)")
    members = (ctx.lake.read("user_clusters").where(F.col("selected") & F.col("cluster").isin(clusters))
               .select("user_id", "cluster"))
    sessions = ctx.lake.read("sessions")
    summary = profiles[(profiles["facet"] == "summary") & (profiles["key"] == "users")]
    users = {int(c): int(v) for c, v in zip(summary["cluster"], summary["value"], strict=True)}
    k = int(profiles["k"].iloc[0]) if len(profiles) else 0
    samples, requests = [], []
    for seed in conf.seeds:
        candidates = lib.candidate_sessions(members, sessions, seed, conf).toPandas()
        for cluster in clusters:
            sample = lib.take_sample(candidates, cluster, seed, conf.sample_tokens, llm.tokenizer)
            facts = lib.profile_facts(profiles, cluster, conf.top_n)
            samples.append(sample)
            requests.append(lib.request(sample, facts, users.get(cluster, 0), users.get(-1, 0), k))

    def announce(estimate) -> None:
        print(f"interpret: {estimate}", flush=True)
        details["estimate"] = dataclasses.asdict(estimate)

    results = complete_all(ctx.lake, llm, requests, lib.parse_interpretation, on_estimate=announce)
    model, _ = load_sentence_transformer(conf.similarity_model, "cpu", 1)
    scores = {}
    for cluster in clusters:  # replicates that sent the same request (an empty sample) count once
        distinct = {r.key: r.answer for s, r in zip(samples, results, strict=True) if s.cluster == cluster}
        scores[cluster] = lib.consistency(list(distinct.values()), model.encode)
    details.update(requests=len(results), cached=sum(r.cached for r in results),
                   cost_usd=round(sum(r.cost_usd for r in results), 6),
                   prompt_tokens=sum(r.prompt_tokens for r in results))
    return [(s.cluster, conf.seeds.index(s.seed), "llm", llm.model, r.answer["summary"], r.answer["keywords"],
             r.prompt_tokens, r.completion_tokens, r.cost_usd, scores[s.cluster][2], scores[s.cluster][0],
             scores[s.cluster][1], len(s.lines), s.users, s.tokens)
            for s, r in zip(samples, results, strict=True)]


def compare(ctx: Context) -> dict:
    """``cluster_profiles`` (and, with an LLM, ``cluster_interpretations``) into ``cluster_comparisons``:
    how each pair of clusters that are not small differs, in numbers and one sentence."""
    import pandas as pd

    from beha2vec import compare_llm
    from beha2vec.compare_offline import compare_all
    from beha2vec.features import load_categories
    from beha2vec.interpret_offline import OFFLINE_MODEL
    from beha2vec.llm import complete_all
    from beha2vec.tables import CLUSTER_COMPARISONS

    backend = interpret_backend(ctx)
    conf, llm = ctx.config.interpret, ctx.config.llm
    with recorded(ctx.lake, ctx.config, "compare") as run:
        profiles = ctx.lake.read("cluster_profiles").toPandas()
        pairs = compare_all(profiles, load_categories(ctx.config.features.categories_file),
                            max_pairs=conf.compare_max_pairs)
        if backend == "llm" and pairs:
            described = (ctx.lake.read("cluster_interpretations").where(F.col("replicate") == 0).toPandas()
                         if ctx.lake.exists("cluster_interpretations") else pd.DataFrame(columns=["cluster"]))
            descriptions = {int(r.cluster): r.summary for r in described.itertuples()}
            requests = [compare_llm.request(profiles, p.cluster_a, p.cluster_b, p.evidence, descriptions,
                                            conf.top_n) for p in pairs]

            def announce(estimate) -> None:
                print(f"compare: {estimate}", flush=True)
                run.details["estimate"] = dataclasses.asdict(estimate)

            results = complete_all(ctx.lake, llm, requests, compare_llm.parse_comparison,
                                   on_estimate=announce)
            rows = [(p.cluster_a, p.cluster_b, "llm", llm.model, r.answer["summary"], r.answer["evidence"],
                     r.prompt_tokens, r.completion_tokens, r.cost_usd)
                    for p, r in zip(pairs, results, strict=True)]
            run.details.update(requests=len(results), cached=sum(r.cached for r in results),
                               cost_usd=round(sum(r.cost_usd for r in results), 6))
        else:
            rows = [(p.cluster_a, p.cluster_b, "offline", OFFLINE_MODEL, p.summary, list(p.evidence),
                     0, 0, 0.0) for p in pairs]
        now = dt.datetime.now(dt.UTC)
        clustering = _clustering_of(profiles)
        table = [(run.run_id, clustering, *row, now) for row in rows]
        written = ctx.lake.write(ctx.spark.createDataFrame(table, CLUSTER_COMPARISONS), "cluster_comparisons")
        run.rows_in = len(pairs)
        run.rows_out = written.rows
        run.details.update(clustering=clustering, backend=backend)
    return run.details | {"rows_in": run.rows_in, "rows_out": run.rows_out,
                          "comparisons": [(r[0], r[1], r[4]) for r in rows]}


def report(ctx: Context) -> dict:
    """Every table into one self-contained ``report/index.html`` under the lake root."""
    from beha2vec.report import build_report

    with recorded(ctx.lake, ctx.config, "report") as run:
        path = build_report(ctx.lake)
        run.details.update(path=str(path), bytes=path.stat().st_size)
    return run.details
