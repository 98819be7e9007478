"""Mean attention distance per head (Dosovitskiy et al. 2021, Raghu et al. 2021), in input pixels.

For head h and query patch q, the attention-weighted distance Σ_k A[q, k]·‖pos(q) − pos(k)‖ over
the key patches k, averaged over the query patches. Positions are patch centres in pixels of the
model input (patch index × patch size; only differences matter). Prefix tokens (CLS,
distillation, registers) are dropped as queries and as keys.

Convention: by default rows are NOT renormalised after dropping the prefix keys, as in the ViT
paper's code (seed 003): attention sent to prefix tokens counts as distance 0, so a head that
parks its mass on CLS or registers reads as local. ``renormalize=True`` divides each row's patch
part by its mass first (distance conditional on attending to patches), which compares models
with different prefix tokens more fairly. Both agree when no mass goes to the prefix.

``mean_attention_distance`` is the readable definition on a full attention tensor (e.g.
``Capture.full``); ``MeanDistance`` is the streamed form that a capture reduces block by block,
without (B, heads, T, T), with the same two conventions (tests check they agree).
"""

from __future__ import annotations

import functools
import math

import torch

from ..kernels.base import LayerRequest, LayerResult, RowStatReducer
from ..layout import TokenLayout


def patch_distances(layout: TokenLayout, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, T) float32 pixel distances between patch centres; rows and columns of prefix tokens are 0."""
    h, w = layout.grid_hw
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=-1).to(torch.float64) * layout.patch_size
    dist = torch.zeros(layout.n_tokens, layout.n_tokens, dtype=torch.float32, device=device)
    dist[layout.n_prefix :, layout.n_prefix :] = torch.cdist(centres, centres).float()
    return dist


def distance_bound(layout: TokenLayout) -> float:
    """Largest possible mean attention distance: P·√((H−1)² + (W−1)²) pixels (corner to corner)."""
    h, w = layout.grid_hw
    return layout.patch_size * math.hypot(h - 1, w - 1)


def uniform_distance(layout: TokenLayout) -> float:
    """Mean attention distance of uniform attention over the patches: the mean pixel distance between
    two patch centres (116.49 px on a 14×14 grid of 16-px patches), a reference between local and global."""
    d = patch_distances(layout)[layout.n_prefix :, layout.n_prefix :]
    return float(d.double().mean())


def mean_attention_distance(
    attn: torch.Tensor, layout: TokenLayout, renormalize: bool = False, dist: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean attention distance in pixels: attention (B, heads, T, T) -> (B, heads), float32.

    ``renormalize``: see the module docstring (default False: prefix mass counts as distance 0).
    ``dist`` may pass a precomputed ``patch_distances(layout)``. Images are reduced one at a time,
    so the only temporary is one image's (heads, T, T).
    """
    if attn.shape[-1] != layout.n_tokens or attn.shape[-2] != layout.n_tokens:
        raise ValueError(f"attention {tuple(attn.shape)} does not match {layout.n_tokens} tokens")
    d = patch_distances(layout, attn.device) if dist is None else dist
    p = layout.n_prefix
    out = torch.empty(attn.shape[:2], dtype=torch.float64, device=attn.device)
    for b in range(attn.shape[0]):
        a = attn[b, :, p:].float()  # patch queries (heads, N, T)
        per_row = torch.linalg.vecdot(a, d[p:])  # prefix columns of d are 0
        if renormalize:
            per_row = per_row / a[..., p:].sum(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
        out[b] = per_row.sum(dim=-1, dtype=torch.float64) / layout.n_patches
    return out.float()



class MeanDistance(RowStatReducer):
    """Mean attention distance per head in input pixels, from per-row statistics: per layer (B, heads).

    Each row's Σ p·D with the ``patch_distances`` matrix D (zero on prefix rows and columns, so prefix
    queries add nothing and prefix keys count as distance 0), a float32 dot of T terms computed by the
    kernel; the rows are summed in float64 (one float32 sum over a block's r·T terms drifted by 5e-4
    relative at T = 4097). ``renormalize`` (as in ``mean_attention_distance``) divides each row by its patch
    mass, Σ p over the patch keys. Both conventions share one row dot.
    """

    def __init__(self, renormalize: bool = False) -> None:
        self.renormalize = renormalize
        self._dist: dict[tuple[TokenLayout, torch.device], torch.Tensor] = {}

    def ask(self, request: LayerRequest, layout: TokenLayout, device: torch.device) -> None:
        request.dots["patch_distance"] = _cached_distances(layout, torch.device(device))
        if self.renormalize:
            request.masses.add(layout.n_prefix)

    def reduce(self, result: LayerResult, layout: TokenLayout) -> torch.Tensor:
        p = layout.n_prefix
        per_row = result.dots["patch_distance"][..., p:]  # prefix rows of D are 0
        if self.renormalize:
            mass = result.masses[p][..., p:].clamp_min(torch.finfo(torch.float32).tiny)
            return (per_row / mass).mean(dim=-1, dtype=torch.float64).float()
        return (per_row.sum(dim=-1, dtype=torch.float64) / layout.n_patches).float()


@functools.lru_cache(maxsize=8)
def _cached_distances(layout: TokenLayout, device: torch.device) -> torch.Tensor:
    """``patch_distances`` kept for the layouts in use (one (T, T) matrix each: 7.5 MB at T = 1370)."""
    return patch_distances(layout, device)
