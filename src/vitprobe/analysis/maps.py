"""Attention maps on the patch grid: CLS and query-patch maps, head fusion, layer aggregation."""

from __future__ import annotations

import torch

from ..layout import TokenLayout

FUSIONS = ("mean", "max", "min")


def reduce_over(x: torch.Tensor, how: str, dim: int) -> torch.Tensor:
    """Mean / max / min over one dimension. Only the mean of distributions is a distribution."""
    if how == "mean":
        return x.mean(dim=dim)
    if how == "max":
        return x.amax(dim=dim)
    if how == "min":
        return x.amin(dim=dim)
    raise ValueError(f"unknown fusion {how!r}; use one of {FUSIONS}")


def fuse_heads(attn: torch.Tensor, how: str = "mean", dim: int = -3) -> torch.Tensor:
    """Fuse heads: (..., heads, H, W) -> (..., H, W) by default; ``dim`` picks another heads axis."""
    return reduce_over(attn, how, dim)


def aggregate_layers(maps: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Aggregate over layers: (L, ...) -> (...)."""
    return reduce_over(maps, how, 0)


def to_grid(rows: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Attention rows over all tokens (..., T) -> patch-token part on the grid (..., H, W).

    Prefix tokens are dropped and the rest is NOT renormalised: values stay probabilities.
    """
    if rows.shape[-1] != layout.n_tokens:
        raise ValueError(f"rows have {rows.shape[-1]} tokens, layout expects {layout.n_tokens}")
    return rows[..., layout.n_prefix :].reshape(*rows.shape[:-1], *layout.grid_hw)


def cls_maps(cls_rows: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """CLS attention over the patch grid: rows (L, B, heads, T) -> (L, B, heads, H, W)."""
    return to_grid(cls_rows, layout)


def query_map(attn: torch.Tensor, layout: TokenLayout, row: int, col: int) -> torch.Tensor:
    """Attention of the patch at grid (row, col) over the patches: (B, heads, T, T) -> (B, heads, H, W)."""
    return to_grid(attn[..., layout.patch_index(row, col), :], layout)
