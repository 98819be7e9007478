"""Heat maps on the patch grid drawn over the image they came from, as PIL images."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..analysis.upsample import upsample_map
from .colormap import MapLike, as_numpy, colorize, normalize
from .style import Style


def overlay(
    image: Image.Image,
    heat: MapLike,
    style: Style = Style(),
    vmin: float | None = None,
    vmax: float | None = None,
) -> Image.Image:
    """Blend a patch-grid heat map (H, W) over ``image``; returns an RGB image of the same pixel size.

    The map is min-max scaled on the grid, the top taken from the ``style.clip`` percentile
    (``vmin`` / ``vmax`` fix the bounds instead, see ``normalize``), upsampled to (image height,
    image width) by ``style.upsample``, coloured with ``style.cmap`` and mixed as
    ``(1 - alpha) * image + alpha * colour``.
    """
    grid = as_numpy(heat)
    if grid.ndim != 2:
        raise ValueError(f"overlay expects one heat map (H, W), got shape {tuple(grid.shape)}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    scaled = torch.from_numpy(normalize(grid, "minmax", vmin, vmax, style.clip))
    pixels = upsample_map(scaled, (image.height, image.width), mode=style.upsample)
    colour = colorize(pixels, style.cmap, vmin=0.0, vmax=1.0).astype(np.float32)
    blended = (1.0 - style.alpha) * rgb + style.alpha * colour
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
