"""Attention maps on the patch grid: CLS and query-patch maps, head fusion, layer aggregation."""

from __future__ import annotations

import torch

from ..fusion import FUSIONS, fuse_heads, reduce_over
from ..layout import TokenLayout

__all__ = ["FUSIONS", "aggregate_layers", "cls_maps", "fuse_heads", "pixels_to_grid", "query_map", "to_grid"]


def aggregate_layers(maps: torch.Tensor, how: str = "mean", *, dim: int | None = None) -> torch.Tensor:
    """Mean / max / min over the layer axis ``dim`` (keyword, required): ``dim=1`` for batch-first maps
    (B, L, ...) as every method's detail holds them (``res.detail["layers"]`` (B, L, H, W) -> (B, H, W)),
    ``dim=0`` for layers-first stacks (L, B, ...).

    There is no default: this function reduced dim 0 until vitprobe 0.2, and a silent default of 1 would
    turn an old layers-first call into a mean over the batch."""
    if dim is None:
        raise TypeError("aggregate_layers needs the layer axis: dim=1 for batch-first maps (B, L, ...) as in "
                        "res.detail['layers'], dim=0 for layers-first (L, B, ...)")
    return reduce_over(maps, how, dim)


def to_grid(rows: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Attention rows over all tokens (..., T) -> patch-token part on the grid (..., H, W), or
    (..., t, H, W) for a video model (whatever its token order).

    Prefix tokens are dropped and the rest is NOT renormalised: values stay probabilities.
    """
    if rows.shape[-1] != layout.n_tokens:
        raise ValueError(f"rows have {rows.shape[-1]} tokens, layout expects {layout.n_tokens}")
    patches = rows[..., layout.n_prefix :]
    if layout.time_last:  # (row, col, step) order: step to the front of the grid
        return patches.reshape(*rows.shape[:-1], *layout.grid_hw, layout.n_steps).movedim(-1, -3)
    return patches.reshape(*rows.shape[:-1], *layout.map_shape)


def cls_maps(cls_rows: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """CLS attention over the patch grid: rows (L, B, heads, T) -> (L, B, heads, H, W)."""
    return to_grid(cls_rows, layout)


def query_map(attn: torch.Tensor, layout: TokenLayout, row: int, col: int, step: int | None = None) -> torch.Tensor:
    """Attention of the patch at grid (row, col) over the patches: (B, heads, T, T) -> (B, heads, H, W);
    for a video model the patch of tubelet step ``step`` (None: the middle one) -> (B, heads, t, H, W)."""
    return to_grid(attn[..., layout.patch_index(row, col, step), :], layout)


def pixels_to_grid(values: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Pixel attributions (B, C, H_in, W_in) summed over channels and over each patch's pixels -> (B, H, W);
    the patches are the (H_in / H, W_in / W) squares of the model's input (a remainder is left out)."""
    gh, gw = grid_hw
    ph, pw = values.shape[-2] // gh, values.shape[-1] // gw
    summed = values.sum(dim=1)[:, : gh * ph, : gw * pw]
    return summed.reshape(len(values), gh, ph, gw, pw).sum(dim=(2, 4))
