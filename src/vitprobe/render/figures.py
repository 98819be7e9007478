"""Grids of overlays as matplotlib Figures: object API on an Agg canvas, no pyplot state, never shown.

Every panel keeps the image's aspect ratio: the figure is sized from the image and each axes box
is placed by hand, so nothing is stretched and little space is wasted. Heat maps are (H, W) on
the patch grid, height first, and are upsampled to the image by ``overlay``.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from .colormap import MapLike, as_numpy, value_range
from .overlay import overlay

NORMALIZE_MODES = ("per_map", "shared")
PANEL_AREA_IN2 = 5.0  # area of one panel in square inches; its shape is the image's
MIN_PANEL_W_IN = 1.0  # keeps labels of very tall, narrow images from overlapping
MAX_PANEL_PIXELS = 800  # longer side of the image drawn in a panel (a panel is ~2.2 in, ~250 px at 110 dpi)
MAX_AUTO_COLUMNS = 6
LABEL_IN, GAP_IN, MARGIN_IN, TITLE_IN = 0.24, 0.08, 0.04, 0.28
CBAR_GAP_IN, CBAR_H_IN, CBAR_TICKS_IN = 0.06, 0.09, 0.2


def head_grid(
    image: Image.Image,
    maps: MapLike,
    title: str = "",
    cmap: str = "inferno",
    alpha: float = 0.5,
    normalize: str = "per_map",
    extra: dict[str, MapLike] | None = None,
    upsample: str = "bilinear",
    colorbar: bool = False,
    ncols: int | None = None,
    clip: float | None = None,
) -> Figure:
    """The image, one overlay per head of ``maps`` (heads, H, W) labelled "head 0", "head 1", ...,
    then each ``extra`` map (H, W) under its name, e.g. ``{"mean": ..., "max": ..., "min": ...}``.

    ``normalize``: "per_map" scales each panel to its own min..max; "shared" uses one min..max over
    all maps so panels can be compared. ``clip`` (a percentile in (0, 100]) sets the top of each scale
    below the max so a few extreme patches saturate; a colour bar then ends in an arrow. ``ncols``
    defaults to 4-6 columns chosen to fill the rows.
    """
    panels = [(f"head {i}", m) for i, m in enumerate(_stack(maps))]
    return _grid(image, panels + list((extra or {}).items()), title, cmap, alpha, normalize, upsample, colorbar, ncols,
                 clip)


def layer_grid(
    image: Image.Image,
    maps: MapLike,
    layer_ids: list[int] | None = None,
    title: str = "",
    cmap: str = "inferno",
    alpha: float = 0.5,
    normalize: str = "per_map",
    extra: dict[str, MapLike] | None = None,
    upsample: str = "bilinear",
    colorbar: bool = False,
    ncols: int | None = None,
    clip: float | None = None,
) -> Figure:
    """The image, then one overlay per layer of ``maps`` (layers, H, W), then each ``extra`` map (H, W),
    e.g. ``{"rollout": ...}``.

    Labels use the model's 0-based layer index: "layer {layer_ids[k]}" for row k, or "layer k" when
    ``layer_ids`` is None (so a 12-layer model reads "layer 0" .. "layer 11"). Other arguments as in
    ``head_grid``.
    """
    stack = _stack(maps)
    ids = list(range(len(stack))) if layer_ids is None else [int(i) for i in layer_ids]
    if len(ids) != len(stack):
        raise ValueError(f"{len(ids)} layer_ids for {len(stack)} maps")
    panels = [(f"layer {i}", m) for i, m in zip(ids, stack, strict=True)]
    return _grid(image, panels + list((extra or {}).items()), title, cmap, alpha, normalize, upsample, colorbar, ncols,
                 clip)


def maps_figure(
    image: Image.Image,
    maps: dict[str, MapLike],
    title: str = "",
    cmap: str = "inferno",
    alpha: float = 0.5,
    normalize: str = "per_map",
    upsample: str = "bilinear",
    colorbar: bool = True,
    ncols: int | None = None,
    clip: float | None = None,
) -> Figure:
    """The image, then one overlay per named map (H, W) in one row (wrapped past 6 panels), e.g. the
    mean / max / min over layers and the rollout. With ``colorbar`` each overlay gets a bar showing
    the raw values its colours stand for.
    """
    if not maps:
        raise ValueError("maps_figure needs at least one map")
    return _grid(image, list(maps.items()), title, cmap, alpha, normalize, upsample, colorbar, ncols, clip)


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, e.g. .png), creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    return path


def _stack(maps: MapLike) -> np.ndarray:
    arr = as_numpy(maps)
    if arr.ndim != 3:
        raise ValueError(f"expected a stack of maps (N, H, W), got shape {tuple(arr.shape)}")
    return arr


def _columns(n: int) -> int:
    """All panels in one row up to MAX_AUTO_COLUMNS; beyond, 4-6 columns leaving the fewest empty cells."""
    if n <= MAX_AUTO_COLUMNS:
        return n
    return min(range(4, MAX_AUTO_COLUMNS + 1), key=lambda c: (math.ceil(n / c) * c - n, -c))


def _tick_label(value: float, span: float) -> str:
    """``value`` to 3 significant digits of the bar's ``span``, so a 1e-15 minimum on a 0..0.5 bar reads "0"."""
    if span > 0:
        value = round(value, max(0, 2 - math.floor(math.log10(span)))) + 0.0
    return f"{value:.3g}"


def _thumbnail(image: Image.Image) -> Image.Image:
    rgb = image.convert("RGB")
    scale = MAX_PANEL_PIXELS / max(rgb.size)
    if scale >= 1:
        return rgb
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    return rgb.resize(size, Image.Resampling.LANCZOS)


def _grid(
    image: Image.Image,
    panels: list[tuple[str, MapLike]],
    title: str,
    cmap: str,
    alpha: float,
    normalize: str,
    upsample: str,
    colorbar: bool,
    ncols: int | None,
    clip: float | None,
) -> Figure:
    """Lay out the image and one overlay per (label, map (H, W)) panel, row-major, each box shaped like the image."""
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"unknown normalize {normalize!r}; use one of {NORMALIZE_MODES}")
    heats = [as_numpy(m) for _, m in panels]
    if normalize == "shared":
        bounds = [value_range(np.concatenate([h.ravel() for h in heats]), clip=clip)] * len(heats)
    else:
        bounds = [value_range(h, clip=clip) for h in heats]
    view = _thumbnail(image)
    n = len(panels) + 1
    cols = min(ncols or _columns(n), n)
    rows = math.ceil(n / cols)
    panel_w = max(math.sqrt(PANEL_AREA_IN2 * view.width / view.height), MIN_PANEL_W_IN)
    panel_h = panel_w * view.height / view.width
    cbar_in = CBAR_GAP_IN + CBAR_H_IN + CBAR_TICKS_IN if colorbar else 0.0
    row_h = LABEL_IN + panel_h + cbar_in
    title_in = TITLE_IN if title else 0.0
    fig_w = 2 * MARGIN_IN + cols * panel_w + (cols - 1) * GAP_IN
    fig_h = 2 * MARGIN_IN + title_in + rows * row_h + (rows - 1) * GAP_IN
    fig = Figure(figsize=(fig_w, fig_h))
    FigureCanvasAgg(fig)

    def box(left_in: float, bottom_in: float, w_in: float, h_in: float) -> list[float]:
        return [left_in / fig_w, bottom_in / fig_h, w_in / fig_w, h_in / fig_h]

    cells = [("image", None, (0.0, 0.0))] + [(p[0], h, b) for p, h, b in zip(panels, heats, bounds, strict=True)]
    for k, (label, heat, (lo, hi)) in enumerate(cells):
        row, col = divmod(k, cols)
        left = MARGIN_IN + col * (panel_w + GAP_IN)
        bottom = fig_h - MARGIN_IN - title_in - row * (row_h + GAP_IN) - LABEL_IN - panel_h
        ax = fig.add_axes(box(left, bottom, panel_w, panel_h))
        ax.set_axis_off()
        ax.set_title(label, fontsize=9, pad=3)
        if heat is None:
            ax.imshow(np.asarray(view), aspect="auto")
            continue
        ax.imshow(np.asarray(overlay(view, heat, alpha, cmap, upsample, lo, hi)), aspect="auto")
        if colorbar:
            cax = fig.add_axes(box(left + 0.1 * panel_w, bottom - CBAR_GAP_IN - CBAR_H_IN, 0.8 * panel_w, CBAR_H_IN))
            bar = fig.colorbar(
                ScalarMappable(Normalize(lo, hi), matplotlib.colormaps[cmap]), cax=cax, orientation="horizontal",
                extend="max" if hi < heat.max() else "neither",  # an arrow: values above the bar saturate
            )
            bar.set_ticks([lo, hi], labels=[_tick_label(lo, hi - lo), _tick_label(hi, hi - lo)])
            bar.ax.tick_params(labelsize=7, length=2, pad=1)
    if title:
        fig.suptitle(title, y=1 - MARGIN_IN / fig_h, va="top", fontsize=11)
    return fig
