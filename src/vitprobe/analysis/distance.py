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

Video models (a layout with a time axis): ``axis="space"`` is the pixel distance between the (row, col)
centres of two tokens whatever their tubelet steps; ``axis="time"`` (``mean_attention_distance_frames``)
puts |t_i − t_j| × tubelet size, in input frames, in place of the pixel distance, with the same
convention (prefix tokens dropped as queries and keys, rows not renormalised unless asked).
``temporal_profile`` is the share of each patch row's attention on patches of the same, an earlier and a
later tubelet step, averaged over the patch queries (prefix mass in none of the three).
"""

from __future__ import annotations

import functools
import math

import torch

from ..kernels.base import LayerRequest, LayerResult, RowStatReducer
from ..layout import TokenLayout

AXES = ("space", "time")


def _positions(layout: TokenLayout) -> torch.Tensor:
    """(N, 3) float64 (step, row, col) of the patch tokens in token order."""
    return torch.tensor(layout.patch_positions(), dtype=torch.float64).reshape(-1, 3)


def patch_distances(layout: TokenLayout, device: torch.device | str = "cpu", axis: str = "space") -> torch.Tensor:
    """(T, T) float32 distances between patch tokens; rows and columns of prefix tokens are 0.

    ``axis="space"``: pixels between the patch centres (row, col) × patch size (for a video model whatever
    the tubelet steps); ``axis="time"``: |t_i − t_j| × tubelet size in input frames (0 for an image)."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")
    positions = _positions(layout)
    if axis == "space":
        centres = positions[:, 1:] * layout.patch_size
        between = torch.cdist(centres, centres)
    else:
        steps = positions[:, 0] * layout.tubelet
        between = (steps[:, None] - steps[None, :]).abs()
    dist = torch.zeros(layout.n_tokens, layout.n_tokens, dtype=torch.float32, device=device)
    dist[layout.n_prefix :, layout.n_prefix :] = between.float()
    return dist


PROFILE = ("same", "earlier", "later")
"""The three parts of a temporal profile, in this order."""


def step_masks(layout: TokenLayout, device: torch.device | str = "cpu") -> torch.Tensor:
    """(3, T, T) float32 0/1 masks of the key patches of the same, an earlier and a later tubelet step than
    the query patch (``PROFILE`` order); prefix rows and columns are 0."""
    steps = _positions(layout)[:, 0]
    gap = steps[None, :] - steps[:, None]  # key step − query step
    masks = torch.zeros(3, layout.n_tokens, layout.n_tokens, dtype=torch.float32, device=device)
    p = layout.n_prefix
    for i, part in enumerate((gap == 0, gap < 0, gap > 0)):
        masks[i, p:, p:] = part.float()
    return masks


def temporal_profile(attn: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Share of attention on the same, earlier and later tubelet steps: attention (B, heads, T, T) ->
    (B, heads, 3), each the mean over the patch queries of the row's mass on those key patches (not
    renormalised: the three sum to 1 minus the mass on prefix tokens)."""
    if attn.shape[-1] != layout.n_tokens or attn.shape[-2] != layout.n_tokens:
        raise ValueError(f"attention {tuple(attn.shape)} does not match {layout.n_tokens} tokens")
    masks = step_masks(layout, attn.device)
    p = layout.n_prefix
    out = torch.empty(*attn.shape[:2], 3, dtype=torch.float64, device=attn.device)
    for b in range(attn.shape[0]):
        a = attn[b, :, p:].float()  # (heads, N, T)
        for i in range(3):
            out[b, :, i] = torch.linalg.vecdot(a, masks[i, p:]).sum(dim=-1, dtype=torch.float64) / layout.n_patches
    return out.float()


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
    attn: torch.Tensor, layout: TokenLayout, renormalize: bool = False, dist: torch.Tensor | None = None,
    axis: str = "space",
) -> torch.Tensor:
    """Mean attention distance in pixels (``axis="time"``: in input frames): attention (B, heads, T, T) ->
    (B, heads), float32.

    ``renormalize``: see the module docstring (default False: prefix mass counts as distance 0).
    ``dist`` may pass a precomputed ``patch_distances(layout, axis=axis)``. Images are reduced one at a
    time, so the only temporary is one image's (heads, T, T).
    """
    if attn.shape[-1] != layout.n_tokens or attn.shape[-2] != layout.n_tokens:
        raise ValueError(f"attention {tuple(attn.shape)} does not match {layout.n_tokens} tokens")
    d = patch_distances(layout, attn.device, axis) if dist is None else dist
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

    def __init__(self, renormalize: bool = False, axis: str = "space") -> None:
        if axis not in AXES:
            raise ValueError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")
        self.renormalize = renormalize
        self.axis = axis
        self._key = "patch_distance" if axis == "space" else "frame_distance"

    def ask(self, request: LayerRequest, layout: TokenLayout, device: torch.device) -> None:
        request.dots[self._key] = _cached_distances(layout, torch.device(device), self.axis)
        if self.renormalize:
            request.masses.add(layout.n_prefix)

    def reduce(self, result: LayerResult, layout: TokenLayout) -> torch.Tensor:
        p = layout.n_prefix
        per_row = result.dots[self._key][..., p:]  # prefix rows of D are 0
        if self.renormalize:
            mass = result.masses[p][..., p:].clamp_min(torch.finfo(torch.float32).tiny)
            return (per_row / mass).mean(dim=-1, dtype=torch.float64).float()
        return (per_row.sum(dim=-1, dtype=torch.float64) / layout.n_patches).float()


class TemporalProfile(RowStatReducer):
    """``temporal_profile`` from per-row statistics: per layer (B, heads, 3), the same, earlier and later
    shares (three float32 row dots with the ``step_masks``, rows summed in float64)."""

    def ask(self, request: LayerRequest, layout: TokenLayout, device: torch.device) -> None:
        masks = _cached_masks(layout, torch.device(device))
        for name, mask in zip(PROFILE, masks, strict=True):
            request.dots[f"step_{name}"] = mask

    def reduce(self, result: LayerResult, layout: TokenLayout) -> torch.Tensor:
        p = layout.n_prefix
        parts = [result.dots[f"step_{name}"][..., p:].sum(dim=-1, dtype=torch.float64) / layout.n_patches
                 for name in PROFILE]
        return torch.stack(parts, dim=-1).float()


@functools.lru_cache(maxsize=8)
def _cached_distances(layout: TokenLayout, device: torch.device, axis: str = "space") -> torch.Tensor:
    """``patch_distances`` kept for the layouts in use (one (T, T) matrix each: 7.5 MB at T = 1370)."""
    return patch_distances(layout, device, axis)


@functools.lru_cache(maxsize=4)
def _cached_masks(layout: TokenLayout, device: torch.device) -> torch.Tensor:
    return step_masks(layout, device)
