"""The sequence encoder: stable ids, padding, learning, resume, TorchDistributor, the Spark UDF."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from beha2vec.config import Config, ConfigError
from beha2vec.encoder import driver, registry
from beha2vec.encoder.model import ModelSpec, SessionEncoder
from beha2vec.encoder.tokens import (
    Encoded,
    Tokenizer,
    encode_sessions,
    keep_positions,
    learn_vocab,
    stable_hash,
    token_idf,
)
from beha2vec.encoder.train import check, embed, epoch_batches, info_nce, triplet_semihard

SITES = [f"site{i}.com" for i in range(40)]


def sessions_frame(n_users: int = 12, per_user: int = 8, validation_users: int = 4,
                   seed: int = 0) -> pd.DataFrame:
    """Users who each favour 4 of 40 sites (80% of visits), in the columns the encoder reads."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        favourite = rng.choice(len(SITES), 4, replace=False)
        for s in range(per_user):
            n = int(rng.integers(2, 10))
            units = [SITES[favourite[rng.integers(4)]] if rng.random() < 0.8 else SITES[rng.integers(40)]
                     for _ in range(n)]
            start = 1_700_000_000_000_000 + (s * 86_400 + u * 3_600) * 1_000_000
            rows.append({"session_id": f"s{u:02d}-{s}", "user_id": f"u{u:02d}",
                         "part": "validation" if u < validation_users else "train",
                         "domains": units, "urls": [f"https://{x}/page?id={i}" for i, x in enumerate(units)],
                         "visit_us": [start + i * 60_000_000 for i in range(n)],
                         "dwell_s": list(rng.uniform(5, 60, n)), "start_us": start})
    return pd.DataFrame(rows)


def small_config(**encoder) -> Config:
    config = Config()
    settings = {"epochs": 4, "users_per_batch": 4, "hash_buckets": 1024, "dim": 32, "ff_dim": 64,
                "out_dim": 32, "patience": 10} | encoder
    for key, value in settings.items():
        setattr(config.encoder, key, value)
    config.encoder.enrich.theme = config.encoder.enrich.page_type = "off"
    return config


# --- tokens -------------------------------------------------------------------------------------


def test_token_ids_are_the_same_in_another_process_with_another_hash_seed():
    tokens = ["bbc.co.uk", "/books/some-title", "prefix:/a/", "ünïcode.example"]
    tokenizer = Tokenizer(hash_buckets=2**18)
    here = [tokenizer.token_id(t) for t in tokens]
    code = ("import json,sys; from beha2vec.encoder.tokens import Tokenizer; "
            "t=Tokenizer(hash_buckets=2**18); "
            "print(json.dumps([t.token_id(x) for x in json.loads(sys.argv[1])]))")
    for seed in ("1", "12345"):
        out = subprocess.run([sys.executable, "-c", code, json.dumps(tokens)], capture_output=True, text=True,
                             env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}, check=True, timeout=120)
        assert json.loads(out.stdout) == here
    assert stable_hash("bbc.co.uk") == 0x74630F6A7B526187  # saved models depend on this never changing
    assert len(set(here)) == len(here) and all(1 <= i < tokenizer.n_tokens for i in here)


def test_vocabulary_first_then_hash_buckets_and_padding_is_zero():
    vocab = learn_vocab(pd.Series([["a.com", "b.com"], ["a.com", "c.com"], ["a.com", "b.com"]]), 2, 2)
    assert vocab == ["a.com", "b.com"]
    tokenizer = Tokenizer(hash_buckets=8, vocab=vocab, prefix_depth=2)
    assert tokenizer.token_id("a.com") == 1 and tokenizer.token_id("b.com") == 2
    assert 3 <= tokenizer.token_id("rare.com") < 3 + 8
    assert tokenizer.unit_ids("a.com") == [1, 0, 0]
    ids = tokenizer.unit_ids("/shop/mens/shirt")
    assert ids[1] and ids[2] and ids[1] != ids[2]


def test_long_sessions_keep_their_first_and_last_visits():
    assert keep_positions(5, 8).tolist() == [0, 1, 2, 3, 4]
    assert keep_positions(10, 4).tolist() == [0, 1, 8, 9]


def test_time_features_follow_the_configured_time_zone():
    frame = sessions_frame(1, 1)
    utc = encode_sessions(frame, Tokenizer(16, timezone="UTC")).time
    tokyo = encode_sessions(frame, Tokenizer(16, timezone="Asia/Tokyo")).time
    np.testing.assert_allclose(utc[:, :2], tokyo[:, :2])
    assert not np.allclose(utc[:, 2:4], tokyo[:, 2:4])
    assert utc[0, 1] == 0.0  # no gap before a session's first visit


def test_token_idf_is_scikit_learns_smoothed_idf_over_sessions():
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = [[3, 3, 5], [3, 7], [3, 5, 5, 5], [2]]
    encoded = Encoded(np.array([[t] for d in docs for t in d]), *[np.zeros(0)] * 3,
                      offsets=np.cumsum([0] + [len(d) for d in docs]))
    idf = token_idf(encoded, 9)
    reference = TfidfVectorizer(analyzer=lambda d: [str(t) for t in d]).fit(docs)
    for token, column in reference.vocabulary_.items():
        assert idf[int(token)] == pytest.approx(reference.idf_[column], rel=1e-6)
    assert idf[8] == pytest.approx(np.log(5) + 1) and idf[8] > idf[7] > idf[5] > idf[3]  # unseen weighs most


# --- model --------------------------------------------------------------------------------------


def _model(**kw) -> SessionEncoder:
    torch.manual_seed(0)
    spec = ModelSpec(n_tokens=1 + 64, dim=32, heads=4, ff_dim=64, out_dim=16, **kw)
    return SessionEncoder(spec, torch.linspace(1.0, 5.0, 65) if spec.weight_bag else None).eval()


@pytest.mark.parametrize("bag", [0.0, 0.4])
def test_padding_changes_nothing(bag):
    frame = sessions_frame(3, 2)
    sessions = encode_sessions(frame, Tokenizer(64))
    model = _model(weight_bag=bag)
    lengths = sessions.lengths()
    short = int(np.argmin(lengths))
    alone = embed(model, sessions, 1, torch.device("cpu"))[short]
    with torch.no_grad():
        padded = sessions.pad(np.array([short, int(np.argmax(lengths))]))
        batch = {k: torch.from_numpy(v) for k, v in padded.items()}
        together = model(batch["tokens"], batch["time"], batch["themes"], batch["types"], batch["mask"])[0]
    assert padded["mask"][0].sum() < padded["mask"].shape[1]
    np.testing.assert_allclose(together.numpy(), alone, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(alone), 1.0, atol=1e-6)


def test_changing_a_stream_weight_changes_the_vectors():
    frame = sessions_frame(2, 2)
    sessions = encode_sessions(frame, Tokenizer(64))
    sessions.themes[:] = np.arange(len(sessions.themes)) % 5 + 1
    sessions.types[:] = np.arange(len(sessions.types)) % 3 + 1
    base = embed(_model(), sessions, 8, torch.device("cpu"))
    same = embed(_model(), sessions, 8, torch.device("cpu"))
    heavier_theme = embed(_model(weight_theme=0.6), sessions, 8, torch.device("cpu"))
    no_type = embed(_model(weight_type=0.0), sessions, 8, torch.device("cpu"))
    with_bag = embed(_model(weight_bag=0.4), sessions, 8, torch.device("cpu"))
    np.testing.assert_array_equal(base, same)
    for other in (heavier_theme, no_type, with_bag):
        assert np.abs(base - other).max() > 1e-3


@pytest.mark.parametrize("bag", [0.0, 0.4])
def test_a_saved_model_loads_with_its_idf_and_one_saved_before_the_bag_stream_still_loads(tmp_path, bag):
    from beha2vec.config import EnrichConfig

    sessions = encode_sessions(sessions_frame(2, 2), Tokenizer(64))
    model = _model(weight_bag=bag)
    spec = model.spec.to_dict()
    if not bag:
        del spec["weight_bag"]  # as config.json was written before the stream existed
    registry.save_config(tmp_path, model.spec, Tokenizer(64), EnrichConfig(), {})
    config = json.loads((tmp_path / "config.json").read_text()) | {"spec": spec}
    (tmp_path / "config.json").write_text(json.dumps(config))
    registry.save_model(tmp_path, model.state_dict(), {})
    loaded, _, _ = registry.load(tmp_path)
    assert loaded.spec.weight_bag == bag and ("idf" in loaded.state_dict()) == bool(bag)
    np.testing.assert_array_equal(embed(loaded, sessions, 8, torch.device("cpu")),
                                  embed(model, sessions, 8, torch.device("cpu")))


def test_theme_and_type_labels_reach_the_model_as_token_ids_rules_or_zero_shot():
    frame = sessions_frame(6, 2, validation_users=2).assign(
        domains=lambda f: [["espn.com", "bbc.co.uk", "amazon.com"][: 1 + i % 3] for i in range(len(f))],
        urls=lambda f: [[f"https://{d}/" for d in units] for units in f["domains"]])
    rules = small_config()
    rules.encoder.enrich.theme = rules.encoder.enrich.page_type = "rules"
    zero_shot = small_config()
    zero_shot.encoder.enrich.theme, zero_shot.encoder.enrich.page_type = "zero-shot", "off"
    by_rules = driver.prepare(frame, rules).train.sessions
    by_model = driver.prepare(frame, zero_shot).train.sessions
    assert (by_rules.themes > 0).all() and (by_rules.types > 0).all()
    assert len(set(by_rules.themes)) == 3  # sports, news, commerce
    assert (by_model.themes > 0).all() and (by_model.types == 0).all()  # a stream that is off pads
    assert len(set(by_model.themes)) >= 2


# --- losses and batches -------------------------------------------------------------------------


def test_losses_are_zero_for_separated_users_and_positive_for_mixed_ones():
    labels = torch.tensor([0, 0, 1, 1])
    separated = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.01], [0, 1], [0.01, 1]]), dim=1)
    mixed = separated[[0, 2, 1, 3]]
    assert triplet_semihard(separated, labels, 0.2).item() == pytest.approx(0.0, abs=1e-6)
    # each anchor's positive is at sqrt(2); no negative lies in (sqrt(2), sqrt(2) + margin), so the
    # farthest negative (also at about sqrt(2)) is used: the loss is about the margin for every pair
    assert triplet_semihard(mixed, labels, 0.2).item() == pytest.approx(0.2, abs=0.01)
    semi_hard = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0.8, 0.6], [0.6, 0.8], [0, 1]]), dim=1)
    # anchor 0: positive at 0.632, negatives at 0.894 (semi-hard, used) and 1.414: 0.632 - 0.894 + 0.3
    assert triplet_semihard(semi_hard, labels, 0.3).item() > 0
    assert info_nce(separated, labels, 0.1).item() < info_nce(mixed, labels, 0.1).item()


def test_batches_hold_distinct_sessions_of_several_users_and_depend_only_on_seed_and_epoch():
    users = np.repeat(np.array(["a", "b", "c", "d", "e"]), [5, 3, 1, 4, 2])
    first = epoch_batches(users, seed=1, epoch=0, users_per_batch=2, sessions_per_user=3)
    assert [b.tolist() for b in first] == [b.tolist() for b in epoch_batches(users, 1, 0, 2, 3)]
    assert [b.tolist() for b in first] != [b.tolist() for b in epoch_batches(users, 1, 1, 2, 3)]
    for rows in first:
        assert len(set(rows)) == len(rows) and len(set(users[rows])) >= 2
    assert "c" not in set(users[np.concatenate(first)])  # one session: no positive to learn from


def test_invalid_settings_name_the_key():
    config = small_config(loss="contrastive")
    with pytest.raises(ConfigError, match="encoder.loss"):
        check(config.encoder)
    with pytest.raises(ConfigError, match="encoder.weights"):
        check(small_config(weights={"url": 0.5, "colour": 0.5}).encoder)


# --- training -----------------------------------------------------------------------------------


def test_a_tiny_model_learns_to_tell_unseen_users_apart(tmp_path):
    config = small_config(epochs=8, users_per_batch=8)
    _, result = driver.train(sessions_frame(24, 8, validation_users=6), config, tmp_path, resume=False)
    first, best = result["history"][0], result["best"]
    assert best["recall_at_1"] >= 0.6 > 1 / 6  # 6 validation users never seen in training
    assert best["recall_at_1"] > first["recall_at_1"] or first["recall_at_1"] >= 0.8
    assert result["history"][-1]["train_loss"] < first["train_loss"]


def test_resume_from_a_checkpoint_continues_identically(tmp_path):
    frame = sessions_frame()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, straight = driver.train(frame, small_config(epochs=3), tmp_path / "a", resume=False)
    _, first = driver.train(frame, small_config(epochs=2), tmp_path / "b", resume=False)
    _, resumed = driver.train(frame, small_config(epochs=3), tmp_path / "b", resume=True)
    assert first["epochs_run"] == 2 and resumed["epochs_run"] == 3
    assert resumed["checksum"] == straight["checksum"]
    assert resumed["history"] == straight["history"]


def test_torch_distributor_with_two_processes_agrees_on_every_rank(spark, tmp_path):
    config = small_config(epochs=2, num_processes=2)
    prepared, result = driver.train(sessions_frame(), config, tmp_path, resume=False)
    ranks = [json.loads((tmp_path / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["world"] == 2 and result["checksum"] == ranks[0]["checksum"]
    assert len(prepared.train.users) == 64


# --- the stage and the UDF ----------------------------------------------------------------------


@pytest.fixture
def trained_lake(ctx, spark):
    """A lake with sessions of synthetic users and a trained encoder version 1."""
    from beha2vec.tables import SESSIONS

    frame = sessions_frame(30, 6, validation_users=0)
    rows = []
    for r in frame.itertuples():
        ts = [pd.Timestamp(t, unit="us", tz="UTC").to_pydatetime() for t in r.visit_us]
        rows.append({"session_id": r.session_id, "user_id": r.user_id, "source": "webtracking",
                     "start_ts": ts[0], "end_ts": ts[-1], "n_events": len(ts), "n_visits": len(ts),
                     "domains": r.domains, "urls": r.urls, "visit_ts": ts,
                     "dwell_s": [float(d) for d in r.dwell_s],
                     "is_bot": False})
    sessions = spark.createDataFrame([tuple(r.get(c) for c in SESSIONS.fieldNames()) for r in rows], SESSIONS)
    ctx.lake.write(sessions, "sessions")
    for key, value in {"epochs": 2, "users_per_batch": 4, "hash_buckets": 1024, "dim": 32, "ff_dim": 64,
                       "out_dim": 32, "validation_fraction": 0.3}.items():
        setattr(ctx.config.encoder, key, value)
    ctx.config.evaluate.holdout_fraction = 0.3
    return ctx


def test_train_encoder_stage_saves_a_version_and_records_the_run(trained_lake):
    from pyspark.sql import functions as F

    from beha2vec import stages
    from beha2vec.splits import user_part

    ctx = trained_lake
    report = stages.train_encoder(ctx)
    root = registry.registry_root("", ctx.lake.root)
    assert report["version"] == 1 and registry.versions(root) == [1]
    files = {p.name for p in (root / "v1").iterdir()}
    assert files >= {"model.pt", "config.json", "metrics.json", "checkpoint.pt"}
    runs = ctx.lake.read("encoder_runs").collect()
    assert len(runs) == 1 and runs[0]["version"] == 1 and runs[0]["train_users"] == report["train_users"]
    assert registry.categories(root / "v1")["bbc.co.uk"] == "news"  # the domain map travels with the model
    test_users = {r["user_id"] for r in ctx.lake.read("sessions").select(
        "user_id", user_part(F.col("user_id"), ctx.config.evaluate.seed, 0.3, 0.3).alias("p"))
        .where("p = 'test'").collect()}
    trained_on = set(driver.training_sessions(ctx.lake.read("sessions"), ctx.config).toPandas()["user_id"])
    assert test_users and trained_on and not trained_on & test_users
    assert report["train_users"] + report["validation_users"] <= len(trained_on)
    assert stages.train_encoder(ctx)["version"] == 2
    before, ctx.config.evaluate.lr_max_iter = ctx.config.evaluate.lr_max_iter, 0
    try:  # validation computes evaluate's metrics with evaluate's settings, so they are checked first
        with pytest.raises(ConfigError, match="evaluate.lr_max_iter must be at least 1"):
            stages.train_encoder(ctx)
    finally:
        ctx.config.evaluate.lr_max_iter = before
    assert registry.versions(root) == [1, 2]


def test_udf_output_equals_the_in_process_model(trained_lake):
    from beha2vec import stages
    from beha2vec.encoder.apply import encode_frame, load_cached, session_inputs

    ctx = trained_lake
    stages.train_encoder(ctx)
    stages.embed(ctx, ["encoder"])
    spark_rows = ctx.lake.read("session_embeddings").toPandas().set_index("session_id").sort_index()
    assert set(spark_rows["model"]) == {"encoder"} and len(spark_rows) == 180
    stages.embed(ctx, ["encoder:1"])
    assert ctx.lake.read("session_embeddings").where("model = 'encoder:v1'").count() == 180
    inputs = session_inputs(ctx.lake.read("sessions")).toPandas().set_index("session_id").sort_index()
    path = str(registry.resolve(registry.registry_root("", ctx.lake.root), "v1")[1].resolve())
    model, tokenizer, labeller, device = load_cached(path, "cpu", 1)
    local = encode_frame(inputs.reset_index(), model, tokenizer, labeller, device, 256)
    np.testing.assert_allclose(np.stack(spark_rows["embedding"].to_list()), local, atol=1e-5)


def test_unknown_versions_are_clear_errors(tmp_path):
    with pytest.raises(registry.RegistryError, match="run `beha2vec train-encoder` first"):
        registry.resolve(Path(tmp_path), None)
    (tmp_path / "v1").mkdir()
    with pytest.raises(registry.RegistryError, match="complete versions: none"):
        registry.resolve(Path(tmp_path), "v1")
