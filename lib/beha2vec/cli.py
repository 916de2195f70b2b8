"""The ``beha2vec`` command line; ``jobs/<stage>.py`` enter here too, with the stage preset.

Global options (``--conf``, ``--set``, ``--lake``) come before the subcommand:
``beha2vec --lake /tmp/lake ingest --source ga4 DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from beha2vec import __version__
from beha2vec.config import ConfigError, load_config
from beha2vec.context import Context
from beha2vec.errors import brief, hint, spark_stopped, text_of
from beha2vec.ingest import SOURCES
from beha2vec.ingest.files import InputError
from beha2vec.lake import LakeError
from beha2vec.runs import ConservationError
from beha2vec.sql import FORMATS, SqlError

log = logging.getLogger("beha2vec")

PIPELINE = ("ingest", "sessionize", "features", "train-encoder", "embed", "user-vectors", "cluster",
            "evaluate", "profile", "interpret", "compare", "report")
USER_ERRORS = (ConfigError, InputError, LakeError, SqlError, ConservationError, ValueError)

INCREMENTAL_INGEST = ("read only new or changed files and those of the last ingest.reingest_days export "
                      "dates (GA4 rewrites them); keep the events of the others")
INCREMENTAL_SESSIONIZE = ("recompute the sessions of the users whose events changed since the last "
                          "sessionize")
INCREMENTAL_PER_SESSION = ("compute only the sessions that are new or changed (by fingerprint) and keep "
                           "the other rows")
EXAMPLE_QUERIES = (
    "SELECT user_id, count(*) AS sessions FROM sessions GROUP BY user_id ORDER BY 2 DESC LIMIT 5",
    "SELECT domains[0] AS first_page, count(*) AS n FROM sessions GROUP BY 1 ORDER BY 2 DESC LIMIT 5",
    "SELECT stage, status, rows_in, rows_out, rows_rejected FROM runs ORDER BY started_at DESC LIMIT 5",
)


def _global_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--conf", action="append", default=[], metavar="FILE",
                   help="YAML configuration file (repeatable, later files win)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override one setting, e.g. --set sessionize.gap_minutes=20 (repeatable)")
    p.add_argument("--lake", metavar="DIR", help="lake root; tables live at DIR/<table>")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beha2vec", parents=[_global_parser()],
        description="Segment website users by browsing behaviour (Spark jobs over Delta tables).",
    )
    parser.add_argument("--version", action="version", version=f"beha2vec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="raw files into the events and rejects tables")
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, globs or folders (plain or gzip)")
    p.add_argument("--incremental", action="store_true", help=INCREMENTAL_INGEST)

    p = sub.add_parser("sessionize", help="events into sessions")
    p.add_argument("--incremental", action="store_true", help=INCREMENTAL_SESSIONIZE)
    p = sub.add_parser("features", help="sessions into behavioural features per session")
    p.add_argument("--incremental", action="store_true", help=INCREMENTAL_PER_SESSION)

    p = sub.add_parser("train-encoder", help="train the sequence encoder on the driver (a new model version)")
    p.add_argument("--resume", dest="resume_version", metavar="VERSION",
                   help="continue the run of this version from its checkpoint")

    p = sub.add_parser("embed", help="sessions into session_embeddings, one partition per model")
    p.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="minilm, any sentence-transformers name or path, openai:<model>, tfidf, features, "
                        "encoder[:VERSION] (repeatable; default: embed.models)")
    p.add_argument("--incremental", action="store_true",
                   help=INCREMENTAL_PER_SESSION + "; tfidf and features are fitted on all sessions and "
                        "always recomputed")

    sub.add_parser("user-vectors", help="session embeddings into one vector per user and model")
    sub.add_parser("cluster", help="k sweep (MLlib KMeans, BisectingKMeans); k by silhouette and stability")

    p = sub.add_parser("evaluate", help="how well each model separates and identifies users")
    p.add_argument("--truth", metavar="CSV", help="user_id,persona file (synthetic data) for persona "
                   "purity and the persona-only identification baseline")

    sub.add_parser("profile", help="the selected clustering's clusters in numbers")
    sub.add_parser("interpret", help="a sentence and three keywords per cluster (LLM or offline rules)")
    sub.add_parser("compare", help="how each pair of clusters differs, in numbers (LLM or offline rules)")
    sub.add_parser("report", help="one self-contained HTML report under <lake>/report/")

    p = sub.add_parser("run", help="the stages " + " -> ".join(PIPELINE)
                       + " (train-encoder only when embed.models names the encoder)")
    p.add_argument("--source", choices=SOURCES, help="input format (needed when ingest runs)")
    p.add_argument("paths", nargs="*", metavar="PATH", help="input files (needed when ingest runs)")
    p.add_argument("--truth", metavar="CSV", help="user_id,persona file for evaluate")
    p.add_argument("--from", dest="first", choices=PIPELINE, help="first stage to run")
    p.add_argument("--to", dest="last", choices=PIPELINE, help="last stage to run")
    p.add_argument("--incremental", action="store_true",
                   help="ingest, sessionize, features and embed incrementally (see their help), and "
                        "train the encoder only when none is trained yet; later stages run in full")
    p.add_argument("--resume", action="store_true",
                   help="start at the first stage whose latest run failed, is missing, or is older than "
                        "the run of the stage before it (from the runs table)")

    p = sub.add_parser("synth", help="synthetic data with planted personas")
    p.add_argument("--kind", required=True, choices=("ga4", "webtracking"))
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--personas", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", required=True, metavar="DIR")

    p = sub.add_parser("sql", help="read-only SQL over every lake table")
    p.add_argument("statement", metavar="QUERY")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--limit", type=int, default=1000, help="most rows printed (default 1000)")

    p = sub.add_parser("ask", help="questions about the clusters: one answer, or a prompt without QUESTION")
    p.add_argument("question", nargs="*", metavar="QUESTION")

    p = sub.add_parser("tables", help="list lake tables with row counts and versions")
    p.add_argument("--history", metavar="TABLE", help="show the commits of one table instead")

    p = sub.add_parser("vacuum", help="remove files of killed or failed writes that no commit names")
    p.add_argument("--older-than", type=float, default=24.0, metavar="HOURS",
                   help="only files untouched this long (default 24: a younger write may still be running)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    return parser


def _print_json(data: dict) -> None:
    print(json.dumps(data, indent=2, default=str, sort_keys=True))


def _cmd_synth(args: argparse.Namespace) -> None:
    from beha2vec.synth import synth

    summary = synth(args.kind, args.users, args.days, args.personas, args.seed, args.out,
                    workers=args.workers)
    print(f"wrote {summary.events:,} events of {summary.users:,} users "
          f"({summary.sessions:,} true sessions) in {len(summary.files)} files to {args.out}")


def _cmd_sql(ctx: Context, args: argparse.Namespace) -> None:
    from beha2vec.sql import query, render

    frame = query(ctx.lake, args.statement).limit(args.limit).toPandas()
    print(render(frame, args.format))


def _cmd_tables(ctx: Context, args: argparse.Namespace) -> None:
    import pandas as pd

    from beha2vec.sql import format_table

    if args.history:
        rows = [{"version": h.get("version"), "timestamp": h.get("timestamp"),
                 "operation": h.get("operation"),
                 "mode": (h.get("operationParameters") or {}).get("mode")}
                for h in ctx.lake.history(args.history)]
        print(format_table(pd.DataFrame(rows)))
        return
    infos = ctx.lake.tables()
    print(f"lake: {ctx.lake.root} (route: {ctx.lake.route})")
    frame = pd.DataFrame([{"table": i.name, "rows": i.rows, "version": i.version, "files": i.files}
                          for i in infos], columns=["table", "rows", "version", "files"])
    print(format_table(frame))
    for info in infos:
        if info.problem:
            print(f"cannot read {info.name}: {info.problem}")


def _cmd_vacuum(ctx: Context, args: argparse.Namespace) -> None:
    import pandas as pd

    from beha2vec.sql import format_table

    found = ctx.lake.leftovers(args.older_than)
    if not args.dry_run:
        ctx.lake.remove(found)
    frame = pd.DataFrame([vars(f) for f in found], columns=["table", "path", "files", "bytes", "age_hours"])
    print(format_table(frame))
    print(f"{'would remove' if args.dry_run else 'removed'} {len(found)} leftovers of failed writes "
          f"({sum(f.bytes for f in found) / 2**20:.1f} MiB) untouched for {args.older_than:g} hours or more")


def _print_evaluation(table) -> None:
    from beha2vec.evaluate import split_comparison
    from beha2vec.sql import format_table

    sessions, clusterings = split_comparison(table)
    print("evaluate: how well each model separates users (silhouette), identifies them (accuracy, "
          "recall) and groups personas (purity); *_chance is the floor")
    print(format_table(sessions.reset_index().round(3)))
    if len(clusterings):
        print("evaluate: the chosen clustering of each model/algorithm against the planted personas")
        print(format_table(clusterings.reset_index().round(3)))


def _summary(ctx: Context) -> None:
    _cmd_tables(ctx, argparse.Namespace(history=None))
    print("\nTry:")
    for q in EXAMPLE_QUERIES:
        print(f'  beha2vec --lake {ctx.lake.root} sql "{q}"')


def _ingest(ctx: Context, args: argparse.Namespace) -> None:
    from beha2vec import stages

    if not args.source or not args.paths:
        raise ValueError("ingest needs --source and at least one PATH (or start later with --from)")
    report = stages.ingest(ctx, args.source, args.paths, args.incremental)
    read = (f" from {report['files_read']} of {report['files']} files ({report.get('events_kept', 0):,} "
            "events of the others kept)" if args.incremental else "")
    print(f"ingest: {report['rows_in']:,} records -> {report['rows_out']:,} events, "
          f"{report['rows_rejected']:,} rejected{read}")


def _sessionize(ctx: Context, args: argparse.Namespace) -> None:
    from beha2vec import stages

    report = stages.sessionize(ctx, args.incremental)
    users = f" of {report['users_recomputed']:,} changed users" if report["incremental"] else ""
    print(f"sessionize: {report['rows_in']:,} events{users} -> {report['sessions']:,} sessions "
          f"({report['bot_sessions']:,} of bot-like users)")


def _features(ctx: Context, args: argparse.Namespace) -> None:
    from beha2vec import stages

    report = stages.features(ctx, args.incremental)
    reused = f" ({report['reused']:,} kept, {report['computed']:,} computed)" if "reused" in report else ""
    print(f"features: {report['rows_out']:,} sessions x {report['features']} features{reused}")


def _train_encoder(ctx: Context, args: argparse.Namespace) -> None:
    from beha2vec import stages
    from beha2vec.encoder.registry import registry_root, versions

    trained = versions(registry_root(ctx.config.encoder.registry, ctx.lake.root))
    if getattr(args, "incremental", False) and trained:
        print(f"train-encoder: kept v{trained[-1]} (an incremental run trains only the first encoder; "
              "run train-encoder to retrain)")
        return
    report = stages.train_encoder(ctx, getattr(args, "resume_version", None))
    best = ", ".join(f"{k} {v:.3f}" for k, v in report["best"].items() if k not in ("epoch", "train_loss"))
    print(f"train-encoder: v{report['version']} on {report['train_users']:,} users "
          f"({report['train_sessions']:,} sessions), best epoch {report['best_epoch']} on "
          f"{report['validation_users']:,} validation users: {best}\n  saved in {report['path']}")


def _embed(ctx: Context, args: argparse.Namespace) -> None:
    from beha2vec import stages

    for report in stages.embed(ctx, getattr(args, "models", None), args.incremental):
        extra = f" ({report['distinct_texts']:,} distinct texts in {report['tasks']} tasks)" \
            if "tasks" in report else ""
        if "reused" in report:
            extra += f" ({report['reused']:,} kept, {report['embedded']:,} embedded)"
        if "version" in report:
            extra += f" (v{report['version']})"
        print(f"embed {report['model']}: {report['rows_out']:,} sessions{extra}")


def _user_vectors(ctx: Context, args: argparse.Namespace) -> None:
    from beha2vec import stages

    report = stages.user_vectors(ctx)
    users = ", ".join(f"{m} {n:,}" for m, n in sorted(report["users_per_model"].items()))
    print(f"user-vectors: users per model: {users}; {report['rows_rejected']:,} (model, user) pairs "
          "left out (see rejects)")


def _cluster(ctx: Context, args: argparse.Namespace) -> None:
    from beha2vec import stages

    report = stages.cluster(ctx)
    for c in report["chosen"]:
        print(f"cluster {c['model']}/{c['algorithm']}: k={c['k']} (seed {c['seed']}), silhouette "
              f"{c['silhouette']:.3f}, stability {c['stability']:.2f}")
    for s in report["selected"]:
        print(f"  selected for profiles and interpretation: {s['model']}/{s['algorithm']} k={s['k']} "
              f"({report['fits']} fits in all)")


def _evaluate(ctx: Context, args: argparse.Namespace) -> None:
    from beha2vec import stages

    _print_evaluation(stages.evaluate(ctx))


def _profile(ctx: Context, args: argparse.Namespace) -> None:
    from beha2vec import stages

    report = stages.profile(ctx)
    print(f"profile: {report['clusters']} clusters ({report['small']} small) of {report['rows_in']:,} users, "
          f"{report['rows']:,} profile rows")


def _interpret(ctx: Context, args: argparse.Namespace) -> None:
    from beha2vec import stages

    report = stages.interpret(ctx)
    cost = (f", {report['requests']} requests ({report['cached']} cached), ${report['cost_usd']:.4f}"
            if report["backend"] == "llm" else "")
    print(f"interpret ({report['backend']}): {report['rows_out']} clusters of {report['clustering']}{cost}")
    replicates = len({r[1] for r in report["interpretations"]})
    if replicates > 1:
        print(f"  (replicate 0 of {replicates} per cluster; all are in cluster_interpretations)")
    for cluster, replicate, summary, keywords, consistency in sorted(report["interpretations"]):
        if replicate == 0:
            score = f" (consistency {consistency:.2f})" if consistency is not None else ""
            print(f"  {cluster}: {summary} [{', '.join(keywords)}]{score}")


def _compare(ctx: Context, args: argparse.Namespace) -> None:
    from beha2vec import stages

    report = stages.compare(ctx)
    cost = (f", {report['requests']} requests ({report['cached']} cached), ${report['cost_usd']:.4f}"
            if report.get("requests") else "")
    print(f"compare ({report['backend']}): {report['rows_out']} pairs of {report['clustering']}{cost}")
    for a, b, summary in report["comparisons"][:10]:
        print(f"  {a} vs {b}: {summary}")
    if len(report["comparisons"]) > 10:
        print(f"  ... {len(report['comparisons']) - 10} more in cluster_comparisons")


def _report(ctx: Context, args: argparse.Namespace) -> None:
    from beha2vec import stages

    print(f"report: {stages.report(ctx)['path']}")


RUNNERS = {"ingest": _ingest, "sessionize": _sessionize, "features": _features,
           "train-encoder": _train_encoder, "embed": _embed, "user-vectors": _user_vectors,
           "cluster": _cluster, "evaluate": _evaluate, "profile": _profile, "interpret": _interpret,
           "compare": _compare, "report": _report}


def _wanted(stages: list[str], config) -> list[str]:
    """The pipeline's stages less train-encoder when no embedding model needs it."""
    if not any(m.startswith("encoder") for m in config.embed.models):
        return [s for s in stages if s != "train-encoder"]
    return stages


def _todo(ctx: Context, args: argparse.Namespace) -> list[str]:
    """The stages this command runs, in order."""
    from beha2vec.runs import resume_point

    if args.command != "run":
        return [args.command] if args.command in RUNNERS else []
    stages = _wanted(list(PIPELINE), ctx.config)
    first = args.first
    if args.resume:
        if first:
            raise ValueError("give either --from or --resume, not both")
        first = resume_point(ctx.lake, stages)
        if first is None:
            print("run --resume: every stage's latest run is ok and newer than the one before it")
            return []
        print(f"run --resume: starting at {first}")
    start = stages.index(first) if first in stages else 0
    stop = stages.index(args.last) + 1 if args.last in stages else len(stages)
    if start >= stop:
        raise ValueError(f"--from {args.first or first} comes after --to {args.last}")
    return stages[start:stop]


def _dispatch(args: argparse.Namespace) -> None:
    if args.command == "synth":
        _cmd_synth(args)
        return
    config = load_config(args.conf, args.overrides, args.lake)
    ctx = Context(config)
    if getattr(args, "truth", None):
        config.evaluate.truth_users_file = args.truth
    started = time.perf_counter()
    for stage in _todo(ctx, args):
        RUNNERS[stage](ctx, args)
    if args.command == "run":
        print(f"done in {time.perf_counter() - started:.1f} s\n")
        _summary(ctx)
    if args.command == "sql":
        _cmd_sql(ctx, args)
    if args.command == "tables":
        _cmd_tables(ctx, args)
    if args.command == "vacuum":
        _cmd_vacuum(ctx, args)
    if args.command == "ask":
        from beha2vec.ask import run_ask

        run_ask(ctx, " ".join(args.question).strip())


def main(argv: list[str] | None = None, stage: str | None = None) -> int:
    """Entry point; ``stage`` presets the subcommand (for ``spark-submit jobs/<stage>.py``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if stage is not None:
        known, rest = _global_parser().parse_known_args(argv)
        argv = [*_as_args(known), stage, *rest]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        _dispatch(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        _print_hint(str(exc))
        return 2
    except Exception as exc:  # a failed Spark job: one line here, the whole traceback with -v
        if args.verbose:
            raise
        print(f"error: {type(exc).__name__}: {brief(exc)} (run with -v for the traceback)", file=sys.stderr)
        _print_hint(text_of(exc))
        return 1
    return 0


def _print_hint(message: str) -> None:
    advice = hint(message, spark_stopped())
    if advice:
        print(f"hint: {advice}", file=sys.stderr)


def _as_args(ns: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for path in ns.conf:
        out += ["--conf", path]
    for item in ns.overrides:
        out += ["--set", item]
    if ns.lake:
        out += ["--lake", ns.lake]
    if ns.verbose:
        out.append("-v")
    return out


if __name__ == "__main__":
    sys.exit(main())
