"""Mean / max / min over one axis: how heads, layers and patch maps are fused everywhere.

Only the mean of distributions is a distribution: a max-fused attention row sums to more than 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .choices import FUSIONS

if TYPE_CHECKING:
    import torch

__all__ = ["FUSIONS", "fuse_heads", "reduce_over"]


def reduce_over(x: torch.Tensor, how: str, dim: int) -> torch.Tensor:
    """Mean / max / min of ``x`` over one dimension."""
    if how == "mean":
        return x.mean(dim=dim)
    if how == "max":
        return x.amax(dim=dim)
    if how == "min":
        return x.amin(dim=dim)
    raise ValueError(f"unknown fusion {how!r}; use one of {', '.join(FUSIONS)}")


def fuse_heads(attn: torch.Tensor, how: str = "mean", dim: int = -3) -> torch.Tensor:
    """Fuse heads: (..., heads, H, W) -> (..., H, W) by default; ``dim`` picks another heads axis."""
    return reduce_over(attn, how, dim)
