"""Benchmark: the project's MLlib k sweep against scikit-learn on the driver, same data, same grid.

Why: the cluster stage fits Spark MLlib KMeans and BisectingKMeans for every k in
``k_min..k_max`` and every seed (``beha2vec.cluster.sweep``), scores each by MLlib's silhouette,
measures stability between seeds and chooses k. Aim (issue): within 2x of scikit-learn at 1M users
here, with equal or better silhouette, and still working when the vectors exceed the driver's
memory. This measures it, in one run per size:

* Data: a seeded Gaussian mixture of 8 planted clusters of unequal sizes and spreads, 64 dims,
  float32, written once as parquet (``user_id string, vector array<float>``, as ``user_vectors``)
  under ``bench/out/cluster/data/``; Spark reads the parquet, scikit-learn gets the same rows as
  one numpy array (its load time is reported apart and not counted).
* Spark: ``sweep`` with the project's default ``ClusterConfig`` except the k range, the seeds and
  the algorithms given here, timed end to end (count, sampling, packing, every fit, evaluator,
  stability, choice), in a fresh process per size (Spark start reported apart).
* scikit-learn: the same (algorithm, k, seed) grid with ``KMeans(n_init=1, init='k-means++')`` and
  ``BisectingKMeans`` (same ``max_iter``, ``tol``, ``random_state=seed``); the silhouette is
  MLlib's own formula (squared euclidean, exact, O(n.k.d), see ``silhouette``; cross-checked
  against ``ClusteringEvaluator`` on Spark's chosen labels in every Spark run); the stability is
  ``beha2vec.cluster.stability`` on the same sample of users as Spark's; k comes from
  ``beha2vec.cluster.choose``. Timed end to end, in a fresh process.
* Work floor: Lloyd iterations cost about 3.n.k.d FLOPs (distances) each, summed over the KMeans
  fits' actual iterations, plus one silhouette pass (about 2.n.k.d) per fit of either algorithm;
  BisectingKMeans' own iterations are not counted (MLlib does not report them). Practical peak: a
  float32 numpy 4096x4096 matmul on this machine, best of 5.
* ``--beyond-memory``: the Spark sweep on a reduced grid (kmeans, one k, one seed) over data larger
  than ``spark.driver.memory`` (local mode: the driver's heap is the executors' too), in its own
  process with a time limit: did it complete, in how long. scikit-learn would need the whole array
  in memory (n.d.4 bytes as float32, n.d.8 as float64).

    python bench/cluster.py [--users 100000 1000000] [--repeats 3] [--quick] [--beyond-memory]
        [--spark-repeats N] [--spark-conf KEY=VALUE] [--cluster-set KEY=VALUE]
        [--variant uncached-input] [--report]

``--variant uncached-input`` measures an alternative, not the project's code: each fit reads the
parquet itself instead of the sweep's prepared input (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "cluster"
ENV = {"PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
DIMS = 64
WEIGHTS = [0.30, 0.20, 0.15, 0.12, 0.09, 0.07, 0.045, 0.025]  # planted cluster shares
SPREADS = [1.0, 0.6, 1.3, 0.8, 1.5, 0.7, 1.1, 0.9]  # per-dimension standard deviation
CENTRE_SCALE = 1.2
DEFAULT_SEEDS = [42, 99, 1337, 7, 2024]  # ClusterConfig's
CHUNK = 250_000


def load() -> float:
    """The 1-minute load average; above 2 here, other work competed for the 2 cores."""
    return round(os.getloadavg()[0], 2)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


# --- data -------------------------------------------------------------------------------------

def data_dir(users: int) -> Path:
    return OUT / "data" / f"gmm-{users}u-{DIMS}d-seed0"


def make_data(users: int) -> Path:
    """Write the mixture once (chunked, so any size fits in memory); the truth beside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = data_dir(users)
    if (folder / "truth.npy").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, CENTRE_SCALE, (len(WEIGHTS), DIMS))
    truth = rng.choice(len(WEIGHTS), size=users, p=WEIGHTS).astype(np.int8)
    writer = None
    for start in range(0, users, CHUNK):
        labels = truth[start:start + CHUNK]
        noise = rng.standard_normal((len(labels), DIMS)) * np.asarray(SPREADS)[labels, None]
        x = (centres[labels] + noise).astype(np.float32)
        ids = pa.array([f"u{i:09d}" for i in range(start, start + len(labels))])
        offsets = pa.array(np.arange(0, x.size + 1, DIMS, dtype=np.int32))
        vectors = pa.ListArray.from_arrays(offsets, pa.array(x.ravel(), type=pa.float32()))
        table = pa.table({"user_id": ids, "vector": vectors})
        if writer is None:
            writer = pq.ParquetWriter(folder / "part-0.parquet", table.schema)
        writer.write_table(table, row_group_size=CHUNK)
    writer.close()
    np.save(folder / "truth.npy", truth)
    return folder


def read_array(folder: Path) -> np.ndarray:
    """The vectors as one (n, 64) float32 array, in ``user_id`` order (the file's order)."""
    import pyarrow.parquet as pq

    column = pq.read_table(folder / "part-0.parquet", columns=["vector"])["vector"].combine_chunks()
    return column.values.to_numpy().reshape(-1, DIMS)


# --- MLlib's silhouette in numpy ----------------------------------------------------------------

def silhouette(x: np.ndarray, labels: np.ndarray, chunk: int = 200_000) -> float:
    """MLlib ``ClusteringEvaluator`` (squared euclidean): the mean squared distance of point x to
    cluster c is ||x||^2 - 2 x.mean_c + mean_{y in c} ||y||^2; the own cluster's mean is scaled by
    N/(N-1) to leave the point out; a point alone in its cluster scores 0. Float64, exact."""
    k = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros((k, x.shape[1]))
    norm_sums = np.zeros(k)
    for s in range(0, len(x), chunk):
        xc, lc = x[s:s + chunk].astype(np.float64), labels[s:s + chunk]
        np.add.at(sums, lc, xc)
        norm_sums += np.bincount(lc, weights=np.einsum("ij,ij->i", xc, xc), minlength=k)
    present = counts > 0
    means = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=present[:, None])
    mean_norms = np.divide(norm_sums, counts, out=np.zeros_like(norm_sums), where=present)
    total = 0.0
    for s in range(0, len(x), chunk):
        xc, lc = x[s:s + chunk].astype(np.float64), labels[s:s + chunk]
        d = np.einsum("ij,ij->i", xc, xc)[:, None] - 2 * xc @ means.T + mean_norms[None, :]
        d[:, ~present] = np.inf
        rows = np.arange(len(lc))
        own_n = counts[lc]
        a = d[rows, lc] * own_n / np.maximum(own_n - 1, 1)
        d[rows, lc] = np.inf
        b = d.min(axis=1)
        score = np.where(a < b, 1 - a / b, np.where(a > b, b / a - 1, 0.0))
        total += float(np.where(own_n == 1, 0.0, score).sum())
    return total / len(x)


def peak_gflops() -> float:
    """Best float32 numpy matmul rate (4096^2, all threads), best of 5."""
    n = 4096
    a, b = np.ones((n, n), np.float32), np.ones((n, n), np.float32)
    a @ b
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return round(2 * n**3 / best / 1e9, 1)


def floor_flops(scores: list[dict], n: int) -> float:
    """3.n.k.d per Lloyd iteration of KMeans fits plus 2.n.k.d per fit for the silhouette."""
    total = 0.0
    for s in scores:
        if s["algorithm"] == "kmeans":
            total += 3 * n * s["k"] * DIMS * s["iterations"]
        total += 2 * n * s["k"] * DIMS
    return total


# --- workers (each in a fresh process) ----------------------------------------------------------

def cluster_conf(args):
    from beha2vec.config import ClusterConfig

    seeds = (DEFAULT_SEEDS + list(range(10_000, 10_000 + args.seeds)))[:args.seeds]
    conf = ClusterConfig(k_min=args.kmin, k_max=args.kmax, seeds=seeds, algorithms=args.algorithms)
    for item in args.cluster_set:
        key, value = item.split("=", 1)
        setattr(conf, key, type(getattr(conf, key))(value))
    return conf


def sample_ids_path(folder: Path, conf) -> Path:
    return folder / f"sample-{conf.seeds[0]}-{conf.stability_sample}.npy"


def patch_uncached_input(vectors) -> None:
    """Variant (not the project's code): every fit gets the vectors straight from the parquet, not
    the sweep's prepared input (one local-checkpointed partition below ``PACK_BELOW`` users), so
    the cost of reading and packing per fit can be compared (docs/benchmarks.md)."""
    from pyspark.ml.functions import array_to_vector

    import beha2vec.cluster as project

    original = project.fit_one

    def fit_one(data, sample, algorithm, k, seed, conf):
        fresh = vectors.select("user_id", array_to_vector("vector").alias("features"))
        return original(fresh, sample, algorithm, k, seed, conf)

    project.fit_one = fit_one


def spark_worker(args) -> dict:
    """``--repeats`` timed ``sweep`` calls in one Spark session, then checks on the last one."""
    started = time.perf_counter()
    from sklearn.metrics import adjusted_rand_score

    from beha2vec.cluster import sweep
    from beha2vec.config import SparkConfig
    from beha2vec.spark import get_spark

    extra = dict(item.split("=", 1) for item in args.spark_conf)
    spark = get_spark(SparkConfig(driver_memory=args.driver_memory, progress_bar=False, extra=extra))
    start_s = time.perf_counter() - started
    folder, conf = data_dir(args.users[0]), cluster_conf(args)
    vectors = spark.read.parquet(str(folder / "part-0.parquet"))
    if args.variant == "uncached-input":
        patch_uncached_input(vectors)
    sc = spark.sparkContext
    tiny = []
    for _ in range(20):  # the fixed cost of one small job in this session
        t = time.perf_counter()
        sc.parallelize([1], 1).count()
        tiny.append(time.perf_counter() - t)
    runs, first = [], time.perf_counter()
    for _ in range(args.repeats):
        if runs and time.perf_counter() - first + runs[-1]["seconds"] > args.spark_budget:
            break  # another repeat would overrun the time budget: fewer runs, said in the report
        before, jobs_before = load(), max(sc.statusTracker().getJobIdsForGroup() or [0])
        t = time.perf_counter()
        scores, chosen = sweep(vectors, conf, "bench")
        seconds = time.perf_counter() - t
        jobs = max(sc.statusTracker().getJobIdsForGroup() or [0]) - jobs_before
        runs.append({"seconds": round(seconds, 2), "load": [before, load()], "jobs": jobs})
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    result = {"start_s": round(start_s, 1), "tiny_job_s": median(tiny), "runs": runs,
              "scores": scores.to_dict("records"), "chosen": {}}
    if args.beyond_memory:
        return result
    from pyspark.sql import functions as F

    sample = (vectors.orderBy(F.xxhash64(F.lit(conf.seeds[0]), "user_id"), "user_id")
              .limit(conf.stability_sample).select("user_id").toPandas()["user_id"])
    np.save(sample_ids_path(folder, conf), np.sort(sample.str[1:].astype(np.int64).to_numpy()))
    truth, x = np.load(folder / "truth.npy"), read_array(folder)
    from pyspark.ml.functions import array_to_vector

    data = vectors.select("user_id", array_to_vector("vector").alias("features"))
    for algorithm, fit in chosen.items():
        labels = (fit.model.transform(data).select("user_id", "prediction").orderBy("user_id")
                  .toPandas()["prediction"].to_numpy().astype(np.int64))
        result["chosen"][algorithm] = {
            "k": fit.k, "seed": fit.seed, "silhouette": fit.silhouette,
            "ari_truth": float(adjusted_rand_score(truth, labels)),
            "numpy_silhouette_of_spark_labels": silhouette(x, labels)}
    return result


def sklearn_worker(args) -> dict:
    """``--repeats`` timed sweeps of the same grid with scikit-learn on one in-memory array."""
    import pandas as pd
    from sklearn.cluster import BisectingKMeans, KMeans
    from sklearn.metrics import adjusted_rand_score

    from beha2vec.cluster import choose, stability

    folder, conf = data_dir(args.users[0]), cluster_conf(args)
    t = time.perf_counter()
    x = read_array(folder)
    read_s = time.perf_counter() - t
    ids = sample_ids_path(folder, conf)
    if ids.exists():
        sample, sample_from = np.load(ids), "spark"
    else:
        rng = np.random.default_rng(conf.seeds[0])
        sample = np.sort(rng.choice(len(x), min(conf.stability_sample, len(x)), replace=False))
        sample_from = "random"
    ks = [k for k in range(conf.k_min, conf.k_max + 1) if k < len(x)]
    runs = []
    for _ in range(args.repeats):
        before, t = load(), time.perf_counter()
        rows, labels = [], {}
        for algorithm in conf.algorithms:
            for k in ks:
                for seed in conf.seeds:
                    f = time.perf_counter()
                    if algorithm == "kmeans":
                        model = KMeans(k, init="k-means++", n_init=1, max_iter=conf.max_iter, tol=conf.tol,
                                       random_state=seed).fit(x)
                        iterations = int(model.n_iter_)
                    else:
                        model = BisectingKMeans(k, max_iter=conf.max_iter, tol=conf.tol,
                                                random_state=seed).fit(x)
                        iterations = conf.max_iter
                    labels[algorithm, k, seed] = model.labels_
                    sizes = np.bincount(model.labels_, minlength=k)
                    rows.append({"algorithm": algorithm, "k": k, "seed": seed,
                                 "silhouette": silhouette(x, model.labels_), "cost": float(model.inertia_),
                                 "iterations": iterations, "fit_s": time.perf_counter() - f,
                                 "smallest": int(sizes.min()), "largest": int(sizes.max())})
        scores = pd.DataFrame(rows)
        scores["stability"] = np.nan
        for (algorithm, k), at in scores.groupby(["algorithm", "k"]).groups.items():
            scores.loc[at, "stability"] = stability([labels[algorithm, k, s][sample] for s in conf.seeds])
        chosen = {a: choose(g, conf.min_stability) for a, g in scores.groupby("algorithm")}
        seconds = time.perf_counter() - t
        runs.append({"seconds": round(seconds, 2), "load": [before, load()]})
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    truth = np.load(folder / "truth.npy")
    return {"read_s": round(read_s, 2), "sample_from": sample_from, "runs": runs,
            "scores": scores.to_dict("records"),
            "chosen": {a: {"k": k, "seed": s, "stable": st,
                           "silhouette": float(scores.query("algorithm == @a and k == @k and seed == @s")
                                               ["silhouette"].iloc[0]),
                           "ari_truth": float(adjusted_rand_score(truth, labels[a, k, s]))}
                       for a, (k, s, st) in chosen.items()}}


def in_subprocess(task: str, args, users: int, extra: list[str] = (), timeout: float | None = None) -> dict:
    """A worker in a fresh interpreter; its JSON, or why it did not finish."""
    cmd = [sys.executable, __file__, "--worker", task, "--users", str(users), "--kmin", str(args.kmin),
           "--kmax", str(args.kmax), "--seeds", str(args.seeds), "--repeats", str(args.repeats),
           "--driver-memory", args.driver_memory, "--spark-budget", str(args.spark_budget),
           "--variant", args.variant, "--algorithms", *args.algorithms, *extra]
    for item in args.cluster_set:
        cmd += ["--cluster-set", item]
    for item in args.spark_conf:
        cmd += ["--spark-conf", item]
    log = OUT / "logs" / f"{task}-{users}{'-beyond' if extra else ''}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    before, t = load(), time.perf_counter()
    with log.open("w") as err:
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=os.environ | ENV,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"completed": False, "error": f"timed out after {timeout} s", "load": [before, load()]}
    wall = round(time.perf_counter() - t, 1)
    if proc.returncode != 0:
        return {"completed": False, "error": log.read_text()[-3000:], "wall_s": wall,
                "load": [before, load()]}
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"completed": True, "process_wall_s": wall}


# --- the report -------------------------------------------------------------------------------

def summarise(path: dict, n: int, peak: float) -> dict:
    """Median seconds, per fit, work floor and its rate against the peak."""
    seconds = median([r["seconds"] for r in path["runs"]])
    fits = len(path["scores"])
    flops = floor_flops(path["scores"], n)
    return {"median_s": seconds, "fits": fits, "s_per_fit": round(seconds / fits, 3),
            "floor_gflop": round(flops / 1e9, 1), "gflops": round(flops / seconds / 1e9, 2),
            "share_of_peak": round(flops / seconds / 1e9 / peak, 4),
            "kmeans_iterations": int(sum(s["iterations"] for s in path["scores"]
                                         if s["algorithm"] == "kmeans")),
            "loads": [r["load"] for r in path["runs"]]}


def report(results: dict) -> str:
    lines = [f"peak float32 matmul, latest run: {results['peak_gflops']} GFLOP/s"]
    for size in results["sizes"]:
        n, grid = size["users"], size["grid"]
        lines += ["", f"{n:,} users x {DIMS} dims; k {grid['kmin']}-{grid['kmax']}, {grid['seeds']} seeds, "
                      f"{', '.join(grid['algorithms'])}"
                      + (f"; Spark variant {grid['variant']}" if grid.get("variant") else "")
                      + f"; peak in this run {size.get('peak_gflops', results['peak_gflops'])} GFLOP/s",
                  "| path | fits | runs | median s | s/fit | chosen k | silhouette | ARI vs truth | "
                  "floor GFLOP | GFLOP/s | share of peak | load |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name in ("spark", "sklearn"):
            path = size.get(name)
            if not path:
                continue
            if not path.get("completed"):
                lines.append(f"| {name} | did not complete: {path.get('error', '')[:200]!r} |")
                continue
            s = path["summary"]
            ch = path["chosen"]
            loads = [x for pair in s["loads"] for x in pair]
            lines.append(
                f"| {name} | {s['fits']} | {len(s['loads'])} | {s['median_s']} | {s['s_per_fit']} | "
                + " | ".join("; ".join(f"{a}: {ch[a][key]:.3f}" if isinstance(ch[a][key], float) else
                                       f"{a}: {ch[a][key]}" for a in sorted(ch))
                             for key in ("k", "silhouette", "ari_truth"))
                + f" | {s['floor_gflop']} | {s['gflops']} | {s['share_of_peak']:.1%} | "
                  f"{min(loads)}-{max(loads)} |")
        if size.get("spark", {}).get("completed") and size.get("sklearn", {}).get("completed"):
            sp, sk = size["spark"], size["sklearn"]
            ratio = sp["summary"]["median_s"] / sk["summary"]["median_s"]
            diffs = {a: round(sp["chosen"][a]["silhouette"] - sk["chosen"][a]["silhouette"], 4)
                     for a in sp["chosen"] if a in sk["chosen"]}
            lines.append(f"Spark / scikit-learn time: {ratio:.2f}x; "
                         f"silhouette Spark - sklearn at the chosen k: {diffs}")
            size["ratio"], size["silhouette_diff"] = round(ratio, 3), diffs
        if size.get("spark", {}).get("completed"):
            sp = size["spark"]
            checks = {a: round(c["silhouette"] - c["numpy_silhouette_of_spark_labels"], 6)
                      for a, c in sp["chosen"].items()}
            runs = sp["runs"]
            lines.append(f"Spark start {sp['start_s']} s (not counted); jobs per sweep {runs[-1]['jobs']}; "
                         f"tiny job {sp['tiny_job_s']} s; "
                         f"MLlib - numpy silhouette on Spark's labels: {checks}")
    if results.get("beyond_memory"):
        b = results["beyond_memory"]
        lines += ["", f"beyond memory: {b['users']:,} users x {DIMS} ({b['parquet_gib']} GiB parquet, "
                      f"{b['float32_gib']} GiB as float32, {b['float64_gib']} GiB as float64) "
                      f"with driver memory {b['driver_memory']}, kmeans k={b['k']}, one seed, "
                      f"settings {b.get('cluster_set', []) + b.get('spark_conf', [])}: "
                      f"completed={b['result'].get('completed')}, "
                      f"sweep s={[r['seconds'] for r in b['result'].get('runs', [])]}, "
                      f"process s={b['result'].get('process_wall_s', b['result'].get('wall_s'))}, "
                      f"error={b['result'].get('error', '')[-300:]!r}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="*", default=[100_000, 1_000_000],
                        help="sizes to run; none with --beyond-memory runs only that check")
    parser.add_argument("--kmin", type=int, default=3)
    parser.add_argument("--kmax", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5, help="how many of ClusterConfig's seeds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeats-large", type=int, default=1, help="repeats for sizes above 200,000 users")
    parser.add_argument("--spark-repeats", type=int, help="Spark's repeats, if fewer than --repeats")
    parser.add_argument("--spark-budget", type=float, default=1800,
                        help="start no further Spark repeat that would end after this many seconds")
    parser.add_argument("--algorithms", nargs="+", default=["kmeans", "bisecting"])
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--cluster-set", action="append", default=[], metavar="KEY=VALUE",
                        help="other ClusterConfig setting for both paths, e.g. parallel_fits=2")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Spark setting for the Spark path, e.g. spark.default.parallelism=20")
    parser.add_argument("--variant", choices=["lib", "uncached-input"], default="lib",
                        help="Spark path: the project's sweep, or with each fit reading uncached input")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 5,000 users, k 3-6, 2 seeds, 1 repeat")
    parser.add_argument("--spark-only", action="store_true")
    parser.add_argument("--sklearn-only", action="store_true")
    parser.add_argument("--beyond-memory", action="store_true",
                        help="also: kmeans, one k, one seed over --beyond-users with a small driver memory")
    parser.add_argument("--beyond-users", type=int, default=6_000_000)
    parser.add_argument("--beyond-driver-memory", default="1g")
    parser.add_argument("--beyond-k", type=int, default=8)
    parser.add_argument("--beyond-timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, default=OUT / "results.json")
    parser.add_argument("--report", action="store_true", help="only print the report of --out")
    parser.add_argument("--worker", choices=["spark", "sklearn"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = (spark_worker if args.worker == "spark" else sklearn_worker)(args)
        print(json.dumps(result, default=float))
        return 0
    if args.report:
        print(report(json.loads(args.out.read_text())))
        return 0
    if args.quick:
        args.users, args.kmin, args.kmax, args.seeds, args.repeats = [5000], 3, 6, 2, 1
        args.out = OUT / "results-quick.json"
    OUT.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"sizes": []}
    results["peak_gflops"] = peak_gflops()
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_at_start": load()}
    print(f"peak float32 matmul: {results['peak_gflops']} GFLOP/s, load {load()}", flush=True)
    grid = {"kmin": args.kmin, "kmax": args.kmax, "seeds": args.seeds, "algorithms": args.algorithms,
            "cluster_set": args.cluster_set, **({"variant": args.variant} if args.variant != "lib" else {})}
    for users in args.users:
        t = time.perf_counter()
        make_data(users)
        print(f"{users:,} users: data ready in {time.perf_counter() - t:.1f} s", flush=True)
        repeats = args.repeats if users <= 200_000 else min(args.repeats, args.repeats_large)
        sub = argparse.Namespace(**{**vars(args), "repeats": repeats})
        size = {"users": users, "grid": grid, "repeats": repeats, "peak_gflops": results["peak_gflops"]}
        for name in ("spark", "sklearn"):  # Spark first: it saves its stability sample for sklearn
            if (name == "spark" and args.sklearn_only) or (name == "sklearn" and args.spark_only):
                continue
            if name == "spark" and args.spark_repeats:
                sub.repeats = min(repeats, args.spark_repeats)
            else:
                sub.repeats = repeats
            print(f"{users:,} users: {name} x {sub.repeats} (load {load()})", flush=True)
            size[name] = in_subprocess(name, sub, users)
            if size[name]["completed"]:
                size[name]["summary"] = summarise(size[name], users, results["peak_gflops"])
                print(f"  median {size[name]['summary']['median_s']} s", flush=True)
            else:
                print(f"  failed: {size[name]['error'][-500:]}", flush=True)
        results["sizes"] = [s for s in results["sizes"] if (s["users"], s["grid"]) != (users, grid)] + [size]
        results["report"] = report(results)
        args.out.write_text(json.dumps(results, indent=1, default=float))
    if args.beyond_memory:
        users = args.beyond_users
        t = time.perf_counter()
        folder = make_data(users)
        print(f"{users:,} users: data ready in {time.perf_counter() - t:.1f} s; beyond memory", flush=True)
        sub = argparse.Namespace(**{**vars(args), "kmin": args.beyond_k, "kmax": args.beyond_k, "seeds": 1,
                                    "repeats": 1, "algorithms": ["kmeans"],
                                    "driver_memory": args.beyond_driver_memory})
        results["beyond_memory"] = {
            "users": users, "driver_memory": args.beyond_driver_memory, "k": args.beyond_k,
            "cluster_set": args.cluster_set, "spark_conf": args.spark_conf,
            "parquet_gib": round((folder / "part-0.parquet").stat().st_size / 2**30, 2),
            "float32_gib": round(users * DIMS * 4 / 2**30, 2),
            "float64_gib": round(users * DIMS * 8 / 2**30, 2),
            "result": in_subprocess("spark", sub, users, ["--beyond-memory"], timeout=args.beyond_timeout)}
    results["report"] = report(results)
    args.out.write_text(json.dumps(results, indent=1, default=float))
    print("\n" + results["report"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
