"""Keypoints and boxes from attention maps on the patch grid, and their place on the original image.

Coordinates. On the grid, ``(row, col)`` are patch indices and patch ``(r, c)`` is centred at
``(r, c)``; sub-patch positions are fractional. In model-input pixels that centre lies at
``((c + 0.5)·P, (r + 0.5)·P)`` as (x, y), P the patch size, and a patch covers
``[c·P, (c + 1)·P) × [r·P, (r + 1)·P)``. ``Geometry.input_to_original`` then carries input
pixels onto the original image. Image coordinates are continuous with (0, 0) at the top-left
corner of the top-left pixel, so pixel (i, j) (row i, column j) has its centre at
(x, y) = (j + 0.5, i + 0.5). Boxes on the grid are inclusive patch indices
``(row0, col0, row1, col1)``; on the image they are pixel edges ``(x0, y0, x1, y1)``.

Finders (each maps (B, H, W) -> per map a mask of kept patches and keypoints, best first):

- ``components``: threshold, 8-connected (or 4-) components; one keypoint per component at its
  centroid; ranked by mass (sum of the map over the component);
- ``weighted``: one keypoint, the map-weighted average position of the patches above threshold;
- ``peaks``: local maxima above threshold, non-maximum suppression, each refined to the weighted
  centroid of the kept patches in a small window; ranked by peak value;
- ``mass``: components of DINO's mass-threshold mask (see ``masks.mass_masks``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage

from ..choices import FINDERS
from ..io.preprocess import Geometry
from .masks import mass_masks
from .thresholds import OTSU, Threshold

GridBox = tuple[int, int, int, int]
"""(row0, col0, row1, col1), inclusive patch indices."""


@dataclass(frozen=True)
class Keypoint:
    """A keypoint on the patch grid and the region it stands for.

    ``row``, ``col``: grid position (patch centres at integers); ``score``: what the method ranks
    by (mass for components / weighted / mass, peak value for peaks); ``peak``: the largest map
    value in the region; ``area``: patches in the region; ``box``: the region's bounding box.
    """

    row: float
    col: float
    score: float
    peak: float
    area: int
    box: GridBox


@dataclass(frozen=True)
class Found:
    """What a method found in a batch: ``masks`` (B, H, W) bool, the patches it kept; ``keypoints``
    one list per map, best first."""

    masks: torch.Tensor
    keypoints: list[list[Keypoint]]


@dataclass(frozen=True)
class ImageKeypoint:
    """A keypoint on the original image: ``x``, ``y`` and ``box`` (x0, y0, x1, y1) in original pixels,
    ``area`` in original pixels; ``grid`` is the keypoint it came from."""

    x: float
    y: float
    score: float
    peak: float
    area: float
    box: tuple[float, float, float, float]
    grid: Keypoint

    def to_dict(self, digits: int = 2) -> dict:
        return {
            "x": round(self.x, digits),
            "y": round(self.y, digits),
            "score": float(self.score),
            "area": round(self.area, digits),
            "peak": float(self.peak),
            "box_xyxy": [round(v, digits) for v in self.box],
            "grid": {**asdict(self.grid), "box": list(self.grid.box)},
        }


def grid_to_image(row: float, col: float, patch_size: int, geometry: Geometry) -> tuple[float, float]:
    """Grid position (row, col) -> original-image (x, y), through the patch centre in input pixels."""
    y, x = geometry.input_to_original((row + 0.5) * patch_size, (col + 0.5) * patch_size)
    return x, y


def grid_box_to_image(box: GridBox, patch_size: int, geometry: Geometry) -> tuple[float, float, float, float]:
    """Inclusive grid box (row0, col0, row1, col1) -> original-image pixel edges (x0, y0, x1, y1)."""
    row0, col0, row1, col1 = box
    y0, x0 = geometry.input_to_original(row0 * patch_size, col0 * patch_size)
    y1, x1 = geometry.input_to_original((row1 + 1) * patch_size, (col1 + 1) * patch_size)
    return x0, y0, x1, y1


def to_image(keypoint: Keypoint, patch_size: int, geometry: Geometry) -> ImageKeypoint:
    """Carry a grid keypoint onto the original image (see the module's coordinate convention)."""
    x, y = grid_to_image(keypoint.row, keypoint.col, patch_size, geometry)
    top, left, height, width = geometry.crop_box
    patch_pixels = patch_size**2 * (height / geometry.input_hw[0]) * (width / geometry.input_hw[1])
    return ImageKeypoint(
        x, y, keypoint.score, keypoint.peak, keypoint.area * patch_pixels,
        grid_box_to_image(keypoint.box, patch_size, geometry), keypoint,
    )


def components(
    maps: torch.Tensor, threshold: Threshold, connectivity: int = 2, top_k: int | None = None
) -> Found:
    """Threshold, then one keypoint per connected component at its centroid: maps (B, H, W)."""
    return regions(maps, threshold.mask(_check(maps)), connectivity, top_k)


def mass(maps: torch.Tensor, fraction: float = 0.6, connectivity: int = 2, top_k: int | None = None) -> Found:
    """Components of the mass-threshold mask (smallest patch set with ``fraction`` of the mass): maps (B, H, W)."""
    return regions(maps, mass_masks(_check(maps), fraction), connectivity, top_k)


def regions(maps: torch.Tensor, masks: torch.Tensor, connectivity: int = 2, top_k: int | None = None) -> Found:
    """One keypoint per connected component of ``masks`` (B, H, W) over ``maps`` (B, H, W).

    Each keypoint sits at its component's centroid (plain mean of the patch positions) and is
    ranked by the component's mass; ``connectivity`` 2 joins diagonal neighbours, 1 does not.
    """
    values = _numpy(_check(maps))
    keep = masks.detach().cpu().numpy().astype(bool)
    structure = ndimage.generate_binary_structure(2, connectivity)
    found = []
    for value, mask in zip(values, keep, strict=True):
        labels, n = ndimage.label(mask, structure=structure)
        found.append(_rank(_label_stats(value, labels, n), top_k))
    return Found(torch.from_numpy(keep), found)


def weighted(maps: torch.Tensor, threshold: Threshold) -> Found:
    """One keypoint per map: the map-weighted mean position of the patches at or above threshold.

    maps (B, H, W), non-negative. A map that keeps no patch (or only zero mass) has no keypoint.
    """
    values = _numpy(_check(maps))
    keep = threshold.mask(maps).cpu().numpy()
    rows, cols = np.indices(values.shape[1:])
    found = []
    for value, mask in zip(values, keep, strict=True):
        w = np.where(mask, value, 0.0)
        total = w.sum()
        if not mask.any() or total <= 0:
            found.append([])
            continue
        r, c = rows[mask], cols[mask]
        box = (int(r.min()), int(c.min()), int(r.max()), int(c.max()))
        found.append([Keypoint(float((w * rows).sum() / total), float((w * cols).sum() / total),
                               float(total), float(value[mask].max()), int(mask.sum()), box)])
    return Found(torch.from_numpy(keep), found)


def peaks(
    maps: torch.Tensor, threshold: Threshold, radius: int = 2, window: int = 1, top_k: int | None = 5
) -> Found:
    """Local maxima at or above threshold, thinned by non-maximum suppression, refined below a patch.

    maps (B, H, W). A patch is a local maximum when no 8-neighbour is larger. Taken in decreasing
    value (ties row-major), a peak is dropped when an accepted peak lies within Chebyshev distance
    ``radius``. Each peak moves to the map-weighted centroid of the above-threshold patches in the
    (2·window + 1)² window around it; ``area`` counts those patches, ``box`` is the box of the
    above-threshold component holding the peak, ``score`` = ``peak`` = the peak value.
    """
    values = _numpy(_check(maps))
    keep = threshold.mask(maps).cpu().numpy()
    structure = ndimage.generate_binary_structure(2, 2)
    found = []
    for value, mask in zip(values, keep, strict=True):
        local_max = (value == ndimage.maximum_filter(value, size=3, mode="constant", cval=-np.inf)) & mask
        labels, _ = ndimage.label(mask, structure=structure)
        boxes = ndimage.find_objects(labels)
        order = np.flatnonzero(local_max)
        order = order[np.argsort(-value.flat[order], kind="stable")]
        accepted: list[tuple[int, int]] = []
        points = []
        for r, c in zip(*np.unravel_index(order, value.shape), strict=True):
            if any(max(abs(r - ar), abs(c - ac)) <= radius for ar, ac in accepted):
                continue
            accepted.append((r, c))
            win = np.s_[max(r - window, 0) : r + window + 1, max(c - window, 0) : c + window + 1]
            w = np.where(mask[win], value[win], 0.0)
            wr, wc = np.indices(w.shape)
            total = w.sum()
            row = (wr * w).sum() / total + win[0].start if total > 0 else r
            col = (wc * w).sum() / total + win[1].start if total > 0 else c
            rs, cs = boxes[labels[r, c] - 1]
            box = (rs.start, cs.start, rs.stop - 1, cs.stop - 1)
            points.append(Keypoint(float(row), float(col), float(value[r, c]), float(value[r, c]),
                                   int(mask[win].sum()), box))
            if top_k is not None and len(points) == top_k:
                break
        found.append(points)
    return Found(torch.from_numpy(keep), found)


def find(
    maps: torch.Tensor,
    finder: str = "components",
    threshold: Threshold | None = None,
    fraction: float = 0.6,
    top_k: int | None = None,
) -> Found:
    """Run one of ``FINDERS`` on maps (B, H, W); ``threshold`` (default Otsu's) for all but
    ``mass``, ``fraction`` for ``mass``; ``top_k`` keeps the best k keypoints of each map."""
    threshold = threshold or OTSU
    if finder == "components":
        return components(maps, threshold, top_k=top_k)
    if finder == "weighted":
        return weighted(maps, threshold)
    if finder == "peaks":
        return peaks(maps, threshold, top_k=top_k)
    if finder == "mass":
        return mass(maps, fraction, top_k=top_k)
    raise ValueError(f"unknown keypoint finder {finder!r}; use one of {', '.join(FINDERS)}")


def _check(maps: torch.Tensor) -> torch.Tensor:
    if maps.ndim != 3:
        raise ValueError(f"expected maps (B, H, W), got shape {tuple(maps.shape)}")
    return maps


def _numpy(maps: torch.Tensor) -> np.ndarray:
    return maps.detach().cpu().double().numpy()


def _label_stats(value: np.ndarray, labels: np.ndarray, n: int) -> list[Keypoint]:
    """Centroid, mass, peak, area and box of components 1..n of ``labels`` over ``value`` (H, W)."""
    if n == 0:
        return []
    flat = labels.ravel()
    rows, cols = np.indices(labels.shape)
    area = np.bincount(flat, minlength=n + 1)[1:]
    row = np.bincount(flat, rows.ravel(), n + 1)[1:] / area
    col = np.bincount(flat, cols.ravel(), n + 1)[1:] / area
    total = np.bincount(flat, value.ravel(), n + 1)[1:]
    peak = ndimage.maximum(value, labels, np.arange(1, n + 1))
    points = []
    for i, (rs, cs) in enumerate(ndimage.find_objects(labels)):
        box = (rs.start, cs.start, rs.stop - 1, cs.stop - 1)
        points.append(Keypoint(float(row[i]), float(col[i]), float(total[i]), float(peak[i]), int(area[i]), box))
    return points


def _rank(points: list[Keypoint], top_k: int | None) -> list[Keypoint]:
    ranked = sorted(points, key=lambda p: -p.score)  # stable: ties stay in label (row-major) order
    return ranked if top_k is None else ranked[:top_k]
