"""Points, boxes and masks drawn on an image with PIL (keypoint overlays, ground-truth checks).

Coordinates are continuous original-image pixels (see ``analysis.keypoints``): (0, 0) is the
top-left corner of the image, the centre of pixel (row i, column j) is (j + 0.5, i + 0.5), and
boxes (x0, y0, x1, y1) are pixel edges.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

Colour = tuple[int, int, int]


def annotate(
    image: Image.Image,
    *,
    points: Sequence[tuple[float, float]] = (),
    boxes: Sequence[tuple[float, float, float, float]] = (),
    mask: np.ndarray | None = None,
    labels: Sequence[str] = (),
    colour: Colour = (0, 255, 0),
    mask_alpha: float = 0.3,
) -> Image.Image:
    """A copy of ``image`` (RGB) with ``mask`` (H, W) bool tinted and outlined, ``boxes`` outlined and
    ``points`` (x, y) drawn as ringed dots, each with its ``labels`` entry (if any) beside it.

    Line width and dot size grow with the image (about 1/150 of its short side).
    """
    out = image.convert("RGB")
    scale = max(2, round(min(out.size) / 150))
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (out.height, out.width):
            raise ValueError(f"mask shape {mask.shape} does not match the image ({out.height}, {out.width})")
        rgb = np.asarray(out, dtype=np.float32)
        rgb[mask] = (1 - mask_alpha) * rgb[mask] + mask_alpha * np.asarray(colour, np.float32)
        edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, scale // 2), border_value=0)
        rgb[edge] = colour
        out = Image.fromarray(np.rint(rgb).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=scale)
    radius = 2 * scale
    for i, (x, y) in enumerate(points):
        cx, cy = x - 0.5, y - 0.5  # continuous coordinate -> PIL pixel index
        draw.ellipse((cx - radius - 1, cy - radius - 1, cx + radius + 1, cy + radius + 1), fill=(0, 0, 0))
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
        if i < len(labels) and labels[i]:
            draw.text((cx + radius + 2, cy - radius - 2), labels[i], fill=colour, stroke_width=1, stroke_fill=(0, 0, 0))
    return out
