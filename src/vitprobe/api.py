"""Capture-level conveniences: the analysis functions applied to what a Capture recorded."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .analysis import maps
from .analysis import rollout as rollout_mod
from .capture import Capture
from .layout import NO_CLS_MESSAGE


def cls_attention(cap: Capture, layers: Sequence[int] | None = None) -> torch.Tensor:
    """Per-head CLS maps (L, B, heads, H, W) of the recorded layers (or the chosen ones)."""
    if cap.cls is None:
        raise ValueError(NO_CLS_MESSAGE)
    rows = cap.cls if layers is None else cap.cls[[cap.layer_position(i) for i in layers]]
    return maps.cls_maps(rows, cap.layout)


def rollout(cap: Capture, discard_ratio: float = 0.0, head_fusion: str = "mean") -> torch.Tensor:
    """Attention rollout map (B, H, W) through every recorded layer (capture with ``fuse=(head_fusion,)``)."""
    if head_fusion not in cap.fused:
        raise ValueError(
            f"rollout with head fusion {head_fusion!r} needs capture(..., fuse=({head_fusion!r},)); "
            f"this capture kept {sorted(cap.fused) or 'none'}"
        )
    return rollout_mod.rollout(cap.fused[head_fusion], cap.layout, discard_ratio)


def query_attention(cap: Capture, patch_rc: tuple[int, int], layer: int = -1) -> torch.Tensor:
    """Attention of the patch at grid (row, col) in one layer: (B, heads, H, W) (capture with full_layers)."""
    idx = cap.layers[cap.layer_position(layer)]
    if idx not in cap.full:
        raise ValueError(f"layer {idx} was not kept in full; capture(..., full_layers=[{idx}])")
    return maps.query_map(cap.full[idx], cap.layout, *patch_rc)
