"""Upsample patch-grid maps to pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample_map(maps: torch.Tensor, size_hw: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize maps (..., H, W) to (..., size_h, size_w).

    ``mode`` is "bilinear" (align_corners=False, so each patch value sits at its patch centre
    and the grid's outer edge meets the image's outer edge) or "nearest" (blocky patches).
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"unknown upsampling mode {mode!r}; use 'bilinear' or 'nearest'")
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(flat, size=tuple(size_hw), mode=mode, **kwargs)
    return out.reshape(*lead, *size_hw)
