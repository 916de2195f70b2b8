"""Training on the driver: batches of users, triplet or InfoNCE loss, validation, checkpoints.

A batch holds ``users_per_batch`` users with up to ``sessions_per_user`` distinct sessions each, so
every anchor has positives (other sessions of its user) and in-batch negatives (other users).
Batches, dropout and initialisation follow from ``encoder.seed`` and the epoch number alone, so a
run resumed from a checkpoint continues exactly as the uninterrupted run would have.

The same ``fit`` runs in one process or on every rank of ``TorchDistributor`` (DDP averages the
gradients; each rank takes every ``world``-th batch; every rank validates identically and so stops
at the same epoch).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from beha2vec.config import ConfigError, EncoderConfig, EvaluateConfig
from beha2vec.encoder.model import STREAMS, ModelSpec, SessionEncoder
from beha2vec.encoder.tokens import Encoded, token_idf
from beha2vec.evaluate import centroid_retrieval, identification, silhouette

LOSSES = ("triplet", "infonce")
MONITORS = ("recall_at_1", "recall_at_5", "id_accuracy", "silhouette_cosine")
CHECKPOINT = "checkpoint.pt"


def check(conf: EncoderConfig) -> None:
    """Reject settings that cannot train, naming the key."""
    problems = [
        (conf.loss in LOSSES, f"encoder.loss must be one of {', '.join(LOSSES)}, got '{conf.loss}'"),
        (conf.monitor in MONITORS,
         f"encoder.monitor must be one of {', '.join(MONITORS)}, got '{conf.monitor}'"),
        (conf.users_per_batch >= 2, "encoder.users_per_batch must be at least 2 (negatives are other users)"),
        (conf.sessions_per_user >= 2, "encoder.sessions_per_user must be at least 2 (anchor and positive)"),
        (conf.dim % conf.heads == 0 and conf.dim % 2 == 0,
         f"encoder.dim ({conf.dim}) must be even and divisible by encoder.heads ({conf.heads})"),
        (conf.hash_buckets >= 1, "encoder.hash_buckets must be at least 1"),
        (min(conf.max_visits, conf.epochs, conf.patience, conf.num_processes) >= 1,
         "encoder.max_visits, encoder.epochs, encoder.patience and encoder.num_processes must be at least 1"),
        (all(k in STREAMS and v >= 0 for k, v in conf.weights.items()) and conf.weights.get("url", 0) > 0,
         f"encoder.weights takes url (> 0), theme, type and bag (>= 0), got {conf.weights}"),
    ]
    for ok, message in problems:
        if not ok:
            raise ConfigError(message)


@dataclass
class Split:
    """Encoded sessions of one part of the users, with each session's user."""

    sessions: Encoded
    users: np.ndarray  # user_id per session


@dataclass
class TrainState:
    epoch: int = 0
    best: float = -np.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)


def device_for(conf: EncoderConfig, local_rank: int = 0) -> torch.device:
    if conf.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(conf.device)


def to_tensors(padded: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in padded.items()}


def run_model(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["tokens"], batch["time"], batch["themes"], batch["types"], batch["mask"])


@torch.no_grad()
def embed(model: SessionEncoder, sessions: Encoded, batch_size: int, device: torch.device) -> np.ndarray:
    """Vectors of all sessions in input order; batches of similar length waste little on padding."""
    model.eval()
    order = np.argsort(sessions.lengths(), kind="stable")
    out = np.zeros((len(sessions), model.spec.out_dim), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        out[rows] = run_model(model, to_tensors(sessions.pad(rows), device)).float().cpu().numpy()
    return out


def epoch_batches(users: np.ndarray, seed: int, epoch: int, users_per_batch: int,
                  sessions_per_user: int) -> list[np.ndarray]:
    """Session rows of each batch of one epoch: users shuffled, distinct sessions sampled per user.

    An epoch makes as many passes over the users as it takes to draw about as many sessions as
    there are, so users with many sessions are not limited to ``sessions_per_user`` per epoch.
    Users with a single session have no positive and are left out.
    """
    rng = np.random.default_rng([seed, epoch])
    _, inverse = np.unique(users, return_inverse=True)
    by_user = [rows for rows in np.split(np.argsort(inverse, kind="stable"),
                                          np.cumsum(np.bincount(inverse))[:-1]) if len(rows) >= 2]
    drawn = sum(min(sessions_per_user, len(rows)) for rows in by_user)
    passes = max(1, round(sum(len(rows) for rows in by_user) / max(drawn, 1)))
    batches = []
    for _ in range(passes):
        order = rng.permutation(len(by_user))
        for start in range(0, len(order) - 1, users_per_batch):
            chosen = order[start:start + users_per_batch]
            if len(chosen) < 2:
                continue
            batches.append(np.concatenate([
                rng.choice(by_user[u], size=min(sessions_per_user, len(by_user[u])), replace=False)
                for u in chosen
            ]))
    return batches


def triplet_semihard(z: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Triplet margin loss over every (anchor, positive) pair with an in-batch semi-hard negative.

    Semi-hard: farther than the positive but within the margin, the closest such one (FaceNet).
    Where none exists the farthest negative is used, as in TensorFlow Addons' version.
    """
    d = torch.sqrt(torch.clamp(2.0 - 2.0 * z @ z.T, min=1e-12))
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)
    positive, negative = same & ~eye, ~same
    d_ap, d_an = d[:, :, None], d[:, None, :]
    semi = negative[:, None, :] & (d_an > d_ap) & (d_an < d_ap + margin)
    big = torch.finfo(d.dtype).max
    closest_semi = torch.where(semi, d_an, big).amin(dim=2)
    farthest = torch.where(negative, d, -big).amax(dim=1, keepdim=True).expand_as(d)
    chosen = torch.where(semi.any(dim=2), closest_semi, farthest)
    return F.relu(d - chosen + margin)[positive].mean()


def info_nce(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """In-batch contrastive loss with every other session of the user as a positive (SupCon form)."""
    eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    per_anchor = log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1).clamp(min=1)
    return -per_anchor[positive.any(1)].mean()


def loss_fn(conf: EncoderConfig, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if conf.loss == "infonce":
        return info_nce(z, labels, conf.temperature)
    return triplet_semihard(z, labels, conf.margin)


def validation_metrics(vectors: np.ndarray, users: np.ndarray, conf: EvaluateConfig) -> dict[str, float]:
    """The ``evaluate`` metrics on the validation users (never trained on)."""
    accuracy, _ = identification(vectors, users, conf.seed, conf.test_fraction, quiet=True,
                                 max_iter=conf.lr_max_iter)
    recall = centroid_retrieval(vectors, users, conf.seed, conf.test_fraction, (1, 5))
    return {"silhouette_cosine": silhouette(vectors, users, "cosine"), "id_accuracy": accuracy,
            "recall_at_1": recall[1], "recall_at_5": recall[5]}


def make_optimizers(model: SessionEncoder, conf: EncoderConfig) -> list[torch.optim.Optimizer]:
    """SparseAdam for the (sparse) token table, AdamW with weight decay for everything else."""
    rest = [p for name, p in model.named_parameters() if name != "tokens.weight"]
    return [torch.optim.SparseAdam([model.tokens.weight], lr=conf.lr),
            torch.optim.AdamW(rest, lr=conf.lr, weight_decay=conf.weight_decay)]


def _mean_over_ranks(losses: list[float], device: torch.device) -> float:
    """The epoch's mean loss over all ranks' batches, so every rank reports the same number."""
    total = torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return float(total[0] / total[1]) if total[1] else float("nan")


def checksum(model: torch.nn.Module) -> str:
    """A digest of every weight: equal on every rank when DDP kept them in step."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _save(payload: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def fit(spec: ModelSpec, train: Split, validation: Split, conf: EncoderConfig, evaluate_conf: EvaluateConfig,
        run_dir: str, resume: bool = False) -> dict:
    """Train, validate each epoch, stop early, keep the best weights; returns the run's summary.

    Runs as is in one process, or on each rank when ``torch.distributed`` is initialised.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    device = device_for(conf, int(os.environ.get("LOCAL_RANK", 0)))
    if conf.torch_threads:
        torch.set_num_threads(conf.torch_threads)
    torch.manual_seed(conf.seed)
    idf = torch.from_numpy(token_idf(train.sessions, spec.n_tokens)) if spec.weight_bag else None
    model = SessionEncoder(spec, idf).to(device)
    optimizers = make_optimizers(model, conf)
    state, best_weights = TrainState(), None
    checkpoint = Path(run_dir) / CHECKPOINT
    if resume:
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        for optimizer, state_dict in zip(optimizers, saved["optimizers"], strict=True):
            optimizer.load_state_dict(state_dict)
        state, best_weights = TrainState(**saved["state"]), saved["best_model"]
    step_model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    user_codes = np.unique(train.users, return_inverse=True)[1]
    while state.epoch < conf.epochs and state.bad_epochs < conf.patience:
        epoch = state.epoch
        torch.manual_seed(conf.seed * 100_003 + epoch * world + rank)
        batches = epoch_batches(train.users, conf.seed, epoch, conf.users_per_batch, conf.sessions_per_user)
        if conf.steps_per_epoch:
            batches = batches[: conf.steps_per_epoch * world]
        mine = batches[rank: len(batches) // world * world: world]
        step_model.train()
        losses = []
        for rows in tqdm(mine, desc=f"epoch {epoch + 1}/{conf.epochs}", disable=rank != 0, leave=False):
            batch = to_tensors(train.sessions.pad(rows), device)
            labels = torch.from_numpy(user_codes[rows]).to(device)
            loss = loss_fn(conf, run_model(step_model, batch), labels)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            losses.append(float(loss.detach()))
        metrics = validation_metrics(embed(model, validation.sessions, conf.inference_batch_size, device),
                                     validation.users, evaluate_conf)
        metrics["train_loss"] = _mean_over_ranks(losses, device) if distributed else (
            float(np.mean(losses)) if losses else float("nan"))
        metrics["epoch"] = epoch + 1
        state.history.append(metrics)
        if metrics[conf.monitor] > state.best:
            state.best, state.best_epoch, state.bad_epochs = metrics[conf.monitor], epoch + 1, 0
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state.bad_epochs += 1
        state.epoch = epoch + 1
        if rank == 0:
            tqdm.write(f"epoch {epoch + 1}: loss {metrics['train_loss']:.4f}, "
                       f"{conf.monitor} {metrics[conf.monitor]:.3f} (validation)")
            _save({"model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                   "state": asdict(state), "best_model": best_weights}, checkpoint)
    model.load_state_dict(best_weights)
    return {"rank": rank, "world": world, "device": str(device), "epochs_run": state.epoch,
            "best_epoch": state.best_epoch, "stopped_early": state.bad_epochs >= conf.patience,
            "best": state.history[state.best_epoch - 1], "history": state.history,
            "checksum": checksum(model), "weights": {k: v.cpu() for k, v in model.state_dict().items()}}
