"""Experiment: how encoder settings change its result, scored exactly as ``evaluate`` scores models.

Why: docs/encoder.md's table of variants must be reproducible. On a lake where ``beha2vec run``
has embedded every model, each variant is trained in this process on the stage's own train and
validation users (``driver.training_sessions``), then embeds ``evaluate``'s held-out sample
(``evaluate.sample_sessions``), and ``evaluate``'s functions score it next to the other models'
vectors of the same sessions. ``--blend MODEL`` also scores each variant's vectors concatenated
with another model's (both L2-normalised, then weighted), which bounds what a skip path to that
model could add.

    python bench/encoder_variants.py --conf conf/local.yaml --lake LAKE --truth TRUTH.csv \\
        --variant defaults --variant "url only:encoder.weights={url: 1, theme: 0, type: 0}"

A variant is ``NAME[:KEY=VALUE[;KEY=VALUE...]]`` with ``--set``'s keys. Settings that change the
split (``evaluate.*``, ``encoder.validation_fraction``) belong in ``--set``, not in a variant.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pyspark.sql import functions as F
from sklearn.preprocessing import normalize

from beha2vec import evaluate as ev
from beha2vec.config import load_config
from beha2vec.context import Context
from beha2vec.encoder import driver
from beha2vec.encoder.apply import session_inputs
from beha2vec.encoder.model import SessionEncoder
from beha2vec.encoder.tokens import encode_sessions
from beha2vec.encoder.train import embed, fit, validation_metrics


def scores(X, users: np.ndarray, personas: np.ndarray | None, conf) -> dict[str, float]:
    """The metrics ``evaluate`` records (as the encoder's validation computes them), and persona purity."""
    out = validation_metrics(X, users, conf)
    if personas is not None:
        out["persona_purity"] = ev.neighbour_purity(X, personas, conf.neighbours)
    return out


def minilm_vectors(sample, ids: pd.DataFrame, conf) -> np.ndarray:
    """What ``embed --model minilm`` stores for these sessions: the bundled model, normalised."""
    from beha2vec.embed import load_sentence_transformer, text_prefix

    texts = sample.select("session_id", "sequence_text").toPandas().set_index("session_id")
    st, _ = load_sentence_transformer("minilm", "cpu", 2)
    prefix = text_prefix("minilm", conf)
    return st.encode([prefix + t for t in texts.loc[ids["session_id"], "sequence_text"]],
                     batch_size=conf.batch_size, normalize_embeddings=True, convert_to_numpy=True)


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, settings = text.partition(":")
    return name, [s.strip() for s in settings.split(";") if s.strip()]


def train_variant(ctx: Context, overrides: list[str], args, test: pd.DataFrame,
                  collected: dict[tuple, pd.DataFrame]) -> tuple[np.ndarray, dict]:
    """Fit one variant on the stage's train/validation users; its vectors of the ``test`` sessions.

    ``collected`` keeps the training sessions per setting that chooses them, so variants that only
    change the model or the training share one collect (hundreds of thousands of rows on msnbc).
    """
    config = load_config(args.conf, [*args.set, *overrides], str(args.lake))
    conf = config.encoder
    key = (conf.include_bots, conf.max_sessions_per_user, conf.seed, conf.validation_fraction)
    if key not in collected:
        collected[key] = driver.training_sessions(ctx.lake.read("sessions"), config).toPandas()
    frame = collected[key]
    prepared = driver.prepare(frame, config)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        result = fit(prepared.spec, prepared.train, prepared.validation, config.encoder, config.evaluate,
                     run_dir)
    model = SessionEncoder(prepared.spec)
    model.load_state_dict(result["weights"])
    labeller = driver.make_labeller(config.encoder.enrich, prepared.categories)
    vectors = embed(model, encode_sessions(test, prepared.tokenizer, labeller),
                    config.encoder.inference_batch_size, torch.device("cpu"))
    info = {"fit_s": round(time.perf_counter() - started, 1), "best_epoch": result["best_epoch"],
            "epochs_run": result["epochs_run"]}
    return vectors, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", nargs="+", default=["conf/local.yaml"])
    parser.add_argument("--lake", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--truth", type=Path, help="truth users CSV (user_id, persona): adds persona purity")
    parser.add_argument("--variant", action="append", required=True, metavar="NAME[:KEY=VALUE;...]")
    parser.add_argument("--blend", nargs="*", default=[], metavar="MODEL",
                        help="also score each variant concatenated with this lake model's vectors")
    parser.add_argument("--blend-weight", type=float, default=0.5,
                        help="the other model's weight in a blend (the encoder gets 1 minus it)")
    parser.add_argument("--minilm", action="store_true",
                        help="embed the sample with MiniLM in this process when the lake has no minilm rows")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    ctx = Context(load_config(args.conf, [*args.set, "spark.progress_bar=false"], str(args.lake)))
    conf = ctx.config.evaluate
    sessions = ctx.lake.read("sessions")
    rows = (ev.sample_sessions(ctx.lake.read("session_embeddings"), conf, sessions)
            .toPandas().sort_values(["model", "session_id"], ignore_index=True))
    ids = rows[["session_id", "user_id"]].drop_duplicates().sort_values("session_id", ignore_index=True)
    users = ids["user_id"].to_numpy()
    personas = None
    if args.truth:
        truth = pd.read_csv(args.truth, dtype=str).set_index("user_id")["persona"]
        personas = ids["user_id"].map(truth).to_numpy()
    others = {f"(lake) {m}": ev.vectors(group, m) for m, group in rows.groupby("model")}
    sample_ids = F.broadcast(ctx.spark.createDataFrame(ids[["session_id"]]))
    if args.minilm and "(lake) minilm" not in others:
        sample = sessions.join(sample_ids, "session_id")
        others["(in-process) minilm"] = minilm_vectors(sample, ids, ctx.config.embed)
    print(f"{len(ids)} held-out sessions of {len(np.unique(users))} users; models: {sorted(others)}")
    test = (session_inputs(sessions).join(sample_ids, "session_id").toPandas()
            .set_index("session_id").loc[ids["session_id"]].reset_index())

    results = [{"variant": m, **scores(X, users, personas, conf)} for m, X in others.items()]
    collected: dict[tuple, pd.DataFrame] = {}
    for text in args.variant:
        name, overrides = parse_variant(text)
        vectors, info = train_variant(ctx, overrides, args, test, collected)
        results.append({"variant": name, **scores(vectors, users, personas, conf), **info})
        for other in args.blend:
            w = args.blend_weight
            partner = ev.dense(normalize(others[f"(lake) {other}"]))
            blended = np.hstack([(1 - w) * normalize(vectors), w * partner])
            results.append({"variant": f"{name} + {w:g}·{other}", **scores(blended, users, personas, conf)})
        print(pd.DataFrame(results[-1 - len(args.blend):]).round(3).to_string(index=False), flush=True)
    table = pd.DataFrame(results)
    print(table.round(3).to_string(index=False))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
