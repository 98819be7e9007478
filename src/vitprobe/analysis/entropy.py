"""Attention entropy (natural log) per head, and seed 004's four spread levels over a dataset.

- ``entropy(p)``: −Σ p·log p of distributions along the last dimension, 0·log 0 = 0.
- ``cls_entropy``: the CLS row of each head over ALL T tokens (a softmax row, no renormalisation),
  in [0, log T].
- ``rows_entropy``: every query row's entropy over all T tokens, averaged over ALL T query rows
  (prefix rows included), in [0, log T].
- ``map_entropy``: a map on the patch grid (H, W) renormalised to sum 1 over the patches, in
  [0, log(H·W)]: the spread of the picture one looks at, used for the spread levels.
- ``spread_levels``: images split into four levels by the quartiles of their map entropy;
  level 1 holds the most focused quarter, level 4 the most spread.

``RowEntropy`` is the streamed form of the row entropies, computed by the attention kernel during a
capture (dataset runs use it): per layer (B, heads, T), H = log Σ exp(s − m) − Σ p·(s − m) of each
row's scores s and their maximum m (one dot product per row, no logarithm per element). Its CLS entry
and its mean over rows are ``cls_entropy`` and ``rows_entropy``.
"""

from __future__ import annotations

import torch

from ..kernels.base import LayerRequest, LayerResult, RowStatReducer
from ..layout import TokenLayout
from .accumulate import Accumulator

N_LEVELS = 4


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Natural-log entropy of distributions along the last dimension: (..., T) -> (...), float32."""
    p = p.float()
    return -torch.special.xlogy(p, p).sum(dim=-1)


def cls_entropy(cls_rows: torch.Tensor) -> torch.Tensor:
    """Entropy of CLS rows over all tokens: (L, B, heads, T) -> (L, B, heads)."""
    return entropy(cls_rows)


def rows_entropy(attn: torch.Tensor) -> torch.Tensor:
    """Mean entropy over all query rows: attention (B, heads, T, T) -> (B, heads), one image at a time."""
    return torch.stack([entropy(a).mean(dim=-1) for a in attn])


class RowEntropy(RowStatReducer):
    """Entropy (natural log) of every attention row, computed by the kernel: per layer (B, heads, T), in [0, log T]."""

    def ask(self, request: LayerRequest, layout: TokenLayout, device: torch.device) -> None:
        request.entropy = True

    def reduce(self, result: LayerResult, layout: TokenLayout) -> torch.Tensor:
        return result.entropy


def map_entropy(maps: torch.Tensor) -> torch.Tensor:
    """Entropy of maps (..., H, W) renormalised over the grid: -> (...); maps must be non-negative."""
    flat = maps.float().flatten(-2)
    return entropy(flat / flat.sum(dim=-1, keepdim=True))


def level_edges(values: torch.Tensor, n_levels: int = N_LEVELS) -> torch.Tensor:
    """The n_levels − 1 inner quantiles (linear interpolation) of values (N,): (n_levels − 1,) float64."""
    q = torch.arange(1, n_levels, dtype=torch.float64) / n_levels
    return torch.quantile(values.to(torch.float64), q)


def spread_levels(values: torch.Tensor, n_levels: int = N_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """Level 1..n_levels of each value (N,) and the edges; level k holds values in (edge[k−2], edge[k−1]]."""
    edges = level_edges(values, n_levels)
    return torch.bucketize(values.to(torch.float64), edges, right=False) + 1, edges


class SpreadLevels(Accumulator):
    """Collects (image index, map entropy) pairs; ``compute`` splits them into spread levels.

    Quantiles need every value, so the state is concatenated ("cat"), not summed: 16 bytes per
    image. ``compute`` returns ``index`` and ``value`` sorted by image index, their ``level``
    (1..4) and the quartile ``edges``.
    """

    def __init__(self, n_levels: int = N_LEVELS) -> None:
        super().__init__()
        self.n_levels = n_levels
        self.add_state("index", torch.zeros(0, dtype=torch.int64), "cat")
        self.add_state("value", torch.zeros(0, dtype=torch.float64), "cat")

    def update(self, index: torch.Tensor, value: torch.Tensor) -> None:
        if index.shape != value.shape or index.ndim != 1:
            raise ValueError(f"index {tuple(index.shape)} and value {tuple(value.shape)} must be (B,)")
        self._add("index", index)
        self._add("value", value)

    def compute(self) -> dict[str, torch.Tensor]:
        order = torch.argsort(self.state("index"))
        index, value = self.state("index")[order], self.state("value")[order]
        if value.numel() == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return {"index": index, "value": value, "level": empty, "edges": torch.zeros(0, dtype=torch.float64)}
        level, edges = spread_levels(value, self.n_levels)
        return {"index": index, "value": value, "level": level, "edges": edges}
