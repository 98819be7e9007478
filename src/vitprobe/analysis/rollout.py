"""Attention rollout (Abnar & Zuidema 2020), carried as the CLS row from the top layer down."""

from __future__ import annotations

import torch

from ..layout import TokenLayout
from .maps import to_grid


def discard_lowest(fused: torch.Tensor, ratio: float, keep_column: int) -> torch.Tensor:
    """Zero the lowest ``ratio`` of each (T, T) matrix's entries, never those in ``keep_column``.

    fused: (..., T, T). Ties at the threshold are dropped together.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {ratio}")
    if ratio == 0.0:
        return fused
    t = fused.shape[-1]
    protected = torch.zeros(t, t, dtype=torch.bool, device=fused.device)
    protected[:, keep_column] = True
    candidates = fused.masked_fill(protected, float("inf")).flatten(-2)
    n_drop = int(ratio * (t * t - t))
    if n_drop == 0:
        return fused
    threshold = candidates.kthvalue(n_drop, dim=-1).values[..., None, None]
    return fused.masked_fill((fused <= threshold) & ~protected, 0.0)


def add_residual(fused: torch.Tensor) -> torch.Tensor:
    """Â = 0.5·A + 0.5·I with each ROW renormalised to sum 1: (..., T, T) -> (..., T, T)."""
    eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
    a = 0.5 * fused + 0.5 * eye
    return a / a.sum(dim=-1, keepdim=True)


def rollout_rows(
    fused: torch.Tensor, layout: TokenLayout, discard_ratio: float = 0.0
) -> torch.Tensor:
    """Joint CLS row of Â_L ⋯ Â_1 over all tokens: fused (L, B, T, T) -> (B, T), in float32, summing to 1.

    ``fused`` are head-fused attentions in forward order. The row vector r is carried from the top
    layer down: with Â = (½A + ½I) / ρ and row sums ρ = ½·rowsum(A) + ½, r·Â = ½·(r/ρ)·A + ½·(r/ρ),
    one vector–matrix product per layer (O(L·T²)) with no (T, T) temporary unless ``discard_ratio``
    asks for a thresholded copy.
    """
    cls = layout.cls_index
    row = torch.zeros(fused.shape[1], fused.shape[-1], dtype=torch.float32, device=fused.device)
    row[:, cls] = 1.0
    for layer in reversed(range(fused.shape[0])):
        a = discard_lowest(fused[layer].float(), discard_ratio, cls)
        w = row / (0.5 * a.sum(dim=-1) + 0.5)
        row = 0.5 * (torch.bmm(w[:, None], a)[:, 0] + w)
    return row


def rollout(fused: torch.Tensor, layout: TokenLayout, discard_ratio: float = 0.0) -> torch.Tensor:
    """Rollout map on the patch grid: fused (L, B, T, T) -> (B, H, W) (patch part, not renormalised)."""
    return to_grid(rollout_rows(fused, layout, discard_ratio), layout)
