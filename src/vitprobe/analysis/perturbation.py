"""Perturbation curves of a map: the pure parts of the faithfulness protocols (tensors in, tensors out).

A map (H, W) over the patch grid orders the patches, most relevant first. Ties (plateaus of ReLU
zeros, min-max ends, nearest-upsampled maps) are broken by one rule: equal values keep the order of a
random permutation of the patches drawn from ``numpy.random.default_rng([seed, image index, 0])``, the
same for every map of an image, so no method gains from the raster order of its ties.

- **deletion** (Petsiuk et al. 2018, RISE): after step k of K, the first round(k·N/K) patches of the
  order are replaced by the deletion substrate (zeros at the model's input: the normalisation's mean
  colour); **insertion**: the image starts as the insertion substrate (a Gaussian blur, 11×11 kernel,
  σ = 5 px, as RISE) and the first round(k·N/K) patches are revealed. The curves are the target score
  at k = 0..K; their AUC is the trapezoid area over the fraction of patches in [0, 1].
- **positive / negative perturbation** (Chefer et al. 2021): the 10%, 20%, ..., 90% most (positive) or
  least (negative) relevant patches are replaced by the deletion substrate; the AUC is the trapezoid
  area over those fractions, divided by their span 0.8 (the mean score over the range).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import trapezoid
from scipy.ndimage import gaussian_filter

BLUR_SIGMA = 5.0
BLUR_KERNEL = 11
PERTURBATION_FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 10))


def tie_keys(n_patches: int, seed: int, image: int) -> np.ndarray:
    """The tie-breaking rank (N,) of each patch of image number ``image``: a random permutation from
    ``default_rng([seed, image, 0])``."""
    return np.random.default_rng([seed, image, 0]).permutation(n_patches)


def patch_order(grid_map: torch.Tensor, ties: np.ndarray, most_first: bool = True) -> np.ndarray:
    """Patch indices (N,) of a map (H, W) in raster numbering, by value (highest first unless
    ``most_first`` is False), equal values in the order of ``ties`` (N,). NaN counts as lowest."""
    values = np.nan_to_num(grid_map.detach().double().cpu().numpy().ravel(), nan=-np.inf)
    return np.lexsort((ties, -values if most_first else values))


def removal_counts(n_patches: int, steps: int) -> np.ndarray:
    """Patches removed (or revealed) after each step k = 0..K of a deletion or insertion curve (K + 1,)."""
    return np.rint(np.arange(steps + 1) * n_patches / steps).astype(int)


def fraction_counts(n_patches: int, fractions: tuple[float, ...] = PERTURBATION_FRACTIONS) -> np.ndarray:
    """Patches perturbed at each fraction of a positive or negative perturbation curve."""
    return np.rint(np.asarray(fractions) * n_patches).astype(int)


def chosen_masks(order: np.ndarray, counts: np.ndarray) -> torch.Tensor:
    """Boolean (len(counts), N): row c marks the first ``counts[c]`` patches of ``order``."""
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return torch.from_numpy(rank[None, :] < counts[:, None])


def compose(image: torch.Tensor, substrate: torch.Tensor, from_substrate: torch.Tensor,
            grid_hw: tuple[int, int]) -> torch.Tensor:
    """Images (M, 3, H, W): ``image`` (3, H, W) with the patches marked in ``from_substrate`` (M, N) taken
    from ``substrate`` (3, H, W); patches are the model's (H / grid_h, W / grid_w) pixel squares."""
    gh, gw = grid_hw
    ph, pw = image.shape[-2] // gh, image.shape[-1] // gw
    patch_mask = from_substrate.view(-1, 1, gh, gw).to(image.device)
    pixel_mask = patch_mask.repeat_interleave(ph, dim=2).repeat_interleave(pw, dim=3)
    return torch.where(pixel_mask, substrate[None], image[None])


def blurred(image: torch.Tensor, sigma: float = BLUR_SIGMA, kernel: int = BLUR_KERNEL) -> torch.Tensor:
    """The insertion substrate: each channel of ``image`` (3, H, W) blurred by a Gaussian of ``sigma``
    pixels cut to a ``kernel``×``kernel`` window (reflected edges)."""
    radius = kernel // 2
    out = gaussian_filter(image.detach().double().cpu().numpy(), sigma=(0, sigma, sigma), truncate=radius / sigma,
                          mode="reflect")
    return torch.from_numpy(out).to(image.device, image.dtype)


def auc(curve: np.ndarray, fractions: np.ndarray) -> float:
    """Trapezoid area under ``curve`` over ``fractions``, divided by the span of the fractions."""
    span = float(fractions[-1] - fractions[0])
    return float(trapezoid(curve, fractions) / span)


def centre_map(grid_hw: tuple[int, int], sigma_ratio: float = 0.25) -> torch.Tensor:
    """The centre-Gaussian baseline (H, W): exp(−d² / 2σ²) of each patch centre's distance d to the grid
    centre, σ = ``sigma_ratio`` × the shorter grid side (in patches)."""
    gh, gw = grid_hw
    rows = torch.arange(gh, dtype=torch.float64) - (gh - 1) / 2
    cols = torch.arange(gw, dtype=torch.float64) - (gw - 1) / 2
    sigma = sigma_ratio * min(gh, gw)
    return torch.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma**2)).float()


def random_map(grid_hw: tuple[int, int], seed: int, image: int) -> torch.Tensor:
    """The random baseline (H, W) of image number ``image``: independent uniform values from
    ``default_rng([seed, image, 1])``."""
    return torch.from_numpy(np.random.default_rng([seed, image, 1]).random(grid_hw)).float()
