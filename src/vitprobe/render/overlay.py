"""Heat maps on the patch grid drawn over the image they came from, as PIL images."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..analysis.upsample import upsample_map
from .colormap import MapLike, as_numpy, colorize, normalize


def overlay(
    image: Image.Image,
    heat: MapLike,
    alpha: float = 0.5,
    cmap: str = "inferno",
    upsample: str = "bilinear",
    vmin: float | None = None,
    vmax: float | None = None,
    clip: float | None = None,
) -> Image.Image:
    """Blend a patch-grid heat map (H, W) over ``image``; returns an RGB image of the same pixel size.

    The map is min-max scaled on the grid (``vmin`` / ``vmax`` fix the bounds, ``clip`` takes the
    upper one from a percentile, see ``normalize``),
    upsampled to (image height, image width) with ``upsample_map`` ("bilinear" or "nearest"),
    coloured with ``cmap`` and mixed as ``(1 - alpha) * image + alpha * colour``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    grid = as_numpy(heat)
    if grid.ndim != 2:
        raise ValueError(f"overlay expects one heat map (H, W), got shape {tuple(grid.shape)}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    scaled = torch.from_numpy(normalize(grid, "minmax", vmin, vmax, clip))
    pixels = upsample_map(scaled, (image.height, image.width), mode=upsample)
    colour = colorize(pixels, cmap, vmin=0.0, vmax=1.0).astype(np.float32)
    blended = (1.0 - alpha) * rgb + alpha * colour
    return Image.fromarray(np.rint(blended).clip(0, 255).astype(np.uint8))


def side_by_side(images: list[Image.Image], gap: int = 8, background: str = "white") -> Image.Image:
    """Paste images left to right, ``gap`` pixels apart, top-aligned; returns one RGB image."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    width = sum(img.width for img in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(img.height for img in images)), background)
    left = 0
    for img in images:
        canvas.paste(img.convert("RGB"), (left, 0))
        left += img.width + gap
    return canvas
