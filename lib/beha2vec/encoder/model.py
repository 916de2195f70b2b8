"""The session encoder: a small transformer over visits, plus bag, theme and type streams.

Per visit: the sum of its token embeddings (unit and path prefixes), a linear map of its six time
features and a sinusoidal position. A padding mask keeps padded positions out of attention and the
mean runs over real visits only, so padding changes nothing. The URL stream's pooled vector is
projected and L2-normalised; the theme and type streams are the normalised means of their label
embeddings. The session vector is the L2-normalised weighted sum of the streams
(``encoder.weights``, default URL 0.5, theme 0.3, type 0.2, bag 0.5).

The ``bag`` stream skips the transformer: the IDF-weighted mean of the visits' unit embeddings,
projected and normalised. The transformer pools what generalises across users; the bag keeps a
session's rare units, which identify a person (as in TF-IDF). The IDF comes from the training
sessions and is saved with the weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from beha2vec.encoder.tokens import LABEL_BUCKETS, N_TIME_FEATURES

STREAMS = ("url", "theme", "type", "bag")


@dataclass
class ModelSpec:
    """Everything needed to rebuild the network (saved beside its weights)."""

    n_tokens: int
    dim: int = 64
    layers: int = 2
    heads: int = 4
    ff_dim: int = 128
    dropout: float = 0.1
    out_dim: int = 64
    max_visits: int = 64
    weight_url: float = 0.5
    weight_theme: float = 0.3
    weight_type: float = 0.2
    weight_bag: float = 0.0  # models saved before the bag stream have none

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoid(length: int, dim: int) -> torch.Tensor:
    """The fixed sine/cosine position table of "Attention is all you need"."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    scale = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * scale)
    table[:, 1::2] = torch.cos(position * scale[: dim // 2])
    return table


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real positions only (``mask`` True), never over padding."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class SessionEncoder(nn.Module):
    def __init__(self, spec: ModelSpec, idf: torch.Tensor | None = None):
        """``idf``: one weight per token id for the bag stream (ones when None: a saved model's
        state dict brings its own)."""
        super().__init__()
        self.spec = spec
        # sparse gradients: a step touches only the rows of the batch's tokens, not all 2^18 buckets
        self.tokens = nn.Embedding(spec.n_tokens, spec.dim, padding_idx=0, sparse=True)
        self.time = nn.Linear(N_TIME_FEATURES, spec.dim)
        self.register_buffer("positions", sinusoid(spec.max_visits, spec.dim), persistent=False)
        layer = nn.TransformerEncoderLayer(spec.dim, spec.heads, spec.ff_dim, spec.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, spec.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(spec.dim)
        self.project = nn.Linear(spec.dim, spec.out_dim)
        self.theme_table = nn.Embedding(LABEL_BUCKETS + 1, spec.out_dim, padding_idx=0)
        self.type_table = nn.Embedding(LABEL_BUCKETS + 1, spec.out_dim, padding_idx=0)
        if spec.weight_bag:
            self.bag_project = nn.Linear(spec.dim, spec.out_dim)
            self.register_buffer("idf", torch.ones(spec.n_tokens) if idf is None else idf.float().clone())
        nn.init.normal_(self.tokens.weight, std=0.1)
        with torch.no_grad():
            self.tokens.weight[0].zero_()

    def forward(self, tokens: torch.Tensor, time: torch.Tensor, themes: torch.Tensor,
                types: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit-length session vectors ``[batch, out_dim]`` from padded visit arrays."""
        width = tokens.shape[1]
        units = self.tokens(tokens)
        x = units.sum(dim=2) + self.time(time) + self.positions[:width]
        h = self.norm(self.encoder(x, src_key_padding_mask=~mask))
        url = F.normalize(self.project(masked_mean(h, mask)), dim=-1)
        spec = self.spec
        combined = spec.weight_url * url
        streams = ((spec.weight_theme, self.theme_table, themes), (spec.weight_type, self.type_table, types))
        for weight, table, ids in streams:
            if weight:
                combined = combined + weight * F.normalize(masked_mean(table(ids), mask & (ids > 0)), dim=-1)
        if spec.weight_bag:
            idf = self.idf[tokens[..., 0]] * mask
            bag = (units[..., 0, :] * idf.unsqueeze(-1)).sum(1) / idf.sum(1, keepdim=True).clamp(min=1e-6)
            combined = combined + spec.weight_bag * F.normalize(self.bag_project(bag), dim=-1)
        return F.normalize(combined, dim=-1)
