"""Benchmark: GA4 export to sessions, the Spark path against a single-process pandas reference.

Why: the project claims Spark is worth its start-up cost; this measures it on the machine at hand.
For each size it generates synthetic GA4 data once (cached in the work folder), then runs, side by
side and ``--repeats`` times each, in fresh subprocesses so that start-up is paid as a user pays it:

* Spark: ``beha2vec ingest --source ga4 DIR`` then ``beha2vec sessionize`` on a fresh lake;
* pandas: ``bench/pandas_reference.py DIR`` (same rules, one process).

It reports medians, events/s, the pandas/Spark ratio, how time grows with size, the peak memory of
each subprocess tree (sampled from /proc, so the JVM and forked Python workers count), a trivial
Spark start for reference, Spark's slowest stages (from its event log) and a session-by-session
comparison of the two outputs on the first repeat. Results go to ``WORKDIR/results.json``.

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


def tree_rss(root: int) -> int:
    """Summed resident memory (bytes) of ``root`` and its descendants (JVM, Python workers)."""
    parent, rss = {}, {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry.name)], rss[int(entry.name)] = int(fields[1]), int(fields[21]) * PAGE
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [c for c, p in parent.items() if p == pid and c not in tree]
    return sum(rss.get(p, 0) for p in tree)


def measure(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` (output to ``log``): wall and CPU seconds, peak tree RSS, its output."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=os.environ | ENV)
        peak = [0]

        def sample() -> None:
            while proc.returncode is None:
                peak[0] = max(peak[0], tree_rss(proc.pid))
                time.sleep(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        sampler.join()
    text = log.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}); see {log}:\n{text[-3000:]}")
    return {"seconds": round(wall, 2), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_gib": round(peak[0] / 2**30, 2), "stdout": text}


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


def stage_timings(events_dir: Path, top: int = 6) -> list[dict]:
    """The slowest stages of one Spark application: seconds, tasks, name (Python call site)."""
    stages = []
    for log in events_dir.rglob("*"):
        for line in log.open() if log.is_file() else ():
            if '"SparkListenerStageCompleted"' in line:
                info = json.loads(line)["Stage Info"]
                seconds = (info.get("Completion Time", 0) - info["Submission Time"]) / 1000
                stages.append({"seconds": seconds, "tasks": info["Number of Tasks"],
                               "stage": info["Stage ID"], "name": info["Stage Name"]})
    return sorted(stages, key=lambda s: -s["seconds"])[:top]


def spark_run(data: dict, workdir: Path, tag: str) -> dict:
    """Ingest then sessionize on a fresh lake, each a ``beha2vec`` subprocess with an event log."""
    lake, logs = workdir / "lakes" / tag, workdir / "logs" / tag
    shutil.rmtree(lake, ignore_errors=True)
    result: dict = {"lake": str(lake)}
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
               "--conf", str(conf), "--lake", str(lake), *args]
        result[stage] = measure(cmd, logs / f"{stage}.log")
        result[stage]["stages"] = stage_timings(events_dir)
    num = lambda text: int(text.replace(",", ""))  # noqa: E731
    m = re.search(r"ingest: ([\d,]+) records -> ([\d,]+) events, ([\d,]+) rejected",
                  result["ingest"].pop("stdout"))
    s = re.search(r"sessionize: [\d,]+ events -> ([\d,]+) sessions \(([\d,]+) of bot",
                  result["sessionize"].pop("stdout"))
    return result | {
        "records": num(m[1]), "events": num(m[2]), "rejected": num(m[3]), "sessions": num(s[1]),
        "bot_sessions": num(s[2]),
        "seconds": round(result["ingest"]["seconds"] + result["sessionize"]["seconds"], 2),
        "peak_rss_gib": max(result["ingest"]["peak_rss_gib"], result["sessionize"]["peak_rss_gib"]),
    }


def pandas_run(data: dict, workdir: Path, tag: str) -> dict:
    """The pandas reference as a subprocess; its JSON summary merged into the measurement."""
    out = workdir / "logs" / tag / "pandas-sessions.parquet"
    cmd = [sys.executable, "bench/pandas_reference.py", data["folder"], "--out", str(out)]
    result = measure(cmd, workdir / "logs" / tag / "pandas.log")
    summary = json.loads(result.pop("stdout").strip().splitlines()[-1])
    return result | summary | {"parquet": str(out)}


def compare(spark: dict, pandas: dict) -> dict:
    """Session-by-session comparison of the two outputs, keyed by user and start time."""
    from deltalake import DeltaTable

    cols = ["user_id", "start_ts", "n_events", "n_visits", "sequence_text", "is_bot"]
    a = DeltaTable(f"{spark['lake']}/sessions").to_pandas(columns=cols)
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


def bench_size(target: int, args: argparse.Namespace) -> dict:
    """Both paths on one size, interleaved run by run; outputs compared on the first run."""
    data = dataset(target, args.workdir)
    print(f"\n== {data['events']:,} events of {data['users']:,} users over {data['days']} days, "
          f"{data['files']} files, {data['gzip_mb']} MB gzip; synth planted "
          f"{data['true_sessions']:,} sessions", flush=True)
    with_pandas = args.skip_pandas_above is None or data["events"] <= args.skip_pandas_above
    spark_runs: list[dict] = []
    pandas_runs: list[dict] = []
    check = None
    for r in range(args.repeats):
        tag = f"{data['events']}-r{r}"
        s = spark_run(data, args.workdir, tag)
        spark_runs.append(s)
        print(f"  run {r}: spark ingest {s['ingest']['seconds']} s + sessionize "
              f"{s['sessionize']['seconds']} s = {s['seconds']} s; {s['events']:,} events, "
              f"{s['rejected']:,} rejected, {s['sessions']:,} sessions "
              f"({s['bot_sessions']:,} bot); peak {s['peak_rss_gib']} GiB", flush=True)
        if with_pandas:
            p = pandas_run(data, args.workdir, tag)
            pandas_runs.append(p)
            print(f"  run {r}: pandas {p['seconds']} s {p['phase_seconds']}; "
                  f"{p['events']:,} events, {p['rejected']:,} rejected, {p['sessions']:,} sessions "
                  f"({p['bot_sessions']:,} bot); peak {p['peak_rss_gib']} GiB", flush=True)
            if r == 0:
                check = compare(s, p)
                print(f"  check: {check}", flush=True)
        shutil.rmtree(s.pop("lake"), ignore_errors=True)
    return {"target": target, "data": data, "spark": spark_runs, "pandas": pandas_runs,
            "check": check}


def machine() -> dict:
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1]) / 2**20
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    return {"nproc": os.cpu_count(), "memory_gib": round(mem, 1), "cpu": cpu[1] if cpu else "?",
            "python": sys.version.split()[0]}


def report(results: dict) -> str:
    """The plain table, Spark's slowest stages, cost growth and a markdown table for the docs."""
    m, sizes, n = results["machine"], results["sizes"], results["repeats"]
    text = [f"machine: {m}",
            f"trivial Spark start (python -c: JVM + session + 1 job): "
            f"{results['spark_start']['median_seconds']} s median, "
            f"{results['spark_start']['peak_rss_gib']} GiB",
            f"{'events':>12} {'path':<15} {'median s':>9} {'events/s':>10} {'peak GiB':>9} "
            f"{'pandas/spark':>12}"]
    md = []
    for size in sizes:
        ev, sp, pr = size["data"]["events"], size["spark"], size["pandas"]
        ingest = statistics.median(r["ingest"]["seconds"] for r in sp)
        sessionize = statistics.median(r["sessionize"]["seconds"] for r in sp)
        rows = [("spark total", median(sp), max(r["peak_rss_gib"] for r in sp)),
                ("  ingest", ingest, max(r["ingest"]["peak_rss_gib"] for r in sp)),
                ("  sessionize", sessionize, max(r["sessionize"]["peak_rss_gib"] for r in sp))]
        if pr:
            rows.append(("pandas", median(pr), max(r["peak_rss_gib"] for r in pr)))
        for name, sec, rss in rows:
            ratio = f"{sec / median(sp):.2f}" if name == "pandas" else ""
            text.append(f"{ev:>12,} {name:<15} {sec:>9.1f} {ev / sec:>10,.0f} {rss:>9.2f} "
                        f"{ratio:>12}")
        pandas_md = f"{median(pr):.1f} s" if pr else "not run (--skip-pandas-above)"
        ratio_md = f"{median(pr) / median(sp):.2f}" if pr else "n/a"
        md.append(f"| `python bench/sessionize.py --events {size['target']} --repeats {n}` "
                  f"| {ev:,} GA4 events, {size['data']['files']} daily .json.gz "
                  f"({size['data']['gzip_mb']} MB) | {m['nproc']} cores, {m['memory_gib']} GiB "
                  f"| {median(sp):.1f} s (ingest {ingest:.1f} + sessionize {sessionize:.1f}) "
                  f"| {pandas_md} | {ratio_md} |")
    for size in sizes:
        for stage in ("ingest", "sessionize"):
            text.append(f"slowest Spark stages, {stage} of {size['data']['events']:,} events "
                        "(last run):")
            text += [f"  {s['seconds']:>7.1f} s {s['tasks']:>4} tasks  stage {s['stage']}: "
                     f"{s['name']}" for s in size["spark"][-1][stage]["stages"]]
    if len(sizes) > 1:
        a, b = sizes[0], sizes[-1]
        scale = b["data"]["events"] / a["data"]["events"]
        text.append(f"cost growth {a['data']['events']:,} -> {b['data']['events']:,} events "
                    f"({scale:.1f}x data): spark "
                    f"{median(b['spark']) / median(a['spark']):.1f}x time"
                    + (f", pandas {median(b['pandas']) / median(a['pandas']):.1f}x time"
                       if a["pandas"] and b["pandas"] else ""))
    text += ["", f"markdown (median of {n} runs; {m['cpu']}, Python {m['python']}, Spark "
             "local[2] with conf/local.yaml):",
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
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    starts = [measure([sys.executable, "-c", SPARK_START], args.workdir / "logs" / f"start-{i}.log")
              for i in range(args.repeats)]
    results = {"machine": machine(), "repeats": args.repeats, "argv": sys.argv,
               "spark_start": {"median_seconds": median(starts),
                               "peak_rss_gib": max(s["peak_rss_gib"] for s in starts)},
               "sizes": []}
    print(f"trivial Spark start: {results['spark_start']['median_seconds']} s", flush=True)
    for target in args.events:
        results["sizes"].append(bench_size(target, args))
        (args.workdir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    results["report"] = report(results)
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print("\n" + results["report"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
