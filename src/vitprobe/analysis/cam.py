"""The class-activation-map family on a ViT's token activations (tensors in, tensors out).

Activations and gradients of one layer are token arrays (B, T, D); ``channel_maps`` drops the prefix
tokens by the model's layout and puts the patch tokens on their grid as D channels (B, D, H, W), the
reshape that pytorch-grad-cam's ViT recipe does by hand (there at a fixed 14×14 grid, token 0 only).
Each map is the library's definition on the patch grid, before any upsampling or min–max scaling:

- Grad-CAM (Selvaraju et al. 2017): wₖ = mean over the grid of ∂y/∂Aₖ; map = ReLU(Σₖ wₖ Aₖ);
- Grad-CAM++ (Chattopadhay et al. 2018): αₖ = g² / (2 g² + Σ_grid Aₖ · g³ + 1e-6) where g ≠ 0 (else 0),
  wₖ = Σ_grid αₖ ReLU(g); map = ReLU(Σₖ wₖ Aₖ);
- Score-CAM (Wang et al. 2020): wₖ = softmax over k of the target score of the image masked by channel k
  (upsampled, min–max scaled); map = ReLU(Σₖ wₖ Aₖ);
- Eigen-CAM (Muhammad & Yeasin 2020): the projection of the centred activations (H·W, D) on their first
  right singular vector, then ReLU. The vector's sign is whatever the SVD returns (NumPy's LAPACK, as
  pytorch-grad-cam's EigenCAM), so that map can pick the background; ``orient="peak"`` flips the
  projection where |min| > |max| (the sign correction of Seg-Eigen-CAM, Chung & Ying 2025).
"""

from __future__ import annotations

import numpy as np
import torch

from ..layout import TokenLayout

GRADCAMPP_EPS = 1e-6
MINMAX_EPS = 1e-8


def channel_maps(tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Token activations (B, T, D) -> the patch tokens as channels on the grid (B, D, H, W)."""
    if tokens.shape[1] != layout.n_tokens:
        raise ValueError(f"activations have {tokens.shape[1]} tokens, layout expects {layout.n_tokens}")
    patches = tokens[:, layout.n_prefix:]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *layout.grid_hw)


def weighted_map(weights: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """ReLU(Σₖ wₖ Aₖ): weights (B, D) and channels (B, D, H, W) -> (B, H, W)."""
    return torch.einsum("bd,bdhw->bhw", weights, channels).clamp_min(0.0)


def gradcam(channels: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of activations and their gradients, both (B, D, H, W) -> (B, H, W)."""
    return weighted_map(grads.mean(dim=(2, 3)), channels)


def gradcampp(channels: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ of activations and their gradients, both (B, D, H, W) -> (B, H, W)."""
    squared, cubed = grads.pow(2), grads.pow(3)
    channel_sums = channels.sum(dim=(2, 3), keepdim=True)
    alpha = squared / (2 * squared + channel_sums * cubed + GRADCAMPP_EPS)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * grads.clamp_min(0.0)).sum(dim=(2, 3))
    return weighted_map(weights, channels)


def score_masks(channels: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Score-CAM's masks: each channel (B, D, H, W) upsampled bilinearly (corners aligned) to the input's
    size and min–max scaled to [0, 1] -> (B, D, H_in, W_in)."""
    up = torch.nn.functional.interpolate(channels, size=size_hw, mode="bilinear", align_corners=True)
    flat = up.flatten(2)
    low, high = flat.amin(-1)[..., None, None], flat.amax(-1)[..., None, None]
    return (up - low) / (high - low + MINMAX_EPS)


def scorecam(channels: torch.Tensor, masked_scores: torch.Tensor) -> torch.Tensor:
    """Score-CAM from channels (B, D, H, W) and the target score of each channel's masked image (B, D)."""
    return weighted_map(masked_scores.to(channels.dtype).softmax(dim=-1), channels)


def eigencam(channels: torch.Tensor, orient: str = "svd") -> torch.Tensor:
    """Eigen-CAM of channels (B, D, H, W) -> (B, H, W): ReLU of the centred activations' projection on
    their first principal direction (NumPy's SVD, in the activations' own precision); ``orient``:
    ``"svd"`` keeps the SVD's sign, ``"peak"`` flips a projection whose minimum outweighs its maximum."""
    if orient not in ("svd", "peak"):
        raise ValueError(f"orient takes svd or peak, got {orient!r}")
    b, d, h, w = channels.shape
    out = np.empty((b, h, w), dtype=np.float64)
    for i, image in enumerate(channels.detach().cpu().numpy()):
        rows = image.reshape(d, -1).T
        rows = rows - rows.mean(axis=0)
        _, _, vt = np.linalg.svd(rows, full_matrices=True)
        projection = rows @ vt[0]
        if orient == "peak" and abs(projection.min()) > abs(projection.max()):
            projection = -projection
        out[i] = projection.reshape(h, w)
    return torch.from_numpy(out).float().clamp_min(0.0)
