"""The model registry: one versioned folder per trained encoder, complete or absent.

``<registry>/v<N>/`` holds ``config.json`` (network sizes, tokenisation parameters including the
learned vocabulary, enrichment settings, the training configuration), ``metrics.json`` (every
epoch's validation metrics) and ``model.pt`` (the best weights), written last: a folder without
``model.pt`` is a run in progress or one that failed, and is never loaded. ``checkpoint.pt`` lets
an interrupted run resume. On a cluster the registry must sit on storage the workers can read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import torch

from beha2vec.config import EnrichConfig
from beha2vec.encoder.model import ModelSpec, SessionEncoder
from beha2vec.encoder.tokens import Tokenizer

MODEL_FILE = "model.pt"
VERSION_RE = re.compile(r"^v(\d+)$")


class RegistryError(ValueError):
    """A requested model version does not exist or is incomplete."""


def registry_root(configured: str, lake_root: str) -> Path:
    return Path(configured or os.path.join(lake_root, "_models", "encoder"))


def versions(root: Path, complete: bool = True) -> list[int]:
    if not root.is_dir():
        return []
    found = [int(m.group(1)) for p in root.iterdir() if (m := VERSION_RE.match(p.name))]
    return sorted(v for v in found if not complete or (root / f"v{v}" / MODEL_FILE).is_file())


def new_version(root: Path) -> tuple[int, Path]:
    """Claim the next version number by creating its folder (fails rather than sharing one)."""
    root.mkdir(parents=True, exist_ok=True)
    version = max(versions(root, complete=False), default=0) + 1
    path = root / f"v{version}"
    path.mkdir()
    return version, path


def resolve(root: Path, version: str | None) -> tuple[int, Path]:
    """``None``/``latest`` -> the newest complete version; ``3`` or ``v3`` -> that one."""
    complete = versions(root)
    if version in (None, "", "latest"):
        if not complete:
            raise RegistryError(f"no trained encoder in {root}; run `beha2vec train-encoder` first")
        return complete[-1], root / f"v{complete[-1]}"
    match = re.fullmatch(r"v?(\d+)", version)
    if not match or int(match.group(1)) not in complete:
        known = ", ".join(f"v{v}" for v in complete) or "none"
        raise RegistryError(f"encoder version '{version}' not found in {root} (complete versions: {known})")
    number = int(match.group(1))
    return number, root / f"v{number}"


def resolve_incomplete(root: Path, version: str) -> tuple[int, Path]:
    """The folder of ``version`` to resume: it must hold a checkpoint."""
    match = re.fullmatch(r"v?(\d+)", version)
    path = root / f"v{match.group(1)}" if match else None
    if path is None or not (path / "checkpoint.pt").is_file():
        raise RegistryError(f"cannot resume '{version}': no {root}/v<N>/checkpoint.pt for it")
    return int(match.group(1)), path


def save_config(path: Path, spec: ModelSpec, tokenizer: Tokenizer, enrich: EnrichConfig,
                training: dict, categories: dict[str, str] | None = None) -> None:
    """Written when training starts: a resumed run reuses this tokenizer (and its vocabulary).

    The domain map of the theme labels travels inside, so workers label pages as training did.
    """
    config = {"spec": spec.to_dict(), "tokenizer": tokenizer.to_dict(), "enrich": dataclasses.asdict(enrich),
              "training": training, "categories": categories}
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))


def save_model(path: Path, weights: dict, metrics: dict) -> None:
    """The metrics, then the weights: the folder is complete only once ``model.pt`` exists."""
    (path / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    tmp = path / (MODEL_FILE + ".tmp")
    torch.save(weights, tmp)
    os.replace(tmp, path / MODEL_FILE)


def digest(path: Path) -> str:
    """SHA-256 of a saved model's configuration and weights: what its embeddings depend on."""
    h = hashlib.sha256()
    for name in ("config.json", MODEL_FILE):
        h.update((path / name).read_bytes())
    return h.hexdigest()


def categories(path: Path) -> dict[str, str] | None:
    """The domain map the model was trained with (None: the bundled one)."""
    return json.loads((path / "config.json").read_text()).get("categories")


def load(path: Path, device: str = "cpu") -> tuple[SessionEncoder, Tokenizer, EnrichConfig]:
    """The network in eval mode, its tokenizer and its enrichment settings."""
    config = json.loads((path / "config.json").read_text())
    model = SessionEncoder(ModelSpec(**config["spec"]))
    model.load_state_dict(torch.load(path / MODEL_FILE, map_location=device, weights_only=True))
    return model.to(device).eval(), Tokenizer(**config["tokenizer"]), EnrichConfig(**config["enrich"])
