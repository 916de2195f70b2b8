"""Benchmark: MiniLM through the Spark UDF against one process, what it costs, dedup, the OpenAI path.

Why: the embed stage runs MiniLM in an iterator pandas UDF on ``local[2]`` (two Python workers,
one torch thread each) on the claim that this beats one process using both cores (aim: at least
1.2x). This checks the claim on the machine at hand, in one run, on real ``sequence_text``s
(synthetic GA4 events through the project's own ingest and sessionize), and puts the rate in
context:

* Spark: ``embed_texts_st`` run on every text (a small aggregate over its rows forces it); a run
  in which a Python worker new to the session took part loaded the model inside the timing, so it
  is reported apart and run again. Direct: ``SentenceTransformer.encode`` with two torch threads
  in a subprocess, so thread settings do not leak. A one-run sweep of batch sizes picks each
  path's best; the defaults and the best then run ``--repeats`` times, interleaved, so load from
  other work on this shared machine hits them alike. Every run notes the 1-minute load average
  before and after, and its CPU seconds, which other work moves much less than wall time.
* FLOPs per sentence counted by torch's ``FlopCounterMode`` once per token length present (with
  eager attention: the CPU SDPA kernel has no FLOP formula and would count zero), cross-checked
  with the BERT formula; the practical peak is a large fp32 matmul on two threads.
* What dedup of identical texts saves on the real msnbc data.
* The OpenAI path against the tests' fake server with a fixed latency per request, against the
  bound that latency, concurrency and partitions set.

    python bench/embed.py [--texts 2000] [--repeats 3] [--msnbc-users 100000]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "embed"
MSNBC = ROOT.parent / "shared" / "data" / "msnbc" / "msnbc990928_part1.seq"
MSNBC_HEADER_LINES = 7
ENV = {"PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
GA4 = {"users": 1000, "days": 28, "personas": 5, "seed": 1}
# (batch_size, arrow_batch_size); the first is the project default (conf/local.yaml).
SPARK_SETTINGS = [(64, 2048), (16, 2048), (32, 2048), (128, 2048), (64, 256)]
DIRECT_BATCHES = [64, 16, 32, 128]
LAYERS, HIDDEN, INTERMEDIATE = 6, 384, 1536  # all-MiniLM-L6-v2
OPENAI = {"texts": 5000, "max_inputs": 100, "concurrency": 4, "latency_s": 0.2, "model": "openai:bench-fake"}


def load() -> float:
    """The 1-minute load average (what ``uptime`` shows first); above 2 here, other work competed."""
    return round(os.getloadavg()[0], 2)


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by ``root`` and its live descendants (the JVM, the Python workers):
    unlike wall time, barely moved by other work on the machine."""
    parents, ticks = {}, {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)], ticks[int(entry.name)] = int(stat[1]), int(stat[11]) + int(stat[12])
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [c for c, p in parents.items() if p == pid and c not in tree]
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def texts_frame(spark, texts: list[str]):
    """``text_hash, text`` as ``distinct_texts`` gives them."""
    import pandas as pd

    hashes = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    return spark.createDataFrame(pd.DataFrame({"text_hash": hashes, "text": texts}))


def formula_flops(length: int) -> int:
    """FLOPs of one MiniLM-L6 forward pass over ``length`` tokens: per layer the Q, K, V and output
    projections (4·L·h²) and the feed-forward (2·L·h·i) multiply-adds, plus attention scores and
    mixing (2·L²·h), two FLOPs per multiply-add. Embeddings, norms, softmax and pooling are small."""
    return LAYERS * 2 * (length * (4 * HIDDEN**2 + 2 * HIDDEN * INTERMEDIATE) + 2 * length**2 * HIDDEN)


# --- run in subprocesses (``--worker``): torch threads are set there and die with them ---------

def worker(task: str, texts_file: Path | None, batch_size: int) -> dict:
    """``peak``: best fp32 matmul GFLOP/s; ``flops``: measured FLOPs per token length;
    ``direct``: one timed ``encode`` of all texts after import, load and a warm-up batch."""
    started = time.perf_counter()
    import torch

    torch.set_num_threads(2)
    if task == "peak":
        n = 4096
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        times = []
        for _ in range(5):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return {"gflops": [round(2 * n**3 / s / 1e9, 1) for s in times]}
    from sentence_transformers import SentenceTransformer

    from beha2vec.models import model_path

    texts = json.loads(texts_file.read_text())
    if task == "flops":
        from torch.utils.flop_counter import FlopCounterMode

        model = SentenceTransformer(model_path("minilm"), device="cpu",
                                    model_kwargs={"attn_implementation": "eager"})
        lengths = model.tokenize(texts)["attention_mask"].sum(dim=1).tolist()
        by_length: dict[int, int] = {}
        for text, length in zip(texts, lengths, strict=True):
            if length not in by_length:
                with FlopCounterMode(display=False) as counter:
                    model.encode([text], batch_size=1)
                by_length[length] = counter.get_total_flops()
        return {"lengths": lengths, "flops_by_length": by_length}
    model = SentenceTransformer(model_path("minilm"), device="cpu")
    load_s = time.perf_counter() - started
    kwargs = {"batch_size": batch_size, "normalize_embeddings": True, "convert_to_numpy": True,
              "show_progress_bar": False}  # as the UDF calls it
    model.encode(texts[:batch_size], **kwargs)
    t, cpu = time.perf_counter(), time.process_time()
    model.encode(texts, **kwargs)
    return {"import_load_s": round(load_s, 2), "seconds": round(time.perf_counter() - t, 3),
            "cpu_s": round(time.process_time() - cpu, 2), "texts": len(texts)}


def in_subprocess(task: str, texts_file: Path | None = None, batch_size: int = 64) -> dict:
    """``worker`` in a fresh interpreter, with the load average before and after."""
    before = load()
    cmd = [sys.executable, __file__, "--worker", task, "--batch-size", str(batch_size)]
    if texts_file is not None:
        cmd += ["--texts-file", str(texts_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | ENV, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"load": [before, load()]}


# --- the Spark side ---------------------------------------------------------------------------

def context(spark, lake: Path):
    """A stage context on a fresh lake folder, sharing the one Spark session (as tests do)."""
    from beha2vec.config import load_config
    from beha2vec.context import Context

    shutil.rmtree(lake, ignore_errors=True)
    ctx = Context(load_config([ROOT / "conf" / "local.yaml"], lake_root=str(lake)))
    ctx.__dict__["spark"] = spark
    return ctx


def sessions_of(spark, source: str, path: Path, lake: Path) -> tuple[object, dict]:
    """The project's own ingest then sessionize of ``path``; the context and the seconds of each."""
    from beha2vec import stages

    ctx = context(spark, lake)
    t = time.perf_counter()
    stages.ingest(ctx, source, [str(path)])
    ingest_s = time.perf_counter() - t
    stages.sessionize(ctx)
    return ctx, {"ingest_s": round(ingest_s, 1), "sessionize_s": round(time.perf_counter() - t - ingest_s, 1)}


def ga4_texts(spark) -> tuple[list[str], dict]:
    """Distinct ``sequence_text``s of synthetic GA4 sessions, in ``text_hash`` order (a fixed,
    shuffled order: neither sorted by length nor grouped by user)."""
    from beha2vec.embed import distinct_texts
    from beha2vec.synth import synth

    folder = OUT / "data" / "ga4-{users}u-{days}d-seed{seed}".format(**GA4)
    if not (folder / "_truth" / "truth_users.csv").exists():
        synth("ga4", out=folder, workers=2, **GA4)
    ctx, timing = sessions_of(spark, "ga4", folder, OUT / "lakes" / "ga4")
    sessions = ctx.lake.read("sessions")
    texts = distinct_texts(sessions).orderBy("text_hash").toPandas()["text"].tolist()
    return texts, GA4 | timing | {"sessions": sessions.count(), "distinct_texts": len(texts)}


def spark_run(spark, texts_df, batch_size: int, arrow_batch: int) -> dict:
    """One pass of the UDF over every text; which worker did how many and how often it loaded."""
    from pyspark.sql import functions as F

    from beha2vec.config import EmbedConfig
    from beha2vec.embed import embed_texts_st

    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(key)
    spark.conf.set(key, str(arrow_batch))
    before, t, cpu = load(), time.perf_counter(), tree_cpu_s(os.getpid())
    try:
        rows = embed_texts_st("minilm", texts_df, EmbedConfig(batch_size=batch_size, torch_threads=1)) \
            .groupBy("worker_pid").agg(F.max("worker_loads").alias("loads"), F.count(F.lit(1)).alias("n"),
                                       F.min("dim").alias("dim")).collect()
    finally:
        spark.conf.set(key, previous)
    return {"seconds": round(time.perf_counter() - t, 3), "cpu_s": round(tree_cpu_s(os.getpid()) - cpu, 2),
            "texts": sum(r["n"] for r in rows),
            "workers": {str(r["worker_pid"]): {"texts": r["n"], "loads": r["loads"]} for r in rows},
            "dim": min(r["dim"] for r in rows), "load": [before, load()]}


def msnbc_dedup(spark, users: int) -> dict | None:
    """Sessions against distinct texts (and their tokens) on the first ``users`` msnbc users."""
    from pyspark.sql import functions as F

    if not MSNBC.exists():
        print(f"msnbc: skipped, {MSNBC} is absent", flush=True)
        return None
    part = OUT / "data" / f"msnbc-{users}.seq"
    part.parent.mkdir(parents=True, exist_ok=True)
    with MSNBC.open() as src, part.open("w") as dst:
        dst.writelines(itertools.islice(src, MSNBC_HEADER_LINES + users))
    before = load()
    ctx, timing = sessions_of(spark, "msnbc", part, OUT / "lakes" / "msnbc")
    sessions = ctx.lake.read("sessions")
    total = sessions.agg(F.count(F.lit(1)).alias("n"), F.sum("text_tokens").alias("tokens"),
                         F.countDistinct("user_id").alias("users")).first()
    distinct = sessions.groupBy(F.sha2("sequence_text", 256)).agg(F.first("text_tokens").alias("t")) \
        .agg(F.count(F.lit(1)).alias("n"), F.sum("t").alias("tokens")).first()
    shutil.rmtree(OUT / "lakes" / "msnbc", ignore_errors=True)
    return timing | {"users": total["users"], "sessions": total["n"], "distinct_texts": distinct["n"],
                     "session_tokens": total["tokens"], "distinct_tokens": distinct["tokens"],
                     "texts_saved": round(1 - distinct["n"] / total["n"], 4),
                     "tokens_saved": round(1 - distinct["tokens"] / total["tokens"], 4),
                     "load": [before, load()]}


def openai_run(spark, server, texts: list[str], run: int) -> dict:
    """``embed_texts_openai`` of ``texts`` on a fresh lake (empty cache): end to end, split into
    before the first request, the span from its arrival to the last answer (against the bound
    that latency, concurrency and partitions set) and after."""
    from beha2vec.embed_openai import embed_texts_openai

    ctx = context(spark, OUT / "lakes" / f"openai-{run}")
    c = ctx.config.embed.openai
    c.base_url, c.tokenizer, c.api_key_env = server.base_url, "minilm", "BENCH_FAKE_OPENAI_KEY"
    c.max_inputs_per_request, c.concurrency = OPENAI["max_inputs"], OPENAI["concurrency"]
    c.price_per_million_tokens = {OPENAI["model"].removeprefix("openai:"): 0.0}
    os.environ["BENCH_FAKE_OPENAI_KEY"] = "sk-bench-fake"
    df = texts_frame(spark, texts)
    seen = len(server.embedding_requests())
    before, t = load(), time.monotonic()  # the server stamps arrivals with time.monotonic too
    n = embed_texts_openai(ctx, OPENAI["model"], df).count()
    end = time.monotonic()
    requests = server.embedding_requests()[seen:]
    shutil.rmtree(OUT / "lakes" / f"openai-{run}", ignore_errors=True)
    first, last = min(r.at for r in requests), max(r.at for r in requests) + OPENAI["latency_s"]
    partitions = min(spark.sparkContext.defaultParallelism, len(requests))
    waves = math.ceil(math.ceil(len(requests) / partitions) / OPENAI["concurrency"])
    return {"texts": n, "seconds": round(end - t, 2), "requests": len(requests),
            "max_inputs_seen": max(len(r.inputs) for r in requests), "before_s": round(first - t, 2),
            "request_span_s": round(last - first, 2), "after_s": round(end - last, 2),
            "partitions": partitions, "bound_s": round(waves * OPENAI["latency_s"], 2),
            "load": [before, load()]}


def openai_runs(spark, texts: list[str], repeats: int) -> list[dict]:
    """The tests' fake server with ``latency_s`` added to every request (it has no latency option of
    its own; its ``slow`` fault is one-shot and queued), so requests overlap as on a remote API."""
    from dataclasses import dataclass

    sys.path.insert(0, str(ROOT / "tests"))
    from fake_openai import FakeOpenAI

    @dataclass
    class SlowFakeOpenAI(FakeOpenAI):
        latency_s: float = OPENAI["latency_s"]

        def _record(self, path, headers, body):
            answer = super()._record(path, headers, body)
            time.sleep(self.latency_s)  # in the request's own handler thread: requests still overlap
            return answer

    with SlowFakeOpenAI().serving() as server:
        return [openai_run(spark, server, texts, r) for r in range(repeats)]


# --- report -----------------------------------------------------------------------------------

def machine() -> dict:
    import pyspark
    import torch

    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1]) / 2**20
    info = Path("/proc/cpuinfo").read_text()
    cpu = re.search(r"model name\s*:\s*(.*)", info)
    flags = set(re.search(r"flags\s*:\s*(.*)", info)[1].split())
    return {"nproc": os.cpu_count(), "memory_gib": round(mem, 1), "cpu": cpu[1] if cpu else "?",
            "simd": [f for f in ("avx2", "avx512f", "amx_bf16") if f in flags],
            "python": sys.version.split()[0], "torch": torch.__version__, "pyspark": pyspark.__version__}


def summary(runs: list[dict], texts: int) -> dict:
    """Medians of some runs (seconds, sentences/s, sentences per CPU second), their range and the
    load averages seen before and after them."""
    secs = [r["seconds"] for r in runs]
    loads = [x for r in runs for x in r["load"]]
    return {"runs": len(runs), "median_s": round(statistics.median(secs), 2), "min_s": min(secs),
            "max_s": max(secs), "per_s": round(texts / statistics.median(secs), 1),
            "per_cpu_s": round(texts / statistics.median(r["cpu_s"] for r in runs), 1)
            if all("cpu_s" in r for r in runs) else None,
            "load_min": min(loads), "load_max": max(loads)}


def token_stats(texts: list[str]) -> dict:
    """Text lengths in MiniLM tokens, special tokens included, as the model sees them (cap 256)."""
    from beha2vec.models import load_tokenizer

    n = sorted(min(len(e.ids), 256) for e in load_tokenizer("minilm").encode_batch(texts))
    return {"min": n[0], "median": statistics.median(n), "mean": round(statistics.fmean(n), 1),
            "p90": n[int(0.9 * (len(n) - 1))], "max": n[-1]}


def flops_summary(texts: list[str], measured: dict) -> dict:
    """Measured FLOPs per sentence, the formula's, and the FLOPs padding adds in one ``encode`` of
    all texts (sentence-transformers sorts by characters, pads each batch to its longest text)."""
    lengths = measured["lengths"]
    by_length = {int(k): v for k, v in measured["flops_by_length"].items()}
    useful = sum(by_length[n] for n in lengths)
    formula = sum(formula_flops(n) for n in lengths)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))

    def padded(size: int) -> int:
        return sum(len(b) * formula_flops(max(lengths[i] for i in b))
                   for b in (order[k:k + size] for k in range(0, len(order), size)))

    return {"gflop_per_sentence": round(useful / len(lengths) / 1e9, 3),
            "formula_gflop_per_sentence": round(formula / len(lengths) / 1e9, 3),
            "formula_vs_measured": round(formula / useful - 1, 4), "lengths_counted": len(by_length),
            "padding_overhead": {b: round(padded(b) / formula - 1, 3) for b in DIRECT_BATCHES}}


def markdown(r: dict, argv: list[str]) -> str:
    """The block for docs/benchmarks.md."""
    m, t, f, g = r["machine"], r["texts"], r["flops"], r["ga4"]
    peak = max(r["peak_gflops"])
    table = ["| path | settings | runs | median s (min-max) | sentences/s | useful GFLOP/s | share of peak "
             "| sentences per CPU s | load avg |", "|---|---|---|---|---|---|---|---|---|"]
    for path, label in (("spark", "Spark UDF, local[2], 2 workers x 1 thread"),
                        ("direct", "direct `encode`, 1 process x 2 threads")):
        for name, s in r[path].items():
            gflops = s["per_s"] * f["gflop_per_sentence"]
            table.append(f"| {label} | {name} | {s['runs']} | {s['median_s']} ({s['min_s']}-{s['max_s']}) "
                         f"| {s['per_s']} | {gflops:.1f} | {gflops / peak:.1%} | {s['per_cpu_s']} "
                         f"| {s['load_min']}-{s['load_max']} |")
    sweep = "; ".join(f"{path} {name}: {t['n'] / run['seconds']:.1f}" for path in ("spark", "direct")
                      for name, run in r["sweep"][path].items())
    sd, dd = r["spark"][r["default"]["spark"]], r["direct"][r["default"]["direct"]]
    best = {p: max(r[p], key=lambda n: r[p][n]["per_s"]) for p in ("spark", "direct")}  # by medians
    sb, db = r["spark"][best["spark"]], r["direct"][best["direct"]]
    top = max(s["load_max"] for p in ("spark", "direct") for s in r[p].values())
    contended = (f"- **Contended:** the load average reached {top} on {m['nproc']} cores during these runs, "
                 "so other work took CPU from them unevenly; wall-time ratios are unreliable, sentences "
                 "per CPU second is the steadier comparison." if top > m["nproc"] + 0.5 else None)
    cold = [x["seconds"] for x in r["spark_cold"]]
    lines = [
        f"Command: `{' '.join(['python bench/embed.py', *argv])}`",
        f"Machine: {m['nproc']} cores ({m['cpu']}, {', '.join(m['simd'])}), {m['memory_gib']} GiB, Python "
        f"{m['python']}, torch {m['torch']}, PySpark {m['pyspark']}. Shared with other jobs: 1-minute load "
        f"average {r['load_start']} at start, {r['load_end']} at end (per-run ranges in the table).",
        f"Data: {t['n']:,} distinct `sequence_text`s of {g['sessions']:,} sessions ({g['distinct_texts']:,} "
        f"distinct) from the project's ingest + sessionize of synthetic GA4 ({g['users']:,} users x "
        f"{g['days']} days, {g['personas']} personas, seed {g['seed']}); MiniLM tokens per text, [CLS] "
        f"and [SEP] included: min {t['tokens']['min']}, median {t['tokens']['median']}, mean "
        f"{t['tokens']['mean']}, p90 {t['tokens']['p90']}, max {t['tokens']['max']}.",
        "", *table, "",
        f"- Spark / direct throughput: **{sd['per_s'] / dd['per_s']:.2f}x** at the defaults "
        f"({r['default']['spark']} vs {r['default']['direct']}), **{sb['per_s'] / db['per_s']:.2f}x** best "
        f"against best by the medians above ({best['spark']} vs {best['direct']}); per CPU second "
        f"{sd['per_cpu_s'] / dd['per_cpu_s']:.2f}x at the defaults, {sb['per_cpu_s'] / db['per_cpu_s']:.2f}x "
        "best against best. Aim: at least 1.2x.",
        *([contended] if contended else []),
        f"- Sweep, one run each (sentences/s), which chose the non-default rows: {sweep}.",
        f"- Spark medians are warm runs: a run in which a Python worker new to the session took part "
        f"(it imports torch and loads the model inside the timing) was run again. Spark started "
        f"{r['workers_started']} Python workers for its 2 task slots in this run, each loading the model "
        f"once ({'none reloaded' if r['worker_loads_ok'] else 'SOME RELOADED'}): it ends Python workers "
        "idle for a minute (hard-coded in PythonWorkerFactory), as during long direct runs, and a job "
        "right after another may start a new pair before the last is released. The "
        f"{len(cold)} runs with new workers took {cold} s. Direct import + load: "
        f"{r['direct_import_load_s']} s, not timed. CPU: Spark's counts the JVM and the workers; direct's, "
        "its process.",
        f"- FLOPs per sentence: {f['gflop_per_sentence']} GFLOP measured (torch FlopCounterMode with eager "
        f"attention, one pass per token length, {f['lengths_counted']} lengths, no padding); the formula "
        f"gives {f['formula_gflop_per_sentence']} ({f['formula_vs_measured']:+.2%}). Padding in a "
        f"length-sorted `encode` of these texts adds "
        + ", ".join(f"{v:.0%} at batch {b}" for b, v in f["padding_overhead"].items())
        + " executed FLOPs (Spark tasks sort only their own Arrow batch: at least as much).",
        f"- Practical peak: fp32 4096x4096 matmul with 2 torch threads, best of {len(r['peak_gflops'])} "
        f"(5 at start, 5 at end): {peak} GFLOP/s (all: {r['peak_gflops']}). Share = useful FLOP/s / peak.",
    ]
    d = r["msnbc"]
    lines.append(
        f"- Dedup on real msnbc (first {d['users']:,} users; ingest {d['ingest_s']} s + sessionize "
        f"{d['sessionize_s']} s): {d['sessions']:,} sessions, {d['distinct_texts']:,} distinct texts: "
        f"**{d['texts_saved']:.1%}** of texts and {d['tokens_saved']:.1%} of tokens need no embedding."
        if d else "- Dedup on msnbc: skipped, the file is absent.")
    o = r["openai"]
    s = summary(o, o[0]["texts"])
    med = lambda key: statistics.median(x[key] for x in o)  # noqa: E731
    lines.append(
        f"- OpenAI path (`embed_texts_openai`, the tests' fake server + {OPENAI['latency_s'] * 1000:.0f} ms "
        f"per request, {o[0]['texts']:,} texts, {OPENAI['max_inputs']} inputs per request, concurrency "
        f"{OPENAI['concurrency']}, {o[0]['partitions']} partitions, {o[0]['requests']} requests, fresh "
        f"cache): "
        f"**{s['per_s']} texts/s** end to end (median {s['median_s']} s of {s['runs']}, load "
        f"{s['load_min']}-{s['load_max']}): {med('before_s'):.1f} s before the first request (cache "
        f"anti-join, token counts, estimate), {med('request_span_s'):.2f} s of requests against a bound of "
        f"{o[0]['bound_s']} s (ceil(requests / partitions / concurrency) x latency), {med('after_s'):.1f} s "
        f"after (cache commit, read back).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--msnbc-users", type=int, default=100_000)
    parser.add_argument("--worker", choices=("direct", "flops", "peak"), help=argparse.SUPPRESS)
    parser.add_argument("--texts-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    if args.worker:
        print(json.dumps(worker(args.worker, args.texts_file, args.batch_size)))
        return 0
    argv = sys.argv[1:] if argv is None else argv
    OUT.mkdir(parents=True, exist_ok=True)
    r: dict = {"machine": machine(), "load_start": load()}
    print(f"machine {r['machine']}, load {r['load_start']}", flush=True)

    from beha2vec.config import load_config
    from beha2vec.spark import get_spark

    spark_conf = load_config([ROOT / "conf" / "local.yaml"]).spark
    spark_conf.progress_bar = False
    spark = get_spark(spark_conf)
    all_texts, r["ga4"] = ga4_texts(spark)
    print(f"ga4 sessions: {r['ga4']}", flush=True)
    texts = all_texts[:args.texts]
    texts_file = OUT / "texts.json"
    texts_file.write_text(json.dumps(texts))
    r["texts"] = {"n": len(texts), "tokens": token_stats(texts)}
    r["peak_gflops"] = in_subprocess("peak")["gflops"]
    r["flops"] = flops_summary(texts, in_subprocess("flops", texts_file))
    print(f"texts {r['texts']}; peak {r['peak_gflops']} GFLOP/s; flops {r['flops']}", flush=True)

    texts_df = texts_frame(spark, texts).repartition(spark.sparkContext.defaultParallelism).cache()
    texts_df.count()
    spark_runs = {f"batch {b}, Arrow {a}": (b, a) for b, a in SPARK_SETTINGS}
    direct_runs = {f"batch {b}": b for b in DIRECT_BATCHES}

    r["spark_cold"], seen = [], set()

    def run(path: str, name: str) -> dict:
        """One timed run; a Spark run again (up to twice) when a Python worker new to this session
        took part, as that worker loaded the model inside the timing (kept in ``spark_cold``)."""
        for _ in range(3):
            out = (spark_run(spark, texts_df, *spark_runs[name]) if path == "spark"
                   else in_subprocess("direct", texts_file, direct_runs[name]))
            print(f"  {path} {name}: {out}", flush=True)
            if path == "direct" or out["workers"].keys() <= seen:
                break
            seen.update(out["workers"])
            r["spark_cold"].append(out)
        return out

    run("spark", next(iter(spark_runs)))  # warm-up
    r["sweep"] = {"spark": {n: run("spark", n) for n in spark_runs},
                  "direct": {n: run("direct", n) for n in direct_runs}}
    r["default"] = {"spark": next(iter(spark_runs)), "direct": next(iter(direct_runs))}
    r["best"] = {p: min(runs, key=lambda n: runs[n]["seconds"]) for p, runs in r["sweep"].items()}
    chosen = {p: list(dict.fromkeys([r["default"][p], r["best"][p]])) for p in ("spark", "direct")}
    r["runs"] = {p: {n: [] for n in names} for p, names in chosen.items()}
    for _ in range(args.repeats):  # interleaved, so changing load hits every setting alike
        for p, names in chosen.items():
            for n in names:
                r["runs"][p][n].append(run(p, n))
    texts_df.unpersist()
    every = {p: [*r["sweep"][p].values(), *(x for v in r["runs"][p].values() for x in v)] for p in chosen}
    r["worker_loads_ok"] = all(w["loads"] == 1 for x in every["spark"] for w in x["workers"].values())
    r["workers_started"] = len(seen)
    for p in ("spark", "direct"):
        r[p] = {n: summary(v, len(texts)) for n, v in r["runs"][p].items()}
    r["direct_import_load_s"] = statistics.median(x["import_load_s"] for x in every["direct"])

    r["openai"] = openai_runs(spark, all_texts[:OPENAI["texts"]], args.repeats)
    print(f"openai: {r['openai']}", flush=True)
    r["msnbc"] = msnbc_dedup(spark, args.msnbc_users)
    print(f"msnbc: {r['msnbc']}", flush=True)
    r["peak_gflops"] += in_subprocess("peak")["gflops"]
    r["load_end"] = load()
    shutil.rmtree(OUT / "lakes", ignore_errors=True)
    r["markdown"] = markdown(r, argv)
    (OUT / "results.json").write_text(json.dumps(r, indent=1, default=str))
    print("\n" + r["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
