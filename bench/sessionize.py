"""Benchmark: GA4 export to sessions, the Spark path against a single-process pandas reference.

Why: the project claims Spark is worth its start-up cost; this measures it on the machine at hand.
For each size it generates synthetic GA4 data once (cached in the work folder), then runs, side by
side and ``--repeats`` times each, in fresh subprocesses so that start-up is paid as a user pays it:

* Spark: ``beha2vec ingest --source ga4 DIR`` then ``beha2vec sessionize`` on a fresh lake;
* pandas: ``bench/pandas_reference.py DIR`` (same rules, one process).

It reports medians, events/s, the pandas/Spark ratio, how time grows with size, the peak memory of
each subprocess tree (sampled from /proc, so the JVM and forked Python workers count), a trivial
Spark start for reference, where Spark's time goes (per query, from its event log) and a
session-by-session comparison of the two outputs on the first repeat. Results go to
``WORKDIR/results.json``, which keeps the sizes of earlier invocations (delete it to start over),
so a long size can be run on its own and still be reported next to the others.

    python bench/sessionize.py --events 1000000 10000000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DAYS, SEED, PERSONAS = 28, 7, 5
EVENTS_PER_USER_DAY = 3.925  # measured on synth("ga4"): 109,900 events for 1,000 users x 28 days
PAGE = os.sysconf("SC_PAGE_SIZE")
ENV = {"PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
SPARK_START = ("from beha2vec.config import load_config; from beha2vec.spark import get_spark; "
               "get_spark(load_config(['conf/local.yaml']).spark).range(1).count()")


def tree_usage(root: int) -> tuple[int, dict[int, int]]:
    """Summed resident memory (bytes) of ``root`` and its descendants (JVM, Python workers), and
    the CPU clock ticks each of them has used so far."""
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    stats[int(entry.name)] = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [c for c, st in stats.items() if int(st[1]) == pid and c not in tree]
    tree &= set(stats)
    return (sum(int(stats[p][21]) for p in tree) * PAGE,
            {p: int(stats[p][11]) + int(stats[p][12]) for p in tree})


def measure(cmd: list[str], log: Path, timeline: list[tuple[float, int]] | None = None) -> dict:
    """Run ``cmd`` (output to ``log``): wall seconds; CPU seconds of its process tree (sampled, as
    the JVM is not waited for), less sensitive than wall time to other work on the machine; peak
    tree RSS; the 1-minute load average after it; its output. ``timeline`` collects the samples
    as (epoch seconds, tree RSS bytes), for peaks per stage."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=os.environ | ENV)
        peak, ticks = [0], {}

        def sample() -> None:
            while proc.returncode is None:
                rss, cpu = tree_usage(proc.pid)
                peak[0] = max(peak[0], rss)
                if timeline is not None:
                    timeline.append((time.time(), rss))
                ticks.update(cpu)
                time.sleep(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        sampler.join()
    text = log.read_text()
    if proc.returncode != 0:
        errors = re.findall(r"^error: .*", text, re.M) or text.strip().splitlines()[-1:]
        raise RuntimeError(f"exit {proc.returncode}: {errors[-1][:300] if errors else ''} ({log})")
    cpu = max(usage.ru_utime + usage.ru_stime, sum(ticks.values()) / os.sysconf("SC_CLK_TCK"))
    return {"seconds": round(wall, 2), "cpu_seconds": round(cpu, 1),
            "peak_rss_gib": round(peak[0] / 2**30, 2), "load_after": round(os.getloadavg()[0], 1),
            "stdout": text}


def dataset(events: int, workdir: Path) -> dict:
    """Synthetic GA4 data of about ``events`` events over 28 days, generated once per size."""
    folder = workdir / "data" / f"ga4-{events}"
    meta = workdir / "data" / f"ga4-{events}.json"  # outside the folder: ingest would read a .json
    users = max(1, round(events / (EVENTS_PER_USER_DAY * DAYS)))
    if meta.exists() and json.loads(meta.read_text())["users"] == users:
        return json.loads(meta.read_text())
    from beha2vec.synth import synth

    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    s = synth("ga4", users=users, days=DAYS, personas=PERSONAS, seed=SEED, out=folder, workers=2)
    info = {"folder": str(folder), "users": users, "days": DAYS, "events": s.events,
            "true_sessions": s.sessions, "files": len(s.files),
            "gzip_mb": round(sum(Path(f).stat().st_size for f in s.files) / 2**20, 1),
            "synth_seconds": round(time.perf_counter() - started, 1)}
    meta.write_text(json.dumps(info, indent=1))
    return info


def spark_timeline(events_dir: Path) -> dict:
    """Where one Spark application's time went, from its event log: seconds from application
    start to the first query (driver set-up), and each SQL query in order (description, seconds,
    stages and tasks run). Lake writes show as "parquet at ...", in the order the stage writes."""
    app: dict[str, int] = {}
    queries: dict[int, dict] = {}
    stage_query: dict[int, int] = {}
    log = next(p for p in events_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    for line in log.open():
        e = json.loads(line)
        kind = e["Event"]
        if kind in ("SparkListenerApplicationStart", "SparkListenerApplicationEnd"):
            app[kind.removeprefix("SparkListenerApplication")] = e["Timestamp"]
        elif kind.endswith("SQLExecutionStart"):
            queries[e["executionId"]] = {"query": e["description"], "start": e["time"],
                                         "stages": 0, "tasks": 0}
        elif kind.endswith("SQLExecutionEnd"):
            q = queries[e["executionId"]]
            q["seconds"] = (e["time"] - q["start"]) / 1000
        elif kind == "SparkListenerJobStart" and "spark.sql.execution.id" in e["Properties"]:
            query = int(e["Properties"]["spark.sql.execution.id"])
            stage_query |= dict.fromkeys(e["Stage IDs"], query)
        elif kind == "SparkListenerStageCompleted" and e["Stage Info"]["Stage ID"] in stage_query:
            q = queries[stage_query[e["Stage Info"]["Stage ID"]]]
            q["stages"] += 1
            q["tasks"] += e["Stage Info"]["Number of Tasks"]
    first = min((q["start"] for q in queries.values()), default=app.get("End", 0))
    return {"app_seconds": (app.get("End", 0) - app["Start"]) / 1000,
            "setup_seconds": (first - app["Start"]) / 1000,
            "queries": [{k: v for k, v in q.items() if k != "start"} for q in queries.values()]}


def spark_run(data: dict, workdir: Path, tag: str, settings: list[str]) -> dict:
    """Ingest then sessionize on a fresh lake, each a ``beha2vec`` subprocess with an event log;
    ``settings`` are ``KEY=VALUE`` overrides passed on as ``--set``."""
    lake, logs = workdir / "lakes" / tag, workdir / "logs" / tag
    shutil.rmtree(lake, ignore_errors=True)
    result: dict = {}
    for stage, args in (("ingest", ["ingest", "--source", "ga4", data["folder"]]),
                        ("sessionize", ["sessionize"])):
        events_dir = logs / f"events-{stage}"
        shutil.rmtree(events_dir, ignore_errors=True)
        events_dir.mkdir(parents=True)
        extra = {"spark.eventLog.enabled": "true", "spark.eventLog.dir": events_dir.as_uri(),
                 "spark.eventLog.compress": "false", "spark.eventLog.rolling.enabled": "false"}
        conf = logs / f"{stage}.yaml"
        conf.write_text(json.dumps({"spark": {"progress_bar": False, "extra": extra}}))
        cmd = [str(Path(sys.executable).parent / "beha2vec"), "--conf", "conf/local.yaml",
               "--conf", str(conf), *(a for kv in settings for a in ("--set", kv)),
               "--lake", str(lake), *args]
        result[stage] = measure(cmd, logs / f"{stage}.log")
        result[stage]["timeline"] = spark_timeline(events_dir)
    num = lambda text: int(text.replace(",", ""))  # noqa: E731
    m = re.search(r"ingest: ([\d,]+) records -> ([\d,]+) events, ([\d,]+) rejected",
                  result["ingest"].pop("stdout"))
    s = re.search(r"sessionize: [\d,]+ events -> ([\d,]+) sessions \(([\d,]+) of bot",
                  result["sessionize"].pop("stdout"))
    return result | {
        "sessions_table": str(lake / "sessions"), "records": num(m[1]), "events": num(m[2]),
        "rejected": num(m[3]), "sessions": num(s[1]),
        "bot_sessions": num(s[2]),
        "seconds": round(result["ingest"]["seconds"] + result["sessionize"]["seconds"], 2),
        "cpu_seconds": round(result["ingest"]["cpu_seconds"] + result["sessionize"]["cpu_seconds"], 1),
        "peak_rss_gib": max(result["ingest"]["peak_rss_gib"], result["sessionize"]["peak_rss_gib"]),
        "load_after": max(result["ingest"]["load_after"], result["sessionize"]["load_after"]),
    }


def pandas_run(data: dict, workdir: Path, tag: str, settings: list[str]) -> dict:
    """The pandas reference as a subprocess, with the Spark path's settings; its JSON summary
    merged into the measurement."""
    out = workdir / "logs" / tag / "pandas-sessions.parquet"
    cmd = [sys.executable, "bench/pandas_reference.py", data["folder"], "--out", str(out),
           "--conf", "conf/local.yaml", *(a for kv in settings for a in ("--set", kv))]
    result = measure(cmd, workdir / "logs" / tag / "pandas.log")
    summary = json.loads(result.pop("stdout").strip().splitlines()[-1])
    return result | summary | {"parquet": str(out)}


def compare(spark: dict, pandas: dict) -> dict:
    """Session-by-session comparison of the two outputs, keyed by user and start time."""
    from deltalake import DeltaTable

    cols = ["user_id", "start_ts", "n_events", "n_visits", "sequence_text", "is_bot"]
    a = DeltaTable(spark["sessions_table"]).to_pandas(columns=cols)
    b = pd.read_parquet(pandas["parquet"], columns=cols)
    for df in (a, b):
        df["start_ts"] = pd.to_datetime(df["start_ts"], utc=True).astype("datetime64[us, UTC]")
    both = a.merge(b, on=["user_id", "start_ts"], how="outer", suffixes=("_spark", "_pandas"),
                   indicator=True)
    out = {"only_spark": int((both["_merge"] == "left_only").sum()),
           "only_pandas": int((both["_merge"] == "right_only").sum())}
    matched = both[both["_merge"] == "both"]
    for col in cols[2:]:
        differ = matched[matched[f"{col}_spark"] != matched[f"{col}_pandas"]]
        out[f"{col}_differs"] = len(differ)
        if len(differ):
            row = differ.iloc[0]
            out[f"{col}_example"] = {k: str(row[k]) for k in
                                     ("user_id", "start_ts", f"{col}_spark", f"{col}_pandas")}
    return out


def median(runs: list[dict], key: str = "seconds") -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def bench_size(target: int, args: argparse.Namespace, spark_start: dict) -> dict:
    """Both paths on one size, interleaved run by run; outputs compared on the first run."""
    data = dataset(target, args.workdir)
    print(f"\n== {data['events']:,} events of {data['users']:,} users over {data['days']} days, "
          f"{data['files']} files, {data['gzip_mb']} MB gzip; synth planted "
          f"{data['true_sessions']:,} sessions", flush=True)
    with_pandas = args.skip_pandas_above is None or data["events"] <= args.skip_pandas_above
    spark_runs: list[dict] = []
    pandas_runs: list[dict] = []
    failures: list[str] = []
    check = None
    for r in range(args.repeats):
        tag = f"{data['events']}-r{r}"
        try:
            s = spark_run(data, args.workdir, tag, args.set)
            spark_runs.append(s)
            print(f"  run {r}: spark ingest {s['ingest']['seconds']} s + sessionize "
                  f"{s['sessionize']['seconds']} s = {s['seconds']} s; {s['events']:,} events, "
                  f"{s['rejected']:,} rejected, {s['sessions']:,} sessions "
                  f"({s['bot_sessions']:,} bot); peak {s['peak_rss_gib']} GiB", flush=True)
        except RuntimeError as exc:  # recorded and reported: a failure at scale is a result
            s = None
            failures.append(str(exc))
            print(f"  run {r}: spark FAILED, {exc}", flush=True)
        if with_pandas:
            p = pandas_run(data, args.workdir, tag, args.set)
            pandas_runs.append(p)
            print(f"  run {r}: pandas {p['seconds']} s {p['phase_seconds']}; "
                  f"{p['events']:,} events, {p['rejected']:,} rejected, {p['sessions']:,} sessions "
                  f"({p['bot_sessions']:,} bot); peak {p['peak_rss_gib']} GiB", flush=True)
            if check is None and s is not None:
                check = compare(s, p)
                print(f"  check: {check}", flush=True)
        shutil.rmtree(args.workdir / "lakes" / tag, ignore_errors=True)
    return {"target": target, "repeats": args.repeats, "settings": args.set,
            "spark_start": spark_start, "data": data, "spark": spark_runs,
            "spark_failures": failures, "pandas": pandas_runs, "check": check}


def machine() -> dict:
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1]) / 2**20
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    return {"nproc": os.cpu_count(), "memory_gib": round(mem, 1), "cpu": cpu[1] if cpu else "?",
            "python": sys.version.split()[0]}


def report(results: dict) -> str:
    """The plain table, Spark's time per query, cost growth and a markdown table for the docs."""
    m, sizes = results["machine"], results["sizes"]
    text = [f"machine: {m}", "spark start = python -c: JVM + session + 1 trivial job, paid by each "
            "of ingest and sessionize; CPU s = CPU time of the process tree; load = highest "
            "1-minute load average after a run (2 cores: above 2, other work competed)",
            f"{'events':>12} {'path':<15} {'runs':>4} {'median s':>9} {'events/s':>10} "
            f"{'CPU s':>7} {'peak GiB':>9} {'pandas/spark':>12} {'load':>5}"]
    md = []
    for size in sizes:
        ev, sp, pr, n = size["data"]["events"], size["spark"], size["pandas"], size["repeats"]
        runs = {"spark total": sp, "  ingest": [r["ingest"] for r in sp],
                "  sessionize": [r["sessionize"] for r in sp],
                "  (spark start)": [size["spark_start"]], "pandas": pr}
        for name, rs in runs.items():
            if rs:
                sec, cpu = median(rs), median(rs, "cpu_seconds")
                ratio = f"{sec / median(sp):.2f}" if name == "pandas" and sp else ""
                rate = "-" if "start" in name else f"{ev / sec:,.0f}"
                text.append(f"{ev:>12,} {name:<15} {len(rs):>4} {sec:>9.1f} {rate:>10} {cpu:>7.1f} "
                            f"{max(r['peak_rss_gib'] for r in rs):>9.2f} {ratio:>12} "
                            f"{max(r['load_after'] for r in rs):>5}")
        text += [f"{ev:>12,} spark FAILED    {f}" for f in size.get("spark_failures", [])]
        spark_md = (f"{median(sp):.1f} s (ingest {median(runs['  ingest']):.1f} + sessionize "
                    f"{median(runs['  sessionize']):.1f})" if sp else
                    f"failed: {size['spark_failures'][0].split(' (')[0]}")
        settings = "".join(f" --set {kv}" for kv in size.get("settings") or [])
        md.append(f"| `python bench/sessionize.py --events {size['target']} --repeats {n}{settings}` "
                  f"| {ev:,} GA4 events, {size['data']['files']} daily .json.gz "
                  f"({size['data']['gzip_mb']} MB) | {m['nproc']} cores, {m['memory_gib']} GiB "
                  f"| {spark_md} | {f'{median(pr):.1f} s' if pr else 'not run'} "
                  f"| {f'{median(pr) / median(sp):.2f}' if pr and sp else 'n/a'} |")
        for stage in ("ingest", "sessionize") if sp else ():
            run = sp[-1][stage]
            tl = run["timeline"]
            text.append(f"  spark {stage} (last run): {run['seconds']} s process, "
                        f"{tl['app_seconds']:.1f} s Spark application, "
                        f"{tl['setup_seconds']:.1f} s of it before the first query")
            text += [f"    {q.get('seconds', 0):>7.1f} s {q['stages']:>3} stages "
                     f"{q['tasks']:>4} tasks  {q['query']}" for q in tl["queries"]]
    a, b = sizes[0], sizes[-1]
    scale = b["data"]["events"] / a["data"]["events"]
    growth = [f"{path} {median(b[path]) / median(a[path]):.1f}x time"
              for path in ("spark", "pandas") if a[path] and b[path]]
    if len(sizes) > 1 and growth:
        text.append(f"cost growth {a['data']['events']:,} -> {b['data']['events']:,} events "
                    f"({scale:.1f}x data): " + ", ".join(growth))
    text += ["", f"markdown (medians; {m['cpu']}, Python {m['python']}, Spark local[2] with "
             "conf/local.yaml):",
             "| command | data | machine | Spark: ingest + sessionize | pandas reference "
             "| pandas / Spark |", "|---|---|---|---|---|---|", *md]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--skip-pandas-above", type=int, metavar="N",
                        help="run the pandas reference only on sizes of at most N events")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="setting for both beha2vec commands, e.g. spark.driver_memory=12g")
    parser.add_argument("--report", action="store_true",
                        help="only print the report of WORKDIR/results.json")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    path = args.workdir / "results.json"
    if args.report:
        print(report(json.loads(path.read_text())))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    starts = [measure([sys.executable, "-c", SPARK_START], args.workdir / "logs" / f"start-{i}.log")
              for i in range(args.repeats)]
    print(f"trivial Spark start: {median(starts)} s", flush=True)
    earlier = json.loads(path.read_text())["sizes"] if path.exists() else []
    results = {"machine": machine(),
               "sizes": [s for s in earlier if s["target"] not in args.events]}
    start = {"seconds": median(starts), "cpu_seconds": median(starts, "cpu_seconds"),
             "peak_rss_gib": max(s["peak_rss_gib"] for s in starts),
             "load_after": max(s["load_after"] for s in starts)}
    for target in args.events:
        results["sizes"].append(bench_size(target, args, start))
        results["sizes"].sort(key=lambda s: s["data"]["events"])
        path.write_text(json.dumps(results, indent=1, default=str))
    results["report"] = report(results)
    path.write_text(json.dumps(results, indent=1, default=str))
    print("\n" + results["report"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
