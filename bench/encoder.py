"""Benchmark: the sequence encoder's training and inference throughput, and through Spark against MiniLM.

Why: the encoder is meant to be a cheap alternative to MiniLM for session vectors. This measures,
on the machine at hand and in one run, on sessions from the project's own synth, ingest and
sessionize (cached under ``bench/out/encoder``, lake included, so reruns skip them):

* Training: the optimisation steps of ``train.fit`` alone (a loop of the same batches, model,
  loss and optimiser as ``fit``'s, timed per phase: batch padding, forward + loss, backward,
  optimiser step), then ``fit`` itself end to end (the same steps plus each epoch's validation and
  checkpoint), whose model is saved to a registry for the inference runs.
* In one process: ``tokens.encode_sessions`` (Python tokenisation and labelling) and
  ``train.embed`` on every session, timed apart, so the reader sees which dominates.
* Through Spark (``local[2]``, the cached ``sessions`` table): ``encoder.apply.embed_sessions``, the
  ``beha2vec embed --model encoder`` path, against MiniLM through the project's path
  (``embed_texts_st`` over ``distinct_texts``, joined back to sessions), each written to Spark's
  ``noop`` sink, with the embed stage's settings. A run in which a Python worker new to the session
  took part loaded torch and the model inside the timing, so it is kept apart and run again.
* FLOPs per sequence counted by torch's ``FlopCounterMode`` per visit count present (in training
  mode: the eval fast path of ``TransformerEncoderLayer`` is one fused op the counter misses),
  cross-checked with a formula, against the practical peak (``bench/embed.py``'s fp32 matmul).

Training and in-process inference run in fresh subprocesses with ``--threads`` torch threads, on
CUDA when available (``--device auto``), every figure marked with its device. Each measurement
notes the 1-minute load average before and after. Repeats run interleaved; medians are reported.

    python bench/encoder.py [--users 250] [--repeats 3] [--device auto|cpu|cuda] [--threads 2 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import embed as minilm  # bench/embed.py: load average, machine, ingest + sessionize, matmul peak

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "encoder"
TRAIN_FRAME, SESSIONS_FRAME, REGISTRY = OUT / "train.pkl", OUT / "sessions.pkl", OUT / "registry"
FULL = {"users": 250, "days": 28, "steps": 10, "epochs": 3, "repeats": 3}
QUICK = {"users": 60, "days": 14, "steps": 3, "epochs": 1, "repeats": 1}
PERSONAS, SEED = 5, 7
WARMUP_STEPS = 2
PHASES = ("pad", "forward", "backward", "step")


def formula_flops(visits: int, spec: dict) -> int:
    """FLOPs of one forward pass over ``visits`` visits: the time features' linear map, per layer
    the Q, K, V and output projections (4·L·d²), the feed-forward (2·L·d·f), attention scores and
    mixing (2·L²·d), and the output projection; two FLOPs per multiply-add. Embedding lookups,
    norms, softmax and pooling are small."""
    d, f = spec["dim"], spec["ff_dim"]
    per_layer = visits * (4 * d * d + 2 * d * f) + 2 * visits * visits * d
    return 2 * (visits * 6 * d + spec["layers"] * per_layer + d * spec["out_dim"])


# --- run in subprocesses (``--worker``): torch threads and the device are set there -----------

def bench_config(steps: int, epochs: int, device: str, threads: int):
    """conf/local.yaml with the benchmark's training length (no early stop) and device."""
    from beha2vec.config import load_config

    config = load_config([ROOT / "conf" / "local.yaml"])
    conf = config.encoder
    conf.steps_per_epoch, conf.epochs, conf.patience = steps, epochs, epochs
    conf.device, conf.torch_threads = device, threads
    return config


def sync(device) -> None:
    """Wait for queued GPU work, so wall time covers it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(prepared, conf, device) -> dict:
    """``fit``'s inner loop over the batches ``fit`` would take, timed per phase after warm-up steps."""
    import numpy as np
    import torch

    from beha2vec.encoder.model import SessionEncoder
    from beha2vec.encoder.train import epoch_batches, loss_fn, make_optimizers, run_model, to_tensors

    train = prepared.train
    torch.manual_seed(conf.seed)
    model = SessionEncoder(prepared.spec).to(device)
    optimizers = make_optimizers(model, conf)
    codes = np.unique(train.users, return_inverse=True)[1]
    batches = [rows for epoch in range(conf.epochs) for rows in epoch_batches(
        train.users, conf.seed, epoch, conf.users_per_batch, conf.sessions_per_user)[:conf.steps_per_epoch]]
    model.train()
    phases = dict.fromkeys(PHASES, 0.0)

    def step(rows: np.ndarray) -> None:
        t0 = time.perf_counter()
        batch = to_tensors(train.sessions.pad(rows), device)
        labels = torch.from_numpy(codes[rows]).to(device)
        sync(device)
        t1 = time.perf_counter()
        loss = loss_fn(conf, run_model(model, batch), labels)
        sync(device)
        t2 = time.perf_counter()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t3 = time.perf_counter()
        for optimizer in optimizers:
            optimizer.step()
        float(loss.detach())  # as fit does: the step ends when its loss is on the host
        t4 = time.perf_counter()
        for name, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            phases[name] += seconds

    for rows in batches[:WARMUP_STEPS]:
        step(rows)
    phases.update(dict.fromkeys(PHASES, 0.0))
    t = time.perf_counter()
    for rows in batches:
        step(rows)
    seconds = time.perf_counter() - t
    lengths = train.sessions.lengths()
    return {"seconds": round(seconds, 3), "steps": len(batches), "sequences": int(sum(map(len, batches))),
            "phases_s": {k: round(v, 3) for k, v in phases.items()},
            "mean_visits": round(float(np.mean([lengths[r].mean() for r in batches])), 2),
            "mean_padded_width": round(float(np.mean([lengths[r].max() for r in batches])), 2),
            "model": model, "optimizers": optimizers}


def train_worker(options: argparse.Namespace, device) -> dict:
    """Prepare, the steps alone, one validation and one checkpoint as ``fit`` does them, then ``fit``
    end to end; its model goes to a new version of the benchmark's registry."""
    import pandas as pd
    import torch

    from beha2vec.encoder import driver, registry
    from beha2vec.encoder.train import CHECKPOINT, embed, fit, validation_metrics

    config = bench_config(options.steps, options.epochs, str(device), options.threads[0])
    conf = config.encoder
    frame = pd.read_pickle(TRAIN_FRAME)
    t = time.perf_counter()
    prepared = driver.prepare(frame, config)
    prepare_s = time.perf_counter() - t
    steps = train_steps(prepared, conf, device)
    model, optimizers = steps.pop("model"), steps.pop("optimizers")
    t = time.perf_counter()
    validation_metrics(embed(model, prepared.validation.sessions, conf.inference_batch_size, device),
                       prepared.validation.users, config.evaluate)
    validation_s = time.perf_counter() - t
    version, run_dir = registry.new_version(REGISTRY)
    t = time.perf_counter()
    torch.save({"model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                "best_model": {k: v.detach().clone() for k, v in model.state_dict().items()}},
               run_dir / "checkpoint-size.pt")
    checkpoint_s = time.perf_counter() - t
    checkpoint_mib = (run_dir / "checkpoint-size.pt").stat().st_size / 2**20
    (run_dir / "checkpoint-size.pt").unlink()
    registry.save_config(run_dir, prepared.spec, prepared.tokenizer, conf.enrich, config.to_dict())
    t = time.perf_counter()
    result = fit(prepared.spec, prepared.train, prepared.validation, conf, config.evaluate, str(run_dir))
    fit_s = time.perf_counter() - t
    registry.save_model(run_dir, result["weights"], {k: v for k, v in result.items() if k != "weights"})
    (run_dir / CHECKPOINT).unlink()  # 265 MiB, only for resuming
    return steps | {
        "prepare_s": round(prepare_s, 3), "train_sessions": len(prepared.train.users),
        "validation_sessions": len(prepared.validation.users), "validation_s": round(validation_s, 3),
        "checkpoint_s": round(checkpoint_s, 3), "checkpoint_mib": round(checkpoint_mib, 1),
        "fit_s": round(fit_s, 3), "fit_epochs": result["epochs_run"], "version": version,
        "parameters": sum(p.numel() for p in model.parameters()), "spec": prepared.spec.to_dict()}


def infer_worker(options: argparse.Namespace, device) -> dict:
    """Every session through ``encode_sessions`` (a first pass with the tokenizer's id cache empty,
    then warm, then without labels) and ``train.embed`` (after a warm-up batch), timed apart."""
    import pandas as pd

    from beha2vec.encoder.driver import make_labeller
    from beha2vec.encoder.registry import load, resolve
    from beha2vec.encoder.tokens import encode_sessions
    from beha2vec.encoder.train import embed

    model, tokenizer, enrich = load(resolve(REGISTRY, None)[1], str(device))
    labeller = make_labeller(enrich)
    frame = pd.read_pickle(SESSIONS_FRAME)
    times = {}
    for name, labels in (("encode_cold", labeller), ("encode", labeller), ("encode_no_labels", None)):
        t = time.perf_counter()
        encoded = encode_sessions(frame, tokenizer, labels)
        times[name] = time.perf_counter() - t
    encoded = encode_sessions(frame, tokenizer, labeller)
    embed(model, encoded, options.batch_size, device)  # warm-up: first calls allocate and pick kernels
    t = time.perf_counter()
    embed(model, encoded, options.batch_size, device)
    times["embed"] = time.perf_counter() - t
    return {f"{k}_s": round(v, 3) for k, v in times.items()} | {
        "sequences": len(encoded), "mean_visits": round(float(encoded.lengths().mean()), 2),
        "lengths": encoded.lengths().tolist()}


def flops_worker(options: argparse.Namespace, device) -> dict:
    """Forward FLOPs of the saved model for each visit count in ``--lengths``, and the peak."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from beha2vec.encoder.registry import load, resolve
    from beha2vec.encoder.tokens import N_TIME_FEATURES

    model, tokenizer, _ = load(resolve(REGISTRY, None)[1], "cpu")
    model.train()  # training mode: see the module doc
    by_length = {}
    for n in json.loads(options.lengths):
        args = (torch.ones(1, n, 1 + tokenizer.prefix_depth, dtype=torch.long),
                torch.zeros(1, n, N_TIME_FEATURES), torch.ones(1, n, dtype=torch.long),
                torch.ones(1, n, dtype=torch.long), torch.ones(1, n, dtype=torch.bool))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args)
        by_length[n] = counter.get_total_flops()
    if device.type == "cuda":
        n = 8192
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        peak = []
        for _ in range(6):
            sync(device)
            t = time.perf_counter()
            a @ b
            sync(device)
            peak.append(round(2 * n**3 / (time.perf_counter() - t) / 1e9, 1))
        peak = peak[1:]
    else:
        peak = minilm.worker("peak", None, 0)["gflops"]
    return {"flops_by_length": by_length, "peak_gflops": peak}


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' * (threads > 1)})"


def run_worker(options: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(options.threads[0])
    chosen = ("cuda" if torch.cuda.is_available() else "cpu") if options.device == "auto" else options.device
    device = torch.device(chosen)
    task = {"train": train_worker, "infer": infer_worker, "flops": flops_worker}[options.worker]
    return task(options, device) | {"device": device_name(device)}


def in_subprocess(task: str, options: argparse.Namespace, threads: int, **extra) -> dict:
    """``run_worker`` in a fresh interpreter, with the load average before and after."""
    before = minilm.load()
    cmd = [sys.executable, __file__, "--worker", task, "--device", options.device,
           "--threads", str(threads), "--steps", str(options.steps), "--epochs", str(options.epochs),
           "--batch-size", str(options.batch_size), *(x for k, v in extra.items() for x in (f"--{k}", v))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | minilm.ENV, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"load": [before, minilm.load()]}


# --- the Spark side ---------------------------------------------------------------------------

def sessions_table(spark, users: int, days: int):
    """The context of a lake holding the ``sessions`` of synthetic GA4 data, both made once."""
    from beha2vec.config import load_config
    from beha2vec.context import Context
    from beha2vec.synth import synth

    name = f"ga4-{users}u-{days}d-seed{SEED}"
    folder, lake = OUT / "data" / name, OUT / "lakes" / name
    if not (folder / "_truth" / "truth_users.csv").exists():
        synth("ga4", users=users, days=days, personas=PERSONAS, seed=SEED, out=folder, workers=2)
    ctx = Context(load_config([ROOT / "conf" / "local.yaml"], lake_root=str(lake)))
    ctx.__dict__["spark"] = spark
    if ctx.lake.exists("sessions"):
        return ctx, {"ingest_s": "cached", "sessionize_s": "cached"}
    return minilm.sessions_of(spark, "ga4", folder, lake)


def processes() -> dict[int, tuple[int, int, bool]]:
    """pid -> (parent, CPU ticks of the process and of its exited children, whether it is a
    ``pyspark.daemon pyspark.worker``), from /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes().split(b"\0")
                stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(entry.name)] = (int(stat[1]), sum(map(int, stat[11:15])),
                                      b"pyspark.daemon" in cmdline and b"pyspark.worker" in cmdline)
    return table


def mine(table: dict[int, tuple[int, int, bool]]) -> set[int]:
    """This process and its descendants (other jobs on the machine have their own JVMs)."""
    tree, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [c for c, (parent, _, _) in table.items() if parent == pid and c not in tree]
    return tree


def tree_cpu_s() -> float:
    """CPU seconds used so far by this process and its descendants (the JVM, the Python workers),
    those that exited included through their parents' totals: ``bench/embed.py``'s version drops
    a Python worker that Spark ends during a run (idle for a minute), even below zero."""
    table = processes()
    return sum(table[pid][1] for pid in mine(table)) / os.sysconf("SC_CLK_TCK")


def python_workers() -> set[int]:
    """This run's Spark Python workers alive now: the processes its ``pyspark.worker`` daemon forked."""
    table = processes()
    return {pid for pid in mine(table) if table[pid][2] and table[table[pid][0]][2]}


def spark_run(rows) -> dict:
    """One pass of ``rows`` (a session_embeddings frame) into the ``noop`` sink."""
    before, t, cpu = minilm.load(), time.perf_counter(), tree_cpu_s()
    rows.write.format("noop").mode("overwrite").save()
    return {"seconds": round(time.perf_counter() - t, 3),
            "cpu_s": round(tree_cpu_s() - cpu, 2), "load": [before, minilm.load()]}


# --- report -----------------------------------------------------------------------------------

def median_of(runs: list[dict], key: str, count: int) -> dict:
    """Median seconds of ``key`` over runs, its range, ``count``/s, and the load averages seen."""
    secs = [r[key] for r in runs]
    loads = [x for r in runs for x in r["load"]]
    cpu = [r["cpu_s"] for r in runs if "cpu_s" in r]
    return {"runs": len(runs), "median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs),
            "per_s": round(count / statistics.median(secs), 1),
            "per_cpu_s": round(count / statistics.median(cpu), 1) if cpu else None,
            "load_min": min(loads), "load_max": max(loads)}


def flops_summary(lengths: list[int], by_length: dict, spec: dict, batch_size: int) -> dict:
    """Measured forward FLOPs per sequence, the formula's, and what ``embed``'s padding adds (it sorts
    by length and pads each batch to its longest)."""
    counted = {int(k): v for k, v in by_length.items()}
    useful = sum(counted[n] for n in lengths)
    ordered = sorted(lengths)
    padded = sum(len(b) * counted[max(b)] for b in (ordered[k:k + batch_size]
                                                     for k in range(0, len(ordered), batch_size)))
    formula = sum(formula_flops(n, spec) for n in lengths)
    return {"mflop_per_sequence": round(useful / len(lengths) / 1e6, 3),
            "formula_vs_measured": round(formula / useful - 1, 4), "lengths_counted": len(counted),
            "padding_overhead": round(padded / useful - 1, 3)}


def summarise(r: dict) -> dict:
    """Medians and ratios from the raw runs; ``_<n>t`` keys are per torch thread count."""
    runs = r["runs"]
    every_infer = [x for v in runs["infer"].values() for x in v]
    n, t0 = every_infer[0]["sequences"], next(iter(runs["train"].values()))[0]
    s = {"prepare": median_of([x for v in runs["train"].values() for x in v], "prepare_s",
                              t0["train_sessions"] + t0["validation_sessions"]),
         "encode_cold": median_of(every_infer, "encode_cold_s", n),
         "encode": median_of(every_infer, "encode_s", n),
         "encode_no_labels": median_of(every_infer, "encode_no_labels_s", n),
         "spark_encoder": median_of(runs["spark_encoder"], "seconds", n),
         "spark_minilm": median_of(runs["spark_minilm"], "seconds", n), "ratios": {}}
    s["ratios"]["spark_encoder_vs_spark_minilm"] = round(
        s["spark_encoder"]["per_s"] / s["spark_minilm"]["per_s"], 2)
    for threads, train in runs["train"].items():
        infer = runs["infer"][threads]
        s[f"train_steps_{threads}t"] = median_of(train, "seconds", t0["sequences"])
        s[f"fit_{threads}t"] = median_of(train, "fit_s", t0["sequences"])
        s[f"embed_{threads}t"] = median_of(infer, "embed_s", n)
        s[f"direct_{threads}t"] = median_of([x | {"total": x["encode_s"] + x["embed_s"]} for x in infer],
                                            "total", n)
        for key in ("validation_s", "checkpoint_s"):
            s[f"{key}_{threads}t"] = statistics.median(x[key] for x in train)
        s[f"phases_share_{threads}t"] = {
            p: round(statistics.median(x["phases_s"][p] / x["seconds"] for x in train), 3) for p in PHASES}
        s["ratios"][f"direct_{threads}t_vs_spark_encoder"] = round(
            s[f"direct_{threads}t"]["per_s"] / s["spark_encoder"]["per_s"], 2)
        s["ratios"][f"encode_share_of_direct_{threads}t"] = round(
            s["encode"]["median_s"] / s[f"direct_{threads}t"]["median_s"], 3)
    return s


def markdown(r: dict, argv: list[str]) -> str:
    """The block for docs/benchmarks.md."""
    m, s, f, d = r["machine"], r["summary"], r["flops"], r["data"]
    t = next(iter(r["runs"]["train"].values()))[0]
    peak = max(r["peak_gflops"])
    device = {kind: {k: v[0]["device"] for k, v in r["runs"][kind].items()} for kind in ("train", "infer")}
    table = ["| what | device | runs | median s (min-max) | sequences | sequences/s | load avg |",
             "|---|---|---|---|---|---|---|"]

    def row(label: str, key: str, where: str, count: int) -> None:
        x = s[key]
        table.append(f"| {label} | {where} | {x['runs']} | {x['median_s']:.2f} ({x['min_s']:.2f}-"
                     f"{x['max_s']:.2f}) | {count:,} | **{x['per_s']:,}** | "
                     f"{x['load_min']}-{x['load_max']} |")

    c, n = r["config"], d["sessions"]
    batch = f"{c['users_per_batch']} users x {c['sessions_per_user']} sessions"
    for threads in r["threads"]:
        row(f"training steps ({t['steps']} of {batch})", f"train_steps_{threads}t", device["train"][threads],
            t["sequences"])
        row("`fit` end to end (same steps + per-epoch validation, checkpoint)", f"fit_{threads}t",
            device["train"][threads], t["sequences"])
    row("`encode_sessions`, tokenizer id cache empty", "encode_cold", "cpu (Python)", n)
    row("`encode_sessions`, warm (the steady state)", "encode", "cpu (Python)", n)
    row("`encode_sessions`, labeller off", "encode_no_labels", "cpu (Python)", n)
    for threads in r["threads"]:
        where = device["infer"][threads]
        row(f"`train.embed`, batch {c['inference_batch_size']}", f"embed_{threads}t", where, n)
        row("direct: warm `encode_sessions` + `train.embed`", f"direct_{threads}t", where, n)
    tasks = r["tasks"]
    row(f"Spark: encoder UDF (`embed_sessions`), {tasks['spark_encoder']} task(s)", "spark_encoder",
        r["spark_device"], n)
    row(f"Spark: MiniLM (`embed_texts_st` + `join_back`), {tasks['spark_minilm']} task(s)", "spark_minilm",
        r["spark_device"], n)
    ratio = s["ratios"]
    cold = [x["seconds"] for x in r["spark_cold"]]
    lines = [
        f"Command: `{' '.join(['python bench/encoder.py', *argv])}`",
        f"Machine: {m['nproc']} cores ({m['cpu']}, {', '.join(m['simd'])}), {m['memory_gib']} GiB, Python "
        f"{m['python']}, torch {m['torch']}, PySpark {m['pyspark']}; GPU: {r['gpu'] or 'none'}. 1-minute "
        f"load average {r['load_start']} at start, {r['load_end']} at end (per-row ranges in the table: "
        "before and after each run).",
        f"Data: {n:,} sessions of {d['users']:,} synthetic GA4 users x {d['days']} days ({PERSONAS} "
        f"personas, seed {SEED}) through the project's ingest + sessionize; {d['distinct_texts']:,} distinct "
        f"`sequence_text`s; mean {r['mean_visits']} visits per session (at most {c['max_visits']} kept). "
        f"Training reads {t['train_sessions']:,} sessions of train users ({t['validation_sessions']:,} of "
        f"validation users). Encoder: default `EncoderConfig` ({t['parameters']:,} parameters, "
        f"{t['spec']['n_tokens']:,} token rows), trained here (steps: {t['steps']}); inference uses the "
        "last one trained.",
        "", *table, "",
        f"- **Spark: encoder / MiniLM = {ratio['spark_encoder_vs_spark_minilm']}x** sequences/s on the same "
        f"sessions ({s['spark_encoder']['per_cpu_s']} against {s['spark_minilm']['per_cpu_s']} sessions "
        "per CPU second, JVM and workers included). The UDFs run in as many tasks as their input has "
        "partitions: the encoder's, the `sessions` table's files (dealt over the cores when fewer); "
        "MiniLM's, `inference_partitions` of the distinct texts. All with the embed stage's settings: "
        "2 Python "
        f"workers x 1 torch thread, Arrow batches of {c['arrow_batch_size']}, MiniLM batch "
        f"{c['minilm_batch_size']}, encoder batch {c['inference_batch_size']}.",
        "- Direct (one process) / Spark UDF for the encoder: " + ", ".join(
            f"**{ratio[f'direct_{x}t_vs_spark_encoder']}x** with {x} thread{'s' * (x > 1)}"
            for x in r["threads"]) + "; warm tokenisation (`encode_sessions`) is " + ", ".join(
            f"{ratio[f'encode_share_of_direct_{x}t']:.0%}" for x in r["threads"]) + " of the direct time; "
        f"the labeller is {1 - s['encode_no_labels']['median_s'] / s['encode']['median_s']:.0%} of "
        "tokenisation.",
    ]
    for threads in r["threads"]:
        lines.append(
            f"- Training, {threads} thread{'s' * (threads > 1)}, share of step time (median): " + ", ".join(
                f"{p} {v:.0%}" for p, v in s[f"phases_share_{threads}t"].items())
            + f"; `fit` adds per epoch a validation pass ({s[f'validation_s_{threads}t']:.2f} s) and a "
            f"checkpoint ({s[f'checkpoint_s_{threads}t']:.2f} s).")
    best_train = max(s[f"train_steps_{x}t"]["per_s"] for x in r["threads"])
    best_embed = max(s[f"embed_{x}t"]["per_s"] for x in r["threads"])
    train_gflops = 3 * f["mflop_per_sequence"] * best_train / 1e3
    embed_gflops = f["mflop_per_sequence"] * best_embed / 1e3
    lines += [
        f"- Batches: {t['sequences'] / t['steps']:.0f} sequences, mean {t['mean_visits']} visits, padded "
        f"to {t['mean_padded_width']} on average. Checkpoints are {t['checkpoint_mib']} MiB; `prepare` "
        f"(tokenising the training sessions) takes {s['prepare']['median_s']:.2f} s, outside both timings.",
        f"- FLOPs: {f['mflop_per_sequence']} MFLOP per sequence forward (torch FlopCounterMode in "
        f"training mode, {f['lengths_counted']} visit counts, no padding; the formula gives "
        f"{f['formula_vs_measured']:+.2%}); `embed`'s length-sorted batches of {c['inference_batch_size']} "
        f"execute {f['padding_overhead']:.0%} more for padding. Best achieved: `train.embed` "
        f"{embed_gflops:.2f} GFLOP/s, training about {train_gflops:.2f} GFLOP/s (forward + backward taken "
        f"as 3x forward), against a practical peak of {peak} GFLOP/s (`bench/embed.py`'s fp32 matmul, "
        f"best of {len(r['peak_gflops'])}, measured in this run): {embed_gflops / peak:.2%} and "
        f"{train_gflops / peak:.2%}.",
        f"- Spark medians are warm runs; {len(cold)} runs in which a new Python worker took part (it "
        f"imports torch and loads a model inside the timing) took {cold} s and were run again.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int)
    parser.add_argument("--days", type=int)
    parser.add_argument("--steps", type=int, help="training steps per epoch")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, nargs="+", help="torch thread counts for the one-process runs "
                        "(default: all cores, then 1)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="inference batch (encoder.inference_batch_size)")
    parser.add_argument("--quick", action="store_true", help="a smoke run on tiny data")
    parser.add_argument("--worker", choices=("train", "infer", "flops"), help=argparse.SUPPRESS)
    parser.add_argument("--lengths", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.threads = list(dict.fromkeys(args.threads or [os.cpu_count(), 1]))
    for key, value in minilm.ENV.items():
        os.environ.setdefault(key, value)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0
    argv = sys.argv[1:] if argv is None else argv
    OUT.mkdir(parents=True, exist_ok=True)
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    on_gpu = args.device == "cuda" or (args.device == "auto" and gpu is not None)
    r: dict = {"machine": minilm.machine(), "load_start": minilm.load(), "gpu": gpu, "threads": args.threads,
               "spark_device": f"cuda ({gpu})" if on_gpu else "cpu (local[2], 2 workers x 1 thread)"}
    print(f"machine {r['machine']}, gpu {gpu}, load {r['load_start']}", flush=True)

    from beha2vec import embed as embed_lib
    from beha2vec.config import load_config
    from beha2vec.encoder import driver
    from beha2vec.encoder.apply import embed_sessions, session_inputs
    from beha2vec.spark import get_spark

    spark_conf = load_config([ROOT / "conf" / "local.yaml"]).spark
    spark_conf.progress_bar = False
    spark = get_spark(spark_conf)
    ctx, timing = sessions_table(spark, args.users, args.days)
    sessions = ctx.lake.read("sessions").persist()
    config = bench_config(args.steps, args.epochs, args.device, args.threads[0])
    r["data"] = {"users": args.users, "days": args.days, "sessions": sessions.count(),
                 "distinct_texts": embed_lib.distinct_texts(sessions).count()} | timing
    driver.training_sessions(sessions, config).toPandas().to_pickle(TRAIN_FRAME)
    session_inputs(sessions).toPandas().to_pickle(SESSIONS_FRAME)
    print(f"data {r['data']}", flush=True)
    enc, emb = config.encoder, ctx.config.embed
    emb.device = args.device
    r["config"] = {"users_per_batch": enc.users_per_batch, "sessions_per_user": enc.sessions_per_user,
                   "max_visits": enc.max_visits, "inference_batch_size": args.batch_size,
                   "arrow_batch_size": emb.arrow_batch_size, "minilm_batch_size": emb.batch_size}
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(emb.arrow_batch_size))  # as the stage

    shutil.rmtree(REGISTRY, ignore_errors=True)
    r["runs"] = {"train": {x: [] for x in args.threads}, "infer": {x: [] for x in args.threads},
                 "spark_encoder": [], "spark_minilm": []}
    for _ in range(args.repeats):
        for threads in args.threads:
            r["runs"]["train"][threads].append(in_subprocess("train", args, threads))
            print(f"  train, {threads} threads: {r['runs']['train'][threads][-1]}", flush=True)
    model_path = str(max(REGISTRY.glob("v*"), key=lambda p: int(p.name[1:])))
    def encoder_rows(frame):
        return embed_sessions(frame, model_path, "encoder:bench", args.device, enc.torch_threads or 1,
                              args.batch_size)

    def minilm_texts(frame):
        """As the stage: the distinct texts counted, then dealt over the cores."""
        texts = embed_lib.distinct_texts(frame)
        return embed_lib.over_every_core(texts, texts.count(), emb.arrow_batch_size)

    def minilm_rows(frame):
        vectors = embed_lib.embed_texts_st("minilm", minilm_texts(frame), emb)
        return embed_lib.join_back(frame, vectors.drop("worker_pid", "worker_loads"), "minilm")

    # each UDF's tasks, read from the plans the runs execute (no shuffle follows either UDF's input)
    r["tasks"] = {"spark_encoder": encoder_rows(sessions).rdd.getNumPartitions(),
                  "spark_minilm": minilm_texts(sessions).rdd.getNumPartitions()}

    paths = {"spark_encoder": encoder_rows, "spark_minilm": minilm_rows}
    seen = {}
    for path, rows_of in paths.items():  # warm-up on a sample: each worker loads torch and a model
        print(f"  warm-up {path}: {spark_run(rows_of(sessions.sample(0.05, seed=1)))}", flush=True)
        seen[path] = python_workers()
    r["spark_cold"] = []

    def spark_warm(path: str) -> dict:
        """One run; again (up to twice) when a Python worker new to this path took part."""
        for _ in range(3):
            out = spark_run(paths[path](sessions))
            workers = python_workers()
            print(f"  {path}: {out}, workers {sorted(workers)}", flush=True)
            if workers <= seen[path]:
                break
            seen[path] |= workers
            r["spark_cold"].append(out | {"path": path})
        return out

    for _ in range(args.repeats):  # interleaved, so changing load hits every path alike
        for path in paths:
            r["runs"][path].append(spark_warm(path))
        for threads in args.threads:
            r["runs"]["infer"][threads].append(in_subprocess("infer", args, threads))
            lengths = r["runs"]["infer"][threads][-1].pop("lengths")
            print(f"  infer, {threads} threads: {r['runs']['infer'][threads][-1]}", flush=True)
    sessions.unpersist()
    r["mean_visits"] = round(statistics.fmean(lengths), 2)
    measured = in_subprocess("flops", args, args.threads[0], lengths=json.dumps(sorted(set(lengths))))
    r["peak_gflops"] = measured["peak_gflops"]
    r["flops"] = flops_summary(lengths, measured["flops_by_length"],
                               r["runs"]["train"][args.threads[0]][0]["spec"], args.batch_size)
    r["load_end"] = minilm.load()
    r["summary"] = summarise(r)
    results = OUT / ("results-quick.json" if args.quick else "results.json")
    results.write_text(json.dumps(r, indent=1, default=str))  # kept should the report fail
    r["markdown"] = markdown(r, argv)
    results.write_text(json.dumps(r, indent=1, default=str))
    print("\n" + r["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
