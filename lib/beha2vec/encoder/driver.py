"""What the driver does to train an encoder: collect, encode, fit (here or on ranks), save.

Training reads only the ``train`` and ``validation`` users of ``splits`` (test users stay unseen
for ``evaluate``), at most ``max_sessions_per_user`` sessions each, chosen by a seeded hash.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from beha2vec.config import Config, EnrichConfig
from beha2vec.encoder import registry
from beha2vec.encoder.apply import session_inputs
from beha2vec.encoder.model import STREAMS, ModelSpec
from beha2vec.encoder.tokens import Tokenizer, encode_sessions, learn_vocab, stable_hash
from beha2vec.encoder.train import Split, check, fit
from beha2vec.splits import session_parts

PREFIX_DEPTH = 3


def make_labeller(enrich: EnrichConfig, categories: dict[str, str] | None = None):
    """The page theme/type labeller of ``enrich`` (domain map: ``categories``, else the bundled
    one), or None when both streams are off."""
    if enrich.theme == "off" and enrich.page_type == "off":
        return None
    from beha2vec.enrich import Labeller
    from beha2vec.features import load_categories

    return Labeller(enrich, categories if categories is not None else load_categories())


def training_sessions(sessions: DataFrame, config: Config) -> DataFrame:
    """Encoder inputs of train and validation sessions, with ``part``; test sessions stay in Spark."""
    conf, held = config.encoder, config.evaluate
    if not conf.include_bots:
        sessions = sessions.where(~F.coalesce(F.col("is_bot"), F.lit(False)))
    parts = session_parts(sessions, held.holdout_by, held.seed, held.holdout_fraction,
                          conf.validation_fraction)
    by_hash = Window.partitionBy("user_id").orderBy(F.xxhash64(F.lit(conf.seed), "session_id"), "session_id")
    chosen = (parts.where(F.col("part") != "test")
              .withColumn("rank", F.row_number().over(by_hash))
              .where(F.col("rank") <= conf.max_sessions_per_user)
              .select("session_id", "part"))
    return session_inputs(sessions).join(chosen, "session_id")


@dataclass
class Prepared:
    tokenizer: Tokenizer
    spec: ModelSpec
    categories: dict[str, str]
    train: Split
    validation: Split


def _validation_users(frame: pd.DataFrame, limit: int) -> pd.DataFrame:
    """Validation users with at least 2 sessions, at most ``limit`` of them, chosen by stable hash."""
    sizes = frame.groupby("user_id").size()
    users = sorted(sizes[sizes >= 2].index, key=lambda u: (stable_hash(f"validation:{u}"), u))[:limit]
    return frame[frame["user_id"].isin(users)]


def prepare(frame: pd.DataFrame, config: Config, tokenizer: Tokenizer | None = None) -> Prepared:
    """Token ids and time features of the collected sessions; the vocabulary comes from training users."""
    conf = config.encoder
    frame = frame.sort_values(["user_id", "session_id"], ignore_index=True)
    train = frame[frame["part"] == "train"]
    validation = _validation_users(frame[frame["part"] == "validation"], conf.max_validation_users)
    if train["user_id"].nunique() < 2 or validation["user_id"].nunique() < 2:
        raise ValueError(
            f"the encoder needs at least 2 training and 2 validation users with 2+ sessions; found "
            f"{train['user_id'].nunique()} and {validation['user_id'].nunique()} "
            f"(encoder.validation_fraction={conf.validation_fraction}, "
            f"evaluate.holdout_fraction={config.evaluate.holdout_fraction})"
        )
    if tokenizer is None:
        vocab = learn_vocab(train["domains"], conf.vocab_size, conf.min_count)
        tokenizer = Tokenizer(conf.hash_buckets, vocab, PREFIX_DEPTH if conf.path_prefixes else 0,
                              config.sessionize.timezone, conf.max_visits)
    from beha2vec.features import load_categories

    categories = load_categories(config.features.categories_file)
    labeller = make_labeller(conf.enrich, categories)
    weights = dict.fromkeys(STREAMS, 0.0) | conf.weights
    spec = ModelSpec(tokenizer.n_tokens, conf.dim, conf.layers, conf.heads, conf.ff_dim, conf.dropout,
                     conf.out_dim, conf.max_visits, weights["url"], weights["theme"], weights["type"],
                     weights["bag"])
    return Prepared(
        tokenizer, spec, categories,
        Split(encode_sessions(train, tokenizer, labeller), train["user_id"].to_numpy()),
        Split(encode_sessions(validation, tokenizer, labeller), validation["user_id"].to_numpy()),
    )


def distributed_fit(spec, train, validation, conf, evaluate_conf, run_dir, resume) -> dict:
    """One rank of ``TorchDistributor``: join the group, fit, record this rank's summary."""
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() and conf.device in ("auto", "cuda") else "gloo"
    dist.init_process_group(backend)
    if not conf.torch_threads:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    try:
        result = fit(spec, train, validation, conf, evaluate_conf, run_dir, resume)
        summary = {k: v for k, v in result.items() if k not in ("weights", "rank")}
        ranks = Path(run_dir) / "ranks"
        ranks.mkdir(exist_ok=True)
        (ranks / f"rank-{result['rank']}.json").write_text(json.dumps(summary, sort_keys=True))
        return result
    finally:
        dist.destroy_process_group()


def _same_on_every_rank(run_dir: Path, world: int) -> None:
    """Every rank must end with the same weights and metrics; anything else is a bug, not noise."""
    summaries = [json.loads((run_dir / "ranks" / f"rank-{r}.json").read_text()) for r in range(world)]
    if any(s != summaries[0] for s in summaries[1:]):
        raise RuntimeError(f"ranks disagree after distributed training: {[s['checksum'] for s in summaries]}")


def train(frame: pd.DataFrame, config: Config, run_dir: Path, resume: bool) -> tuple[Prepared, dict]:
    """Fit in this process, or through ``TorchDistributor`` when ``encoder.num_processes`` > 1."""
    conf = config.encoder
    check(conf)
    tokenizer = None
    if resume:
        tokenizer = Tokenizer(**json.loads((run_dir / "config.json").read_text())["tokenizer"])
    prepared = prepare(frame, config, tokenizer)
    registry.save_config(run_dir, prepared.spec, prepared.tokenizer, conf.enrich, config.to_dict(),
                         prepared.categories)
    args = (prepared.spec, prepared.train, prepared.validation, conf, config.evaluate, str(run_dir), resume)
    if conf.num_processes == 1:
        return prepared, fit(*args)
    import torch
    from pyspark.ml.torch.distributor import TorchDistributor

    use_gpu = torch.cuda.is_available() and conf.device in ("auto", "cuda")
    result = TorchDistributor(num_processes=conf.num_processes, local_mode=True, use_gpu=use_gpu).run(
        distributed_fit, *args)
    _same_on_every_rank(run_dir, conf.num_processes)
    return prepared, result


def summary_counts(prepared: Prepared) -> dict[str, int]:
    return {"train_users": int(len(np.unique(prepared.train.users))),
            "train_sessions": len(prepared.train.users),
            "validation_users": int(len(np.unique(prepared.validation.users))),
            "validation_sessions": len(prepared.validation.users)}
