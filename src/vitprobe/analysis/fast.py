"""Attention statistics computed as the capture streams, block by block, with no log over T².

- ``RowEntropy``: entropy of every attention row, H = log Σ exp(s − m) − Σ p·(s − m), read from
  the scores the softmax already shifted (one dot product per row, no logarithm per element);
- ``MeanDistance``: mean attention distance per head, Σ p·D with a precomputed (T, T) matrix D of
  pixel distances between patch centres (zero on prefix rows and columns);
- ``rollout_cls``: the CLS row of attention rollout carried from the top layer down, reading
  each head-fused (B, T, T) matrix once, without building 0.5·A + 0.5·I;
- ``row_entropy``: entropy of rows given as probabilities (e.g. the captured CLS rows).

Both reducers plug into ``capture(..., reducers={...})``; stacked over layers they give
(L, B, heads, T) entropies and (L, B, heads) distances.
"""

from __future__ import annotations

import torch

from ..capture import AttentionBlock, RowReducer
from ..layout import TokenLayout


def row_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Natural-log entropy −Σ p log p of each row: (..., T) -> (...), 0·log 0 taken as 0."""
    p = probs.float()
    return -torch.special.xlogy(p, p).sum(dim=-1)


def pixel_distances(layout: TokenLayout, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, T) float32 distances in input pixels between patch centres; prefix rows and columns are 0.

    The centre of the patch at grid (r, c) is ((r + ½)·P, (c + ½)·P); only differences matter.
    """
    h, w = layout.grid_hw
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=-1).double() * layout.patch_size
    dist = torch.zeros(layout.n_tokens, layout.n_tokens, dtype=torch.float32, device=device)
    dist[layout.n_prefix :, layout.n_prefix :] = torch.cdist(centres, centres).float()
    return dist


class RowEntropy(RowReducer):
    """Entropy (natural log) of every attention row: per layer (B, heads, T), in [0, log T]."""

    def start(self, batch: int, heads: int, layout: TokenLayout, device: torch.device) -> None:
        self._out = torch.empty(batch, heads, layout.n_tokens, device=device)

    def update(self, block: AttentionBlock) -> None:
        expected = torch.linalg.vecdot(block.probs, block.shifted)
        self._out[block.images, :, block.rows] = block.log_z - expected

    def finish(self) -> torch.Tensor:
        out, self._out = self._out, None
        return out


class MeanDistance(RowReducer):
    """Mean attention distance per head in input pixels: per layer (B, heads).

    For each query patch q: Σ over patch keys k of A[q, k]·‖centre(q) − centre(k)‖, averaged over
    the query patches. Prefix tokens are dropped as queries and keys. With ``renormalize`` each
    row's patch part is divided by its mass (attention among patches only); without, the mass
    sent to prefix tokens counts as distance 0.
    """

    def __init__(self, renormalize: bool = False) -> None:
        self.renormalize = renormalize
        self._dist: dict[tuple[TokenLayout, torch.device], torch.Tensor] = {}

    def start(self, batch: int, heads: int, layout: TokenLayout, device: torch.device) -> None:
        key = (layout, torch.device(device))
        if key not in self._dist:
            self._dist[key] = pixel_distances(layout, device)
        self._layout = layout
        self._d = self._dist[key]
        self._rows = torch.empty(batch, heads, layout.n_tokens, device=device) if self.renormalize else None
        self._sums: list[tuple[slice, torch.Tensor]] = []  # appended from the worker threads
        self._shape = (batch, heads)

    def update(self, block: AttentionBlock) -> None:
        d = self._d[block.rows]  # (r, T); zero on prefix rows, so prefix queries add nothing
        if self.renormalize:
            patch_mass = block.probs[..., self._layout.n_prefix :].sum(dim=-1)
            per_row = torch.linalg.vecdot(block.probs, d) / patch_mass.clamp_min(torch.finfo(torch.float32).tiny)
            self._rows[block.images, :, block.rows] = per_row
        else:  # the block's rows summed at once: (b, heads, r·T) @ (r·T,), one pass over the block
            b, h, r, t = block.probs.shape
            self._sums.append((block.images, block.probs.view(b, h, r * t) @ d.reshape(r * t)))

    def finish(self) -> torch.Tensor:
        if self.renormalize:
            rows, self._rows = self._rows, None
            return rows[..., self._layout.n_prefix :].mean(dim=-1, dtype=torch.float64).float()
        total = torch.zeros(self._shape, dtype=torch.float64, device=self._d.device)
        for images, sums in self._sums:
            total[images] += sums
        self._sums = []
        return (total / self._layout.n_patches).float()


def rollout_cls(fused: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """CLS row of rollout Â_L ⋯ Â_1 (no discard): fused (L, B, T, T) -> (B, T) in float32, sums to 1.

    Â = (½A + ½I) / ρ with row sums ρ = ½·rowsum(A) + ½, so a row vector r gives
    r·Â = ½·(r/ρ)·A + ½·(r/ρ): one vector–matrix product per layer (O(L·B·T²)) and no (T, T)
    temporaries. Equal to ``analysis.rollout.rollout_rows(fused, layout)``.
    """
    n_layers, batch, t, _ = fused.shape
    row = torch.zeros(batch, t, dtype=torch.float32, device=fused.device)
    row[:, layout.cls_index] = 1.0
    for layer in reversed(range(n_layers)):
        a = fused[layer].float()
        w = row / (0.5 * a.sum(dim=-1) + 0.5)
        row = 0.5 * (torch.bmm(w[:, None], a)[:, 0] + w)
    return row
