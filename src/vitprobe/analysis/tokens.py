"""Artifact tokens (Darcet et al., "Vision Transformers Need Registers", 2024).

Some patch tokens of large ViTs carry outlier norms (about 10× the others) and show up as
isolated bright patches in the CLS attention maps; register tokens remove them. Here, per layer
and image, on the PATCH tokens only (CLS, distillation and register tokens are never counted, so
models with and without registers are compared on the same footing):

- ``norm_outliers``: a patch whose output-token L2 norm exceeds ``ratio`` × the median patch
  norm of that image and layer (default 4: between the ≤ 2× spread of ordinary tokens we
  measured and the ~10× of artifacts);
- ``isolated_peaks``: a patch of a CLS map (H, W) brighter than ``ratio`` × its second-brightest
  grid neighbour (of up to 8): it stands out from all its surroundings but at most one neighbour,
  so pairs of adjacent artifact patches count while the corners and edges of objects do not;
- ``artifact_counts``: how many patches are outliers, peaks and both, per layer (the CLS map of
  a layer is paired with the norms of the same layer's output, as in the paper's figures).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import TokenLayout
from .accumulate import Accumulator

OUTLIER_RATIO = 4.0
PEAK_RATIO = 3.0


def patch_norms(token_norms: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Output-token norms (..., T) -> the patch tokens' norms (..., N); prefix tokens dropped."""
    if token_norms.shape[-1] != layout.n_tokens:
        raise ValueError(f"norms have {token_norms.shape[-1]} tokens, layout expects {layout.n_tokens}")
    return token_norms[..., layout.n_prefix :]


def norm_outliers(norms: torch.Tensor, ratio: float = OUTLIER_RATIO) -> torch.Tensor:
    """Patch norms (..., N) -> bool (..., N): norm > ratio × the median (interpolated) over the N patches."""
    median = torch.quantile(norms.to(torch.float64), 0.5, dim=-1, keepdim=True)
    return norms.to(torch.float64) > ratio * median


def max_over_median(norms: torch.Tensor) -> torch.Tensor:
    """Largest patch norm over the median patch norm (threshold-free): (..., N) -> (...), float64."""
    n = norms.to(torch.float64)
    return n.amax(dim=-1) / torch.quantile(n, 0.5, dim=-1)


def second_brightest_neighbour(maps: torch.Tensor) -> torch.Tensor:
    """Second-largest value among each cell's up to 8 grid neighbours: (..., H, W) -> (..., H, W), float64.

    Cells outside the grid do not count; a cell with a single neighbour gets −inf.
    """
    h, w = maps.shape[-2:]
    x = maps.to(torch.float64).reshape(-1, 1, h, w)
    padded = F.pad(x, (1, 1, 1, 1), value=-float("inf"))
    patches = F.unfold(padded, kernel_size=3)  # (n, 9, H·W), centre is entry 4
    neighbours = torch.cat([patches[:, :4], patches[:, 5:]], dim=1)
    return neighbours.topk(2, dim=1).values[:, 1].reshape(maps.shape)


def isolated_peaks(maps: torch.Tensor, ratio: float = PEAK_RATIO) -> torch.Tensor:
    """Maps (..., H, W) -> bool (..., H, W): value > ratio × the cell's second-brightest neighbour."""
    return maps.to(torch.float64) > ratio * second_brightest_neighbour(maps)


def artifact_counts(
    token_norms: torch.Tensor,
    layout: TokenLayout,
    cls_maps: torch.Tensor | None = None,
    outlier_ratio: float = OUTLIER_RATIO,
    peak_ratio: float = PEAK_RATIO,
) -> dict[str, torch.Tensor]:
    """Per layer and image counts from norms (L, B, T) and head-fused CLS maps (L, B, H, W).

    Returns (L, B) tensors: ``outliers`` (int64), ``max_over_median`` (float64) and, with
    ``cls_maps``, ``peaks`` and ``outlier_peaks`` (outliers that are also isolated peaks).
    """
    norms = patch_norms(token_norms, layout)
    outliers = norm_outliers(norms, outlier_ratio)
    out = {"outliers": outliers.sum(-1), "max_over_median": max_over_median(norms)}
    if cls_maps is not None:
        if tuple(cls_maps.shape[-2:]) != layout.grid_hw or cls_maps.shape[:2] != norms.shape[:2]:
            raise ValueError(f"CLS maps {tuple(cls_maps.shape)} do not match norms {tuple(norms.shape)}")
        peaks = isolated_peaks(cls_maps, peak_ratio).flatten(-2)
        out["peaks"] = peaks.sum(-1)
        out["outlier_peaks"] = (peaks & outliers).sum(-1)
    return out


class ArtifactCounts(Accumulator):
    """Dataset totals of ``artifact_counts`` for ``n_layers`` layers.

    ``update(counts, n_patches)`` with the dict of (L, B) tensors. ``compute`` gives per layer (L,):
    ``outlier_share`` (outlier patches / all patches), ``images_with_outliers`` (share of images),
    ``peak_share`` and ``outliers_in_peaks`` (share of outlier patches that are isolated CLS peaks;
    NaN where there is no outlier).
    """

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        zeros = torch.zeros(n_layers, dtype=torch.int64)
        self.add_state("images", torch.zeros((), dtype=torch.int64), "sum")
        self.add_state("patches", zeros, "sum")
        for name in ("outliers", "images_with_outliers", "peaks", "outlier_peaks"):
            self.add_state(name, zeros, "sum")

    def update(self, counts: dict[str, torch.Tensor], n_patches: int) -> None:
        outliers = counts["outliers"]
        self._add("images", torch.tensor(outliers.shape[1]))
        self._add("patches", torch.full_like(outliers[:, 0], n_patches * outliers.shape[1]))
        self._add("outliers", outliers.sum(1))
        self._add("images_with_outliers", (outliers > 0).sum(1))
        if "peaks" in counts:
            self._add("peaks", counts["peaks"].sum(1))
            self._add("outlier_peaks", counts["outlier_peaks"].sum(1))

    def compute(self) -> dict[str, torch.Tensor]:
        outliers = self.state("outliers").double()
        images = max(int(self.state("images")), 1)
        patches = self.state("patches").double().clamp_min(1)
        in_peaks = torch.where(outliers > 0, self.state("outlier_peaks").double() / outliers.clamp_min(1), torch.nan)
        return {
            "outlier_share": outliers / patches,
            "images_with_outliers": self.state("images_with_outliers").double() / images,
            "peak_share": self.state("peaks").double() / patches,
            "outliers_in_peaks": in_peaks,
            "images": self.state("images"),
        }


def fill_masked(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Maps (..., H, W) with each masked cell replaced by the median of its unmasked grid neighbours (of up
    to 8), or by the map's median over its unmasked cells when none is; unmasked cells are kept."""
    h, w = maps.shape[-2:]
    x = maps.reshape(-1, 1, h, w).double()
    keep = ~mask.reshape(-1, 1, h, w)
    padded = F.pad(torch.where(keep, x, torch.nan), (1, 1, 1, 1), value=torch.nan)
    around = F.unfold(padded, kernel_size=3).nan_to_num(nan=torch.nan)  # (n, 9, H·W)
    local = around.nanmedian(dim=1).values.reshape(x.shape)
    overall = torch.stack([m[k].median() if k.any() else m.median() for m, k in zip(x, keep, strict=True)])
    filled = torch.where(local.isnan(), overall.view(-1, 1, 1, 1), local)
    return torch.where(keep, x, filled).reshape(maps.shape).to(maps.dtype)


def artifact_mask(maps: torch.Tensor, norms: torch.Tensor | None = None, outlier_ratio: float = OUTLIER_RATIO,
                  peak_ratio: float = PEAK_RATIO) -> torch.Tensor:
    """The cells of maps (B, H, W) that are artifacts: patches whose output-token norm (B, H, W) is an
    outlier (``norm_outliers``), or isolated peaks of the map itself (``isolated_peaks``); bool (B, H, W)."""
    mask = isolated_peaks(maps, peak_ratio)
    if norms is not None:
        mask |= norm_outliers(norms.flatten(-2), outlier_ratio).reshape(maps.shape)
    return mask
