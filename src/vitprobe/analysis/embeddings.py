"""What the embedding layers learned: patch-projection filters and position-embedding similarity.

- ``patch_filters``: the kernels of the patch projection (D, 3, P, P) as RGB images (D, P, P, 3),
  each min-max scaled over its own values (seed 003, method IV).
- ``filter_components``: the principal components of those kernels (the ViT paper's fig. 7, left).
- ``position_similarity``: cosine similarity (or seed 003's dot product) of every position's
  embedding with every other, (H, W, H, W): entry [r, c] is the (H, W) map drawn at grid cell
  (r, c) in the ViT paper's fig. 7 (centre); ``.reshape(H·W, H·W)`` is seed 003's single matrix.
- ``resize_positions``: a table at its native grid (DINOv2: 37×37) resized to the grid of a given
  input the way Hugging Face models do it (bicubic, align_corners=False, in float32), i.e. the
  positions the model actually added at that size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIMILARITIES = ("cosine", "dot")


def patch_filters(weight: torch.Tensor) -> torch.Tensor:
    """Patch projection (D, 3, P, P) -> RGB filters (D, P, P, 3) in [0, 1], each scaled by its own min..max.

    A constant filter (no contrast) becomes all zeros.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected a patch projection (D, 3, P, P), got {tuple(weight.shape)}")
    w = weight.detach().float().permute(0, 2, 3, 1)
    flat = w.flatten(1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    span = (hi - lo).view(-1, 1, 1, 1)
    scaled = (w - lo.view(-1, 1, 1, 1)) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, scaled, torch.zeros_like(scaled))


def filter_components(weight: torch.Tensor, k: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k principal components of the D kernels (each a 3·P·P vector, centred over D).

    Returns (components (k, P, P, 3) min-max scaled to [0, 1] like ``patch_filters``, explained
    variance ratio (k,)). The sign of a component is arbitrary; it is fixed so that its largest
    absolute entry is positive.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected a patch projection (D, 3, P, P), got {tuple(weight.shape)}")
    d, _, p, _ = weight.shape
    x = weight.detach().to(torch.float64).flatten(1)
    x = x - x.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(k, vh.shape[0])
    comps = vh[:k]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    comps = comps * signs
    var = s * s
    ratio = var[:k] / var.sum()
    return patch_filters(comps.view(k, 3, p, p).float()), ratio.float()


def position_similarity(grid: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Similarity of every position's embedding with every other: table (H, W, D) -> (H, W, H, W), float32."""
    if kind not in SIMILARITIES:
        raise ValueError(f"unknown similarity {kind!r}; use one of {SIMILARITIES}")
    if grid.ndim != 3:
        raise ValueError(f"expected a position table (H, W, D), got {tuple(grid.shape)}")
    h, w, _ = grid.shape
    x = grid.detach().float().reshape(h * w, -1)
    if kind == "cosine":
        x = F.normalize(x, dim=-1)
    return (x @ x.T).reshape(h, w, h, w)


def resize_positions(grid: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Resize a position table (H0, W0, D) to (H, W, D): bicubic, align_corners=False, float32.

    Returns the table unchanged when it already has that grid.
    """
    if tuple(grid.shape[:2]) == tuple(grid_hw):
        return grid.detach().float()
    x = grid.detach().float().permute(2, 0, 1)[None]
    out = F.interpolate(x, size=tuple(grid_hw), mode="bicubic", align_corners=False)
    return out[0].permute(1, 2, 0)


def tile(images: torch.Tensor, columns: int, gap: int = 1) -> torch.Tensor:
    """Images (n, h, w, 3) in [0, 1] side by side in rows of ``columns``, ``gap`` white pixels apart:
    -> (rows·(h + gap) − gap, columns·(w + gap) − gap, 3)."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    out = torch.ones(rows * (h + gap) - gap, columns * (w + gap) - gap, 3)
    for i, image in enumerate(images.float()):
        r, c = divmod(i, columns)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = image
    return out
