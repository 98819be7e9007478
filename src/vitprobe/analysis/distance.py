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

import math

import torch

from ..capture import AttentionBlock, RowReducer
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



class MeanDistance(RowReducer):
    """Mean attention distance per head in input pixels, streamed: per layer (B, heads).

    Σ p·D per row with the precomputed ``patch_distances`` matrix D (zero on prefix rows and
    columns, so prefix queries add nothing and prefix keys count as distance 0); ``renormalize`` as
    in ``mean_attention_distance``. Each row's T-term dot product is float32; rows are summed in float64
    (one float32 sum over a whole block's r·T terms drifted by 5e-4 relative at T = 4097).
    """

    def __init__(self, renormalize: bool = False) -> None:
        self.renormalize = renormalize
        self._dist: dict[tuple[TokenLayout, torch.device], torch.Tensor] = {}

    def start(self, batch: int, heads: int, layout: TokenLayout, device: torch.device) -> None:
        key = (layout, torch.device(device))
        if key not in self._dist:
            self._dist[key] = patch_distances(layout, device)
        self._layout = layout
        self._d = self._dist[key]
        self._rows = torch.empty(batch, heads, layout.n_tokens, device=device) if self.renormalize else None
        self._sums: list[tuple[slice, torch.Tensor]] = []  # appended from the worker threads
        self._shape = (batch, heads)

    def update(self, block: AttentionBlock) -> None:
        per_row = self._row_sums(block)
        if self.renormalize:
            patch_mass = block.probs[..., self._layout.n_prefix :].sum(dim=-1)
            tiny = torch.finfo(torch.float32).tiny
            self._rows[block.images, :, block.rows] = per_row / patch_mass.clamp_min(tiny)
        else:  # one float32 dot of T terms per row, the rows summed in float64: exact to ~1e-7 at any T
            self._sums.append((block.images, per_row.sum(dim=-1, dtype=torch.float64)))

    def _row_sums(self, block: AttentionBlock) -> torch.Tensor:
        """Σ_t p·D of each row (b, heads, r), one float32 dot of T terms per row (a batched matmul, 4× faster
        than ``vecdot``); shared through the block's memo by both conventions."""
        key = ("distance_rows", self._layout)
        if key not in block.memo:
            block.memo[key] = torch.einsum("bhrt,rt->bhr", block.probs, self._d[block.rows])
        return block.memo[key]

    def finish(self) -> torch.Tensor:
        if self.renormalize:
            rows, self._rows = self._rows, None
            return rows[..., self._layout.n_prefix :].mean(dim=-1, dtype=torch.float64).float()
        total = torch.zeros(self._shape, dtype=torch.float64, device=self._d.device)
        for images, sums in self._sums:
            total[images] += sums
        self._sums = []
        return (total / self._layout.n_patches).float()
