"""Masks from attention maps: DINO's mass threshold, and grid masks carried onto the original image."""

from __future__ import annotations

import numpy as np
import torch

from ..io.preprocess import Geometry


def mass_masks(maps: torch.Tensor, fraction: float = 0.6) -> torch.Tensor:
    """The smallest set of patches holding ``fraction`` of each map's mass (DINO, Caron et al. 2021).

    maps (..., H, W), non-negative -> bool (..., H, W). Patches are taken in decreasing value
    (ties in row-major order) until their sum reaches ``fraction`` of the map's total: a patch is
    kept when the mass of the patches before it is still below the target. Works per head on
    (..., heads, H, W) or on a head-fused map alike. A map with zero total keeps nothing.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"mass fraction must be in (0, 1], got {fraction}")
    flat = maps.detach().double().flatten(-2)
    if (flat < 0).any():
        raise ValueError("mass masks need non-negative maps (attention probabilities, rollout)")
    values, order = flat.sort(dim=-1, descending=True, stable=True)
    before = values.cumsum(dim=-1) - values
    target = fraction * flat.sum(dim=-1, keepdim=True)
    keep_sorted = before < target
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return keep.reshape(maps.shape)


def grid_mask_to_image(mask: torch.Tensor | np.ndarray, patch_size: int, geometry: Geometry) -> np.ndarray:
    """A patch-grid mask (H, W) as a mask of the original image (H0, W0), bool.

    Each original pixel takes the value of the patch its centre falls into (the model input is
    the crop box resized to ``geometry.input_hw``); pixels outside the crop box are False.
    """
    grid = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    h_in, w_in = geometry.input_hw
    if grid.shape != (h_in // patch_size, w_in // patch_size):
        raise ValueError(f"mask of shape {grid.shape} does not match input {h_in}x{w_in} with patch {patch_size}")
    top, left, height, width = geometry.crop_box
    h0, w0 = geometry.original_hw
    y_in = (np.arange(h0) + 0.5 - top) * h_in / height
    x_in = (np.arange(w0) + 0.5 - left) * w_in / width
    rows, row_ok = _cells(y_in, h_in, patch_size)
    cols, col_ok = _cells(x_in, w_in, patch_size)
    return grid[np.ix_(rows, cols)] & row_ok[:, None] & col_ok[None, :]


def _cells(coord: np.ndarray, extent: int, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Patch index of each input coordinate (clipped) and whether it lies inside [0, extent)."""
    inside = (coord >= 0) & (coord < extent)
    index = np.clip(np.floor(coord / patch_size).astype(int), 0, extent // patch_size - 1)
    return index, inside
