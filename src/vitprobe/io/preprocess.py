"""Turn RGB images into model input from the model's own preprocessing spec, recording the geometry."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model wants its pixels.

    ``shortest_edge``: resize keeping aspect so the short side has this length, or
    ``resize_hw``: resize the whole image to exactly (H, W); then an optional centre crop
    ``crop_hw``. ``resample`` is a PIL filter (``Image.Resampling``).
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    shortest_edge: int | None = None
    resize_hw: tuple[int, int] | None = (224, 224)
    crop_hw: tuple[int, int] | None = None
    resample: int = Image.Resampling.BICUBIC

    def with_size(self, size_hw: tuple[int, int]) -> PreprocessSpec:
        """Same normalisation, but the whole image resized to exactly (H, W), no crop."""
        return PreprocessSpec(self.mean, self.std, None, tuple(size_hw), None, self.resample)

    def decode_side(self) -> int | None:
        """The side of the smallest square a JPEG decoder may scale an image down to (draft mode) and still
        hand the resize at least the pixels it keeps: the short side for ``shortest_edge``, the longer
        target side for ``resize_hw``; None (decode in full) when the image keeps its own size."""
        if self.shortest_edge is not None:
            return self.shortest_edge
        return max(self.resize_hw) if self.resize_hw is not None else None

    def describe(self) -> str:
        """The resize and crop in a few words, e.g. "short side 448, centre crop 448x448"."""
        if self.shortest_edge is not None:
            words = f"short side {self.shortest_edge}"
        elif self.resize_hw is not None:
            words = f"resize {self.resize_hw[0]}x{self.resize_hw[1]}"
        else:
            words = "as is"
        return words + (f", centre crop {self.crop_hw[0]}x{self.crop_hw[1]}" if self.crop_hw else "")

    def to_dict(self) -> dict:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "shortest_edge": self.shortest_edge,
            "resize_hw": list(self.resize_hw) if self.resize_hw else None,
            "crop_hw": list(self.crop_hw) if self.crop_hw else None,
            "resample": Image.Resampling(self.resample).name.lower(),
        }


@dataclass(frozen=True)
class Geometry:
    """Which pixels of the original image the model saw.

    ``crop_box`` = (top, left, height, width) in original-image pixels (floats); this region
    was resized to ``input_hw`` = (H, W) model-input pixels.
    """

    original_hw: tuple[int, int]
    crop_box: tuple[float, float, float, float]
    input_hw: tuple[int, int]

    def input_to_original(self, y: float, x: float) -> tuple[float, float]:
        """Map a model-input pixel coordinate (y, x) to original-image coordinates (y, x)."""
        top, left, height, width = self.crop_box
        return top + y * height / self.input_hw[0], left + x * width / self.input_hw[1]

    def original_to_input(self, y: float, x: float) -> tuple[float, float]:
        """Map an original-image coordinate (y, x) to model-input coordinates (y, x) (the inverse of
        ``input_to_original``)."""
        top, left, height, width = self.crop_box
        return (y - top) * self.input_hw[0] / height, (x - left) * self.input_hw[1] / width

    def to_dict(self) -> dict:
        return {
            "original_hw": list(self.original_hw),
            "crop_box_tlhw": [round(v, 3) for v in self.crop_box],
            "input_hw": list(self.input_hw),
        }


def snap_to_patches(size_hw: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Round (H, W) to the nearest multiple of the patch size (at least one patch).

    A size that is not a multiple would make the patch embedding silently drop edge pixels.
    """
    snapped = tuple(max(patch_size, round(s / patch_size) * patch_size) for s in size_hw)
    if snapped != tuple(size_hw):
        log.warning(
            "size %dx%d is not a multiple of the patch size %d; using %dx%d",
            *size_hw, patch_size, *snapped,
        )
    return snapped  # type: ignore[return-value]


def _target_and_box(spec: PreprocessSpec, original_hw: tuple[int, int]):
    """Resize target (H, W) and the crop box in original pixels, as floats."""
    h0, w0 = original_hw
    if spec.shortest_edge is not None:
        scale = spec.shortest_edge / min(h0, w0)
        resized = (max(1, round(h0 * scale)), max(1, round(w0 * scale)))
    elif spec.resize_hw is not None:
        resized = spec.resize_hw
    else:
        resized = original_hw
    sy, sx = resized[0] / h0, resized[1] / w0
    if spec.crop_hw is None:
        return resized, None, (0.0, 0.0, float(h0), float(w0))
    ch, cw = min(spec.crop_hw[0], resized[0]), min(spec.crop_hw[1], resized[1])
    top, left = (resized[0] - ch) // 2, (resized[1] - cw) // 2
    return resized, (top, left, ch, cw), (top / sy, left / sx, ch / sy, cw / sx)


def preprocess(
    image: Image.Image, spec: PreprocessSpec, patch_size: int
) -> tuple[torch.Tensor, Image.Image, Geometry]:
    """Return (pixels (3, H, W) float32 normalised, the view of the original the model saw, geometry)."""
    original_hw = (image.height, image.width)
    resized_hw, crop, box = _target_and_box(spec, original_hw)
    img = image.resize((resized_hw[1], resized_hw[0]), resample=spec.resample)
    if crop is not None:
        top, left, ch, cw = crop
        img = img.crop((left, top, left + cw, top + ch))
    input_hw = snap_to_patches((img.height, img.width), patch_size)
    if input_hw != (img.height, img.width):
        img = img.resize((input_hw[1], input_hw[0]), resample=spec.resample)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    pixels = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    top, left, h, w = box
    view = image.crop((round(left), round(top), round(left + w), round(top + h)))
    return pixels, view, Geometry(original_hw, box, input_hw)
