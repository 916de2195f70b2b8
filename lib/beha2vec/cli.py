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
from beha2vec.ingest import SOURCES
from beha2vec.ingest.files import InputError
from beha2vec.lake import LakeError
from beha2vec.runs import ConservationError
from beha2vec.sql import FORMATS, SqlError

log = logging.getLogger("beha2vec")

PIPELINE = ("ingest", "sessionize", "features", "train-encoder", "embed", "evaluate")
USER_ERRORS = (ConfigError, InputError, LakeError, SqlError, ConservationError, ValueError)

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

    sub.add_parser("sessionize", help="events into sessions")
    sub.add_parser("features", help="sessions into behavioural features per session")

    p = sub.add_parser("train-encoder", help="train the sequence encoder on the driver (a new model version)")
    p.add_argument("--resume", metavar="VERSION", help="continue the run of this version from its checkpoint")

    p = sub.add_parser("embed", help="sessions into session_embeddings, one partition per model")
    p.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="minilm, any sentence-transformers name or path, openai:<model>, tfidf, features, "
                        "encoder[:VERSION] (repeatable; default: embed.models)")

    p = sub.add_parser("evaluate", help="how well each model separates and identifies users")
    p.add_argument("--truth", metavar="CSV", help="user_id,persona file (synthetic data) for persona purity")

    p = sub.add_parser("run", help="every stage: " + " -> ".join(PIPELINE)
                       + " (train-encoder when embed.models names the encoder)")
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--truth", metavar="CSV", help="user_id,persona file for evaluate")

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

    p = sub.add_parser("tables", help="list lake tables with row counts and versions")
    p.add_argument("--history", metavar="TABLE", help="show the commits of one table instead")
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


def _print_evaluation(table) -> None:
    from beha2vec.sql import format_table

    print("evaluate: how well each model separates users (silhouette), identifies them (accuracy, "
          "recall) and groups personas (purity); *_chance is the floor")
    print(format_table(table.reset_index().round(3)))


def _summary(ctx: Context) -> None:
    _cmd_tables(ctx, argparse.Namespace(history=None))
    print("\nTry:")
    for q in EXAMPLE_QUERIES:
        print(f'  beha2vec --lake {ctx.lake.root} sql "{q}"')


def _dispatch(args: argparse.Namespace) -> None:
    if args.command == "synth":
        _cmd_synth(args)
        return
    config = load_config(args.conf, args.overrides, args.lake)
    ctx = Context(config)
    from beha2vec import stages

    if getattr(args, "truth", None):
        config.evaluate.truth_users_file = args.truth
    started = time.perf_counter()
    todo = PIPELINE if args.command == "run" else (args.command,)
    if "ingest" in todo:
        report = stages.ingest(ctx, args.source, args.paths)
        print(f"ingest: {report['rows_in']:,} records -> {report['rows_out']:,} events, "
              f"{report['rows_rejected']:,} rejected")
    if "sessionize" in todo:
        report = stages.sessionize(ctx)
        print(f"sessionize: {report['rows_in']:,} events -> {report['sessions']:,} sessions "
              f"({report['bot_sessions']:,} of bot-like users)")
    if "features" in todo:
        report = stages.features(ctx)
        print(f"features: {report['rows_out']:,} sessions x {report['features']} features")
    wants_encoder = args.command == "train-encoder" or any(
        m.startswith("encoder") for m in config.embed.models)
    if "train-encoder" in todo and wants_encoder:
        report = stages.train_encoder(ctx, getattr(args, "resume", None))
        best = ", ".join(f"{k} {v:.3f}" for k, v in report["best"].items()
                         if k not in ("epoch", "train_loss"))
        print(f"train-encoder: v{report['version']} on {report['train_users']:,} users "
              f"({report['train_sessions']:,} sessions), best epoch {report['best_epoch']} on "
              f"{report['validation_users']:,} validation users: {best}\n  saved in {report['path']}")
    if "embed" in todo:
        for report in stages.embed(ctx, getattr(args, "models", None)):
            extra = f" ({report['distinct_texts']:,} distinct texts)" if "distinct_texts" in report else ""
            if "version" in report:
                extra += f" (v{report['version']})"
            print(f"embed {report['model']}: {report['rows_out']:,} sessions{extra}")
    if "evaluate" in todo:
        _print_evaluation(stages.evaluate(ctx))
    if args.command == "run":
        print(f"done in {time.perf_counter() - started:.1f} s\n")
        _summary(ctx)
    if args.command == "sql":
        _cmd_sql(ctx, args)
    if args.command == "tables":
        _cmd_tables(ctx, args)


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
        return 2
    except Exception as exc:  # a failed Spark job: one line here, the whole traceback with -v
        if args.verbose:
            raise
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        print(f"error: {type(exc).__name__}: {first[:500]} (run with -v for the traceback)", file=sys.stderr)
        return 1
    return 0


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
