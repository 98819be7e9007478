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


def rollout_rows_by_depth(fused: torch.Tensor, layout: TokenLayout, discard_ratio: float = 0.0) -> torch.Tensor:
    """``rollout_rows`` of every depth at once: fused (L, B, T, T) -> (L, B, T), entry d the CLS row of
    Â_d ⋯ Â_1 (layers 0..d), in float32.

    Going from the top layer down, layer l multiplies the rows of every depth d ≥ l together, one
    (B, depths, T) × (B, T, T) product, so each layer's matrix is read once (O(L·T²) reads rather than
    the L²/2 of one rollout per depth).
    """
    cls = layout.cls_index
    n_layers, batch, t, _ = fused.shape
    rows = torch.zeros(batch, n_layers, t, dtype=torch.float32, device=fused.device)
    for layer in reversed(range(n_layers)):
        rows[:, layer, cls] = 1.0  # depth ``layer`` starts at its own top layer
        a = discard_lowest(fused[layer].float(), discard_ratio, cls)
        w = rows[:, layer:] / (0.5 * a.sum(dim=-1) + 0.5)[:, None]
        rows[:, layer:] = 0.5 * (torch.bmm(w, a) + w)
    return rows.transpose(0, 1)


def rollout(fused: torch.Tensor, layout: TokenLayout, discard_ratio: float = 0.0) -> torch.Tensor:
    """Rollout map on the patch grid: fused (L, B, T, T) -> (B, H, W) (patch part, not renormalised)."""
    return to_grid(rollout_rows(fused, layout, discard_ratio), layout)
