"""Localisation metrics for attention maps, and the baseline maps every number is shown beside.

Metrics, all in original-image pixels:

- pointing game: the map's maximum (its patch centre) falls inside a ground-truth box, grown
  by ``tolerance`` pixels on every side (Zhang et al. use 15 px);
- PCK@α: labelled keypoints matched one-to-one (Hungarian, on distance) to the predicted
  keypoints; a match counts when closer than α · max(box width, box height) of its object;
- box IoU and CorLoc: the top region's box against the best-overlapping ground-truth box;
  CorLoc is the fraction of images with IoU ≥ 0.5;
- mask Jaccard by the DINO protocol: each candidate map (each head) gives a mass-threshold
  mask; per object the best candidate's Jaccard, averaged over the image's objects, then
  over images;
- box AP by COCO's own ``COCOeval`` (``pycocotools``), class-agnostic (``useCats = 0``): every
  found region's box is a detection scored by its mass (the keypoint finder's score), against all
  annotated boxes, crowd annotations handled as COCO does (matches to them are ignored); AP over
  IoU 0.50:0.95, AP50 and AP75.

Baselines run through exactly the same pipeline: ``random_maps`` (i.i.d. uniform per patch, as
many independent maps as the model has candidates, so best-head selection helps them equally)
and ``centre_gaussian`` (one map peaked at the grid centre).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .analysis import keypoints as kp
from .analysis.masks import grid_mask_to_image, mass_masks
from .analysis.thresholds import OTSU, Threshold
from .coco import ImageTruth
from .io.preprocess import Geometry

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in pixels."""


def xywh_to_xyxy(box: Sequence[float]) -> Box:
    x, y, w, h = box
    return x, y, x + w, y + h


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (0 when both are empty)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def point_in_box(x: float, y: float, box: Box, tolerance: float = 0.0) -> bool:
    """Whether (x, y) lies in the (x0, y0, x1, y1) box grown by ``tolerance`` on every side."""
    return box[0] - tolerance <= x <= box[2] + tolerance and box[1] - tolerance <= y <= box[3] + tolerance


def pck_matches(predicted: np.ndarray, truth: np.ndarray, max_distance: float) -> int:
    """How many ground-truth points (M, 2) have a predicted point (N, 2) within ``max_distance``,
    matching one-to-one so that the total distance is smallest (one prediction serves one truth)."""
    if len(predicted) == 0 or len(truth) == 0:
        return 0
    dist = np.linalg.norm(truth[:, None, :] - predicted[None, :, :], axis=-1)
    rows, cols = linear_sum_assignment(dist)
    return int((dist[rows, cols] <= max_distance).sum())


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a ∩ b| / |a ∪ b| of two bool masks of one shape (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def random_maps(n: int, grid_hw: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Uniform random baseline: (n, H, W) i.i.d. U(0, 1) per patch."""
    return torch.rand(n, *grid_hw, generator=generator, dtype=torch.float64)


def centre_gaussian(grid_hw: tuple[int, int], sigma: float = 0.25) -> torch.Tensor:
    """Centre-prior baseline (H, W): a Gaussian at the grid centre, σ = ``sigma`` × each side."""
    h, w = grid_hw
    rows = (torch.arange(h, dtype=torch.float64) - (h - 1) / 2) / (sigma * h)
    cols = (torch.arange(w, dtype=torch.float64) - (w - 1) / 2) / (sigma * w)
    return torch.exp(-0.5 * (rows[:, None] ** 2 + cols[None, :] ** 2))


@dataclass(frozen=True)
class LocalizeOptions:
    """How maps become predictions: keypoint ``find``er (``analysis.keypoints.FINDERS``) with
    ``threshold`` / ``fraction``, ``top_k`` keypoints for PCK, PCK ``alpha``, pointing ``tolerance``
    (px), mask ``fraction``."""

    find: str = "components"
    threshold: Threshold = OTSU
    fraction: float = 0.6
    top_k: int = 5
    alpha: float = 0.1
    tolerance: float = 15.0


@dataclass(frozen=True)
class ImageScores:
    """One image's scores (means over draws for the random baseline).

    ``pointing``: hit (1) or miss (0); ``pck_hits`` of ``pck_total`` labelled keypoints; ``iou``
    of the top box and ``corloc`` (1 when iou ≥ 0.5); ``jaccard`` the DINO-protocol mask score,
    None without segmented objects; ``detections`` the found boxes (x, y, w, h, score) for box AP
    (none for a mean over draws).
    """

    pointing: float
    pck_hits: float
    pck_total: int
    iou: float
    corloc: float
    jaccard: float | None
    detections: tuple[tuple[float, float, float, float, float], ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


def score_image(
    fused: torch.Tensor,
    candidates: torch.Tensor,
    patch_size: int,
    geometry: Geometry,
    truth: ImageTruth,
    opts: LocalizeOptions,
) -> ImageScores:
    """Score one image's maps against its ground truth.

    ``fused`` (H, W) gives the pointing-game maximum, the keypoints and the box; ``candidates``
    (K, H, W) (e.g. each head) give the mass-threshold masks, best per object.
    """
    h, w = fused.shape
    flat = int(torch.argmax(fused.flatten()))
    px, py = kp.grid_to_image(flat // w, flat % w, patch_size, geometry)
    boxes = [xywh_to_xyxy(obj.box) for obj in truth.objects]
    pointing = float(any(point_in_box(px, py, box, opts.tolerance) for box in boxes))

    found = kp.find(fused[None], opts.find, opts.threshold, opts.fraction, opts.top_k).keypoints[0]
    placed = [kp.to_image(k, patch_size, geometry) for k in found]
    points = np.array([(k.x, k.y) for k in placed]).reshape(-1, 2)
    hits, total = 0, 0
    for obj, box in zip(truth.objects, boxes, strict=True):
        size = max(box[2] - box[0], box[3] - box[1])
        hits += pck_matches(points, obj.keypoints, opts.alpha * size)
        total += len(obj.keypoints)
    iou = max((box_iou(placed[0].box, box) for box in boxes), default=0.0) if placed else 0.0

    segmented = [obj.mask for obj in truth.objects if obj.mask is not None]
    score = None
    if segmented:
        masks = [grid_mask_to_image(m, patch_size, geometry) for m in mass_masks(candidates, opts.fraction)]
        score = float(np.mean([max(jaccard(m, gt) for m in masks) for gt in segmented]))
    detections = tuple((k.box[0], k.box[1], k.box[2] - k.box[0], k.box[3] - k.box[1], float(k.score)) for k in placed)
    return ImageScores(pointing, hits, total, iou, float(iou >= 0.5), score, detections)


def mean_scores(scores: Sequence[ImageScores]) -> ImageScores:
    """Average of one image's scores over several draws (the random baseline)."""
    jac = [s.jaccard for s in scores if s.jaccard is not None]
    return ImageScores(
        float(np.mean([s.pointing for s in scores])), float(np.mean([s.pck_hits for s in scores])),
        scores[0].pck_total, float(np.mean([s.iou for s in scores])), float(np.mean([s.corloc for s in scores])),
        float(np.mean(jac)) if jac else None,
    )


AP_KEYS = ("box_ap", "box_ap50", "box_ap75")


def coco_box_ap(truths: Sequence[ImageTruth], detections: dict[int, Sequence[Sequence[float]]]) -> dict[str, float]:
    """COCO box AP, class-agnostic, of ``detections`` (image id -> (x, y, w, h, score) rows) against the
    boxes of ``truths`` (the evaluated images only): {box_ap, box_ap50, box_ap75}; NaN where COCOeval
    has nothing to measure (no ground truth)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": t.image_id, "height": t.height, "width": t.width} for t in truths]
    annotations = [{"id": n, "image_id": t.image_id, "category_id": 1, "bbox": list(obj.box), "area": obj.area,
                    "iscrowd": int(obj.crowd)}
                   for n, (t, obj) in enumerate(((t, o) for t in truths for o in t.objects), start=1)]
    found = [{"image_id": image_id, "category_id": 1, "bbox": list(row[:4]), "score": float(row[4])}
             for image_id, rows in detections.items() for row in rows]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
        truth.createIndex()
        if not found:
            return dict.fromkeys(AP_KEYS, 0.0) if annotations else dict.fromkeys(AP_KEYS, float("nan"))
        evaluation = COCOeval(truth, truth.loadRes(found), "bbox")
        evaluation.params.useCats = 0
        evaluation.params.imgIds = [t.image_id for t in truths]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = [float("nan") if v < 0 else float(v) for v in evaluation.stats[:3]]  # -1: nothing to measure
    return dict(zip(AP_KEYS, stats, strict=True))


def summarize(scores: Sequence[ImageScores]) -> dict[str, float | None]:
    """Dataset numbers: pointing game, PCK (pooled over keypoints), mean box IoU, CorLoc, mask Jaccard
    (mean over images with segmented objects); None where no image has what a metric needs."""
    if not scores:
        return dict.fromkeys(("pointing_game", "pck", "box_iou", "corloc", "mask_jaccard"))
    total = sum(s.pck_total for s in scores)
    jac = [s.jaccard for s in scores if s.jaccard is not None]
    return {
        "pointing_game": float(np.mean([s.pointing for s in scores])),
        "pck": sum(s.pck_hits for s in scores) / total if total else None,
        "box_iou": float(np.mean([s.iou for s in scores])),
        "corloc": float(np.mean([s.corloc for s in scores])),
        "mask_jaccard": float(np.mean(jac)) if jac else None,
    }
