"""Benchmark: the whole pipeline end to end, in local mode and on a local standalone cluster.

Why: a user wants to know what a run costs, and whether submitting to a cluster costs more than
local mode on the same cores. For each size, synthetic GA4 data (made once, as bench/sessionize.py
makes it) goes through every stage twice per repeat, on fresh lakes, with the same settings:

* local: ``beha2vec --conf conf/local.yaml run --source ga4 DIR`` (Spark ``local[2]``);
* standalone: ``spark-submit --master spark://127.0.0.1:PORT --py-files dist/beha2vec.zip
  jobs/run.py ...`` in client mode, to a master and two 1-core workers started on this machine
  (``make package`` first, as docs/cluster.md says).

It reports the median wall time, the time of each stage (from the ``runs`` table), CPU seconds and
peak memory (the driver's process tree, plus the workers' trees on the cluster) and the ratio
standalone / local. ``--set`` settings apply to both; the default leaves out MiniLM, whose cost
on 2 cores is measured by bench/embed.py (about 33 sessions/s) and would dominate every other stage.

    python bench/pipeline.py --events 1000000 --repeats 1

``--msnbc FILE --users N ...`` runs local mode on the first N users of the real msnbc data instead
(``--source msnbc``, with MSNBC_SETTINGS: msnbc has one untimed line per user, so a user's
"sessions" are 10-request pieces, as in docs/encoder.md).

``--from STAGE --lake DIR`` resumes a stopped local run on its own lake (one run; only the stages
run now are timed). Each local run also reports the peak memory of every stage: the driver's
process tree, sampled every 0.25 s, between the stage's start and end in the ``runs`` table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from sessionize import ROOT, dataset, machine, measure, tree_usage

sys.path.insert(0, str(ROOT / "tests"))
from standalone_cluster import cluster_env, standalone  # noqa: E402

BIN = Path(sys.executable).parent
DEFAULT_SETTINGS = ["embed.models=[tfidf,features,encoder]"]
MSNBC_SETTINGS = [*DEFAULT_SETTINGS, "sessionize.max_events=10", "user_vectors.min_sessions=1",
                  "evaluate.min_sessions=5"]
STAGE_ORDER = ("ingest", "sessionize", "features", "train-encoder", "embed", "user-vectors", "cluster",
               "evaluate", "profile", "interpret", "compare", "report")


def stage_figures(lake: Path, since: float = 0.0,
                  timeline: list[tuple[float, int]] | None = None) -> tuple[dict, dict]:
    """Seconds per stage of the lake's runs started at or after ``since`` (epoch seconds; embed sums
    its models), all of which must be ok, and each stage's peak tree RSS in GiB from ``timeline``."""
    from deltalake import DeltaTable

    runs = DeltaTable(str(lake / "runs")).to_pandas()
    runs = runs[runs["started_at"] >= datetime.fromtimestamp(since, UTC)]
    failed = runs[runs["status"] != "ok"]
    if len(failed):
        raise RuntimeError(f"failed stage runs in {lake}: {failed['stage'].tolist()}")
    runs["seconds"] = (runs["finished_at"] - runs["started_at"]).dt.total_seconds()
    seconds = {k: round(float(v), 1) for k, v in runs.groupby("stage")["seconds"].sum().items()}
    peaks: dict[str, float] = {}
    for run in runs.itertuples():
        start, end = run.started_at.timestamp(), run.finished_at.timestamp()
        inside = [rss for t, rss in timeline or [] if start <= t <= end]
        if inside:
            peaks[run.stage] = round(max(peaks.get(run.stage, 0.0), max(inside) / 2**30), 2)
    return seconds, peaks


def local_run(data: dict, lake: Path, log: Path, settings: list[str], first: str | None = None) -> dict:
    """``beha2vec run`` in local mode; from stage ``first`` on an existing lake when given."""
    cmd = [str(BIN / "beha2vec"), "--conf", "conf/local.yaml", "--set", "spark.progress_bar=false",
           *(a for kv in settings for a in ("--set", kv)), "--lake", str(lake),
           "run", *(["--from", first] if first else []),
           "--source", data.get("source", "ga4"), data["folder"]]
    timeline: list[tuple[float, int]] = []
    since = time.time()
    result = measure(cmd, log, timeline)
    result.pop("stdout")
    stages, peaks = stage_figures(lake, since, timeline)
    trace = [[round(t - since, 1), round(rss / 2**30, 2)] for t, rss in timeline[::4]]  # about 1 s apart
    return result | {"stages": stages, "stage_peak_rss_gib": peaks, "rss_gib_by_second": trace}


def standalone_run(data: dict, lake: Path, log: Path, settings: list[str], cluster) -> dict:
    """The same run submitted to the cluster; the workers' process trees are sampled alongside."""
    cmd = [str(BIN / "spark-submit"), "--master", cluster.url, "--deploy-mode", "client",
           "--driver-memory", "4g", "--executor-memory", "3g",
           "--py-files", str(ROOT / "dist" / "beha2vec.zip"),
           str(ROOT / "jobs" / "run.py"), "--conf", "conf/local.yaml", "--set", "spark.progress_bar=false",
           *(a for kv in settings for a in ("--set", kv)), "--lake", str(lake),
           "--source", "ga4", data["folder"]]
    peak, ticks, done = [0], {}, threading.Event()

    def sample() -> None:
        while not done.is_set():
            usage = [tree_usage(w.pid) for w in cluster.workers]
            peak[0] = max(peak[0], sum(rss for rss, _ in usage))
            for _, cpu in usage:
                ticks.update(cpu)
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = measure(cmd, log)
    finally:
        done.set()
        sampler.join()
    result.pop("stdout")
    workers_cpu = sum(ticks.values()) / os.sysconf("SC_CLK_TCK")  # every executor and Python worker
    return result | {"stages": stage_figures(lake)[0], "workers_peak_rss_gib": round(peak[0] / 2**30, 2),
                     "workers_cpu_seconds": round(workers_cpu, 1),
                     "total_cpu_seconds": round(result["cpu_seconds"] + workers_cpu, 1)}


def summary(runs: list[dict]) -> dict:
    stages = sorted({s for r in runs for s in r["stages"]}, key=STAGE_ORDER.index)
    sampled = all("stage_peak_rss_gib" in r for r in runs)  # standalone runs sample the whole trees only
    return {"runs": len(runs), "seconds": statistics.median(r["seconds"] for r in runs),
            "cpu_seconds": statistics.median(r.get("total_cpu_seconds", r["cpu_seconds"]) for r in runs),
            "peak_rss_gib": max(r["peak_rss_gib"] + r.get("workers_peak_rss_gib", 0) for r in runs),
            "load_after": max(r["load_after"] for r in runs),
            "stages": {s: statistics.median(r["stages"].get(s, 0.0) for r in runs) for s in stages},
            "stage_peak_rss_gib": {s: max(r["stage_peak_rss_gib"].get(s, 0.0) for r in runs)
                                   for s in stages if sampled}}


def report(results: dict) -> str:
    lines = [f"machine: {results['machine']}; settings: {results['settings']}"]
    table = ["| events | sessions | mode | runs | median s | CPU s | peak GiB | load after |",
             "|---|---|---|---|---|---|---|---|"]
    stage_rows, peak_rows = [], []
    for size in results["sizes"]:
        modes = {mode: summary(runs) for mode, runs in size["runs"].items()}
        for mode, s in modes.items():
            label = f"{mode}, from {size['from']}" if size.get("from") else mode
            table.append(f"| {size['data']['events']:,} | {size.get('sessions', 0):,} | {label} | "
                         f"{s['runs']} | {s['seconds']:.1f} | {s['cpu_seconds']:.1f} | "
                         f"{s['peak_rss_gib']:.2f} | {s['load_after']} |")
            for rows, key in ((stage_rows, "stages"), (peak_rows, "stage_peak_rss_gib")):
                values = s.get(key, {})
                if not values:
                    continue
                rows.append(f"| {size['data']['events']:,} | {label} | "
                            + " | ".join(f"{values[st]:.1f}" if st in values else "–" for st in STAGE_ORDER)
                            + " |")
        if {"local", "standalone"} <= modes.keys():
            lines.append(f"{size['data']['events']:,} events: standalone / local = "
                         f"{modes['standalone']['seconds'] / modes['local']['seconds']:.2f}")
    head = "| events | mode | " + " | ".join(STAGE_ORDER) + " |"
    rule = "|" + "---|" * (len(STAGE_ORDER) + 2)
    out = [*lines, "", *table, "", "seconds per stage (medians):", head, rule, *stage_rows]
    if peak_rows:
        out += ["", "peak GiB per stage (driver process tree, local runs):", head, rule, *peak_rows]
    return "\n".join(out)


def sessions_of(lake: Path) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(lake / "sessions")).to_pyarrow_dataset().count_rows()


def msnbc_dataset(path: Path, users: int, workdir: Path) -> dict:
    """The header and the first ``users`` lines of an msnbc file, written once per size."""
    out = workdir / "data" / f"msnbc-{users}" / path.name
    lines = path.read_text().splitlines(keepends=True)
    header = next(i for i, line in enumerate(lines) if line.strip() and line.split()[0].isdigit())
    body = lines[header:header + users]
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(lines[:header] + body))
    return {"folder": str(out), "source": "msnbc", "users": len(body),
            "events": sum(len(line.split()) for line in body)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--modes", nargs="+", choices=("local", "standalone"),
                        default=["local", "standalone"])
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--msnbc", type=Path, help="an msnbc .seq file: local runs on its first --users")
    parser.add_argument("--users", type=int, nargs="+", default=[100_000])
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help=f"setting for both modes (default: {' '.join(DEFAULT_SETTINGS)})")
    parser.add_argument("--from", dest="first", choices=STAGE_ORDER[1:],
                        help="resume a stopped local run on --lake from this stage (one size, one run)")
    parser.add_argument("--lake", type=Path, help="the existing lake --from resumes")
    parser.add_argument("--report", action="store_true",
                        help="only print the saved results (WORKDIR/pipeline[-msnbc].json)")
    args = parser.parse_args(argv)
    settings = (MSNBC_SETTINGS if args.msnbc else DEFAULT_SETTINGS) if args.set is None else args.set
    workdir = args.workdir.resolve()
    path = workdir / ("pipeline-msnbc.json" if args.msnbc else "pipeline.json")
    if args.report:
        print(report(json.loads(path.read_text())))
        return 0
    if args.first and not (args.lake and (args.lake / "runs").exists()):
        parser.error("--from needs --lake, an existing lake whose earlier stages ran")
    if args.first:
        args.modes, args.repeats = ["local"], 1
    if args.msnbc:
        args.modes = ["local"]
        sizes = [(f"msnbc-{n}", msnbc_dataset(args.msnbc, n, workdir)) for n in args.users]
    else:
        sizes = [(n, None) for n in args.events]
    if "standalone" in args.modes:
        subprocess.run(["make", "package"], cwd=ROOT, check=True, capture_output=True, env=cluster_env())
    earlier = json.loads(path.read_text())["sizes"] if path.exists() else []
    results = {"machine": machine(), "settings": settings,
               "sizes": [s for s in earlier if s["target"] not in [t for t, _ in sizes]]}
    for target, data in sizes:
        data = data or dataset(target, workdir)
        print(f"{data['events']:,} events of {data['users']:,} users", flush=True)
        runs: dict[str, list[dict]] = {m: [] for m in args.modes}
        sessions = 0
        for i in range(args.repeats):
            for mode in args.modes:
                lake = args.lake or workdir / "lakes" / f"pipeline-{mode}"
                tag = f"-from-{args.first}" if args.first else ""
                log = workdir / "logs" / f"pipeline-{mode}-{i}{tag}.log"
                if not args.first:
                    shutil.rmtree(lake, ignore_errors=True)
                if mode == "local":
                    result = local_run(data, lake, log, settings, args.first)
                else:
                    with standalone(workdir / "standalone", memory="4g") as cluster:
                        result = standalone_run(data, lake, log, settings, cluster)
                sessions = sessions_of(lake)
                runs[mode].append(result)
                print(f"  {mode} run {i + 1}: {result['seconds']:.1f} s {result['stages']}", flush=True)
        results["sizes"].append({"target": target, "data": data, "sessions": sessions, "from": args.first,
                                 "runs": runs})
        results["sizes"].sort(key=lambda s: s["data"]["events"])
        path.write_text(json.dumps(results, indent=1, default=str))
    print("\n" + report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
