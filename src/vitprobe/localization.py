"""From a model and images to keypoints, boxes, masks and evaluation scores on the original images.

The glue under ``vitprobe keypoints`` and ``vitprobe evaluate``: a registered method's map of the
whole image, a finder from ``analysis.keypoints``, everything carried onto the original image, and
scores against COCO ground truth beside the baselines of ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .analysis import keypoints as kp
from .analysis.masks import grid_mask_to_image
from .coco import ImageTruth
from .evaluate import (
    AP_KEYS,
    ImageScores,
    LocalizeOptions,
    centre_gaussian,
    coco_box_ap,
    mean_scores,
    random_maps,
    score_image,
    summarize,
)
from .io.images import ImageLoadError, load_image
from .io.preprocess import Geometry, PreprocessSpec
from .methods import Attribution, attribute
from .models.base import VitModel


def attribute_whole(model: VitModel, image: str | Path | Image.Image, method: str = "cls",
                    short_side: int | None = None, **params: Any) -> Attribution:
    """``method``'s maps of one image, the whole image resized keeping its aspect (see ``whole_image_hw``)."""
    picture = load_image(image)
    size = whole_image_hw((picture.height, picture.width), short_side or default_short_side(model.preprocess),
                          model.patch_size)
    return attribute(model, picture, method=method, size=size, **params)


def default_short_side(spec: PreprocessSpec) -> int:
    """The short side, in input pixels, of what the model's own preprocessing produces."""
    if spec.crop_hw is not None:
        return min(spec.crop_hw)
    if spec.resize_hw is not None:
        return min(spec.resize_hw)
    return spec.shortest_edge or 224


MAX_ASPECT = 3
"""The long side of a whole-image input is at most this many times ``short_side``."""


def whole_image_hw(original_hw: tuple[int, int], short_side: int, patch_size: int) -> tuple[int, int]:
    """Input (H, W) for the WHOLE image: short side ≈ ``short_side``, aspect kept, multiples of the patch.

    Nothing is cropped, so every part of the image gets a patch and every annotation can be hit.
    Images longer than ``MAX_ASPECT``:1 get a shorter short side instead of an unbounded long one.
    """
    scale = min(short_side / min(original_hw), MAX_ASPECT * short_side / max(original_hw))
    return tuple(max(patch_size, round(s * scale / patch_size) * patch_size) for s in original_hw)  # type: ignore[return-value]


@dataclass(frozen=True)
class Localized:
    """One image's result: keypoints on the original image (best first), the mask of kept patches
    on the original image (H0, W0) bool, the source map (H, W) and the geometry."""

    keypoints: list[kp.ImageKeypoint]
    mask: np.ndarray
    heat: torch.Tensor
    geometry: Geometry
    patch_size: int


def localize(result: Attribution, opts: LocalizeOptions | None = None) -> list[Localized]:
    """Keypoints, boxes and masks of every image of an attribution, on the original images
    (``opts`` default: components above Otsu's threshold, top 5)."""
    opts = opts or LocalizeOptions()
    found = kp.find(result.maps, opts.find, opts.threshold, opts.fraction, opts.top_k)
    patch = result.layout.patch_size
    return [
        Localized([kp.to_image(k, patch, geo) for k in points], grid_mask_to_image(mask, patch, geo), heat, geo, patch)
        for points, mask, heat, geo in zip(found.keypoints, found.masks, result.maps, result.geometry, strict=True)
    ]


@dataclass(frozen=True)
class EvalOptions:
    """The map: ``method`` with its ``params``; ``short_side`` of the whole-image input (None: the
    model's own), ``draws`` of the random baseline and its ``seed``, ``sigma`` of the centre prior;
    ``masks`` "heads" (DINO: the best head's mask per object, where the method has per-head maps) or
    "fused" (the method's map's own mask)."""

    method: str = "cls"
    params: dict = field(default_factory=dict)
    masks: str = "heads"
    short_side: int | None = None
    draws: int = 20
    seed: int = 0
    sigma: float = 0.25
    localize: LocalizeOptions = LocalizeOptions()


BASELINES = ("model", "random", "centre")


def evaluate_dataset(
    model: VitModel,
    images: list[ImageTruth],
    images_dir: Path,
    opts: EvalOptions,
    on_error: Callable[[Exception], None],
    on_image: Callable[[ImageTruth, Attribution], None] | None = None,
) -> dict:
    """Score the model's maps and both baselines on every annotated image; ``on_error`` is told of
    images that cannot be loaded (they are skipped), ``on_image`` (if given) gets each scored
    image's attribution. Returns per-image scores and the summary."""
    generator = torch.Generator().manual_seed(opts.seed)
    per_image: list[dict] = []
    scores: dict[str, list[ImageScores]] = {name: [] for name in BASELINES}
    evaluated: list[ImageTruth] = []
    found: dict[str, list[dict[int, tuple]]] = {"model": [{}], "random": [{} for _ in range(opts.draws)],
                                                 "centre": [{}]}  # per draw: image id -> detections
    for truth in images:
        if not truth.objects:
            continue
        try:
            picture = load_image(images_dir / truth.file_name)
        except ImageLoadError as err:
            on_error(err)
            continue
        result = attribute_whole(model, picture, opts.method, opts.short_side, **opts.params)
        geometry = result.geometry[0]
        if geometry.original_hw != (truth.height, truth.width):
            on_error(ValueError(f"{images_dir / truth.file_name}: image is {geometry.original_hw[0]}x"
                                f"{geometry.original_hw[1]} but annotated as {truth.height}x{truth.width}"))
            continue
        fused = result.maps
        candidates = fused[:, None] if opts.masks == "fused" else result.candidates
        patch, grid = result.layout.patch_size, result.layout.grid_hw
        k = candidates.shape[1]

        def score(f: torch.Tensor, c: torch.Tensor, patch=patch, geometry=geometry, truth=truth) -> ImageScores:
            return score_image(f, c, patch, geometry, truth, opts.localize)

        centre = centre_gaussian(grid, opts.sigma)
        draws = [score(random_maps(1, grid, generator)[0], random_maps(k, grid, generator)) for _ in range(opts.draws)]
        scored = {"model": score(fused[0], candidates[0]), "random": mean_scores(draws),
                  "centre": score(centre, centre[None])}
        evaluated.append(truth)
        for name, runs in (("model", [scored["model"]]), ("random", draws), ("centre", [scored["centre"]])):
            for draw, run in zip(found[name], runs, strict=True):
                draw[truth.image_id] = run.detections
        if on_image is not None:
            on_image(truth, result)
        for name, value in scored.items():
            scores[name].append(value)
        per_image.append({"file_name": truth.file_name, "grid_hw": list(grid), "input_hw": list(geometry.input_hw),
                          **{name: value.to_dict() for name, value in scored.items()}})
    summary = {}
    for name in BASELINES:
        ap = [coco_box_ap(evaluated, draw) for draw in found[name]] if evaluated else [dict.fromkeys(AP_KEYS)]
        summary[name] = {**summarize(scores[name]),
                         **{key: None if ap[0][key] is None or np.isnan(np.mean([a[key] for a in ap]))
                            else float(np.mean([a[key] for a in ap])) for key in AP_KEYS}}
    return {"images": per_image, "summary": summary}
