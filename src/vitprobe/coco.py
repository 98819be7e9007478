"""COCO-style annotations: read ground truth for evaluation, write found keypoints and boxes.

Read: ``images`` (id, file_name, height, width), ``categories`` (id, name, optional keypoint
names) and ``annotations`` (image_id, category_id, ``bbox`` [x, y, w, h] in pixels, optional
``keypoints`` [x, y, v, ...] with v > 0 meaning labelled, optional ``iscrowd`` and ``area``,
optional ``segmentation``). Segmentations are decoded by ``pycocotools`` exactly as COCO's own tools
do: polygons [[x1, y1, ...], ...] (rasterised at pixel centres), uncompressed RLE
{"counts": [...], "size": [h, w]} and compressed RLE {"counts": "...", "size": [h, w]} (crowd
annotations and most segmentation datasets).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class AnnotationError(ValueError):
    """A COCO file that cannot be read; the message is one line."""


@dataclass(frozen=True)
class ObjectTruth:
    """One annotated object: ``box`` (x, y, w, h) in pixels; ``keypoints`` (K, 2) labelled (x, y)
    with ``keypoint_names``; ``mask`` (H, W) bool or None when the object has no segmentation;
    ``crowd`` COCO's ``iscrowd``; ``area`` the annotation's own, else the mask's, else the box's."""

    category: str
    box: tuple[float, float, float, float]
    keypoints: np.ndarray
    keypoint_names: tuple[str, ...] = ()
    mask: np.ndarray | None = None
    crowd: bool = False
    area: float = 0.0


@dataclass(frozen=True)
class ImageTruth:
    """An annotated image: its file name (relative to the images folder), size and objects."""

    image_id: int
    file_name: str
    height: int
    width: int
    objects: list[ObjectTruth] = field(default_factory=list)


def load_coco(path: str | Path) -> list[ImageTruth]:
    """Read a COCO file into one ``ImageTruth`` per image (images without annotations included)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnnotationError(f"{path}: cannot read COCO annotations ({err})") from None
    try:
        categories = {c["id"]: c for c in data.get("categories", [])}
        images = {
            img["id"]: ImageTruth(img["id"], img["file_name"], int(img["height"]), int(img["width"]))
            for img in data["images"]
        }
        for ann in data.get("annotations", []):
            image = images[ann["image_id"]]
            image.objects.append(_object(ann, categories.get(ann["category_id"], {}), image))
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise AnnotationError(f"{path}: not a COCO annotation file ({type(err).__name__}: {err})") from None
    return list(images.values())


def _object(ann: dict, category: dict, image: ImageTruth) -> ObjectTruth:
    x, y, w, h = (float(v) for v in ann["bbox"])
    raw = np.asarray(ann.get("keypoints", []), dtype=float).reshape(-1, 3)
    names = tuple(category.get("keypoints", [])) or tuple(f"k{i}" for i in range(len(raw)))
    labelled = raw[:, 2] > 0
    segmentation = ann.get("segmentation")
    mask = _decode(segmentation, image.height, image.width) if segmentation else None
    area = float(ann["area"]) if "area" in ann else float(mask.sum()) if mask is not None else w * h
    return ObjectTruth(
        category.get("name", str(ann["category_id"])), (x, y, w, h), raw[labelled, :2],
        tuple(n for n, keep in zip(names, labelled, strict=False) if keep), mask, bool(ann.get("iscrowd", 0)), area,
    )


def _decode(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Polygons, uncompressed or compressed RLE -> bool mask (height, width), by ``pycocotools``."""
    import warnings

    from pycocotools import mask as coco_mask

    if isinstance(segmentation, dict):
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} is not the image's {[height, width]}")
        rle = (coco_mask.frPyObjects(segmentation, height, width) if isinstance(segmentation["counts"], list)
               else segmentation)
    else:
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    with warnings.catch_warnings():  # pycocotools' __array__ predates numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(rle).astype(bool)


def found_to_coco(records: list[dict]) -> dict:
    """COCO-style dataset of found regions: one annotation per keypoint, category "attention".

    ``records``: per image ``{"file_name", "height", "width", "keypoints": [ImageKeypoint.to_dict(), ...]}``.
    Each annotation holds the keypoint as a one-point COCO keypoint list, its box as ``bbox``
    [x, y, w, h] and its ``score``; ``area`` is the area of its patches in original pixels.
    """
    images, annotations = [], []
    for image_id, rec in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": rec["file_name"], "height": rec["height"], "width": rec["width"]})
        for kp in rec["keypoints"]:
            x0, y0, x1, y1 = kp["box_xyxy"]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)], "area": kp["area"],
                "keypoints": [kp["x"], kp["y"], 2], "num_keypoints": 1, "score": kp["score"], "iscrowd": 0,
            })
    categories = [{"id": 1, "name": "attention", "keypoints": ["point"], "skeleton": []}]
    return {"images": images, "annotations": annotations, "categories": categories}
