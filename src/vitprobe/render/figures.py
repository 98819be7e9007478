"""Grids of overlays as matplotlib Figures: object API on an Agg canvas, no pyplot state, never shown.

Every panel keeps the image's aspect ratio: the figure is sized from the image and each axes box
is placed by hand, so nothing is stretched and little space is wasted. Heat maps are (H, W) on
the patch grid, height first, and are upsampled to the image by ``overlay``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from ..io.files import atomic_write
from .canvas import new_figure
from .colormap import MapLike, as_numpy, is_signed, signed_range, value_range
from .overlay import overlay
from .style import Style

if TYPE_CHECKING:
    from ..methods.base import Attribution

NORMALIZE_MODES = ("per_map", "shared")
PANEL_AREA_IN2 = 5.0  # area of one panel in square inches; its shape is the image's
MIN_PANEL_W_IN = 1.0  # keeps labels of very tall, narrow images from overlapping
MAX_PANEL_PIXELS = 800  # longer side of the image drawn in a panel (a panel is ~2.2 in, ~250 px at 110 dpi)
MAX_AUTO_COLUMNS = 6
LABEL_IN, GAP_IN, MARGIN_IN, TITLE_IN = 0.24, 0.08, 0.04, 0.28
CBAR_GAP_IN, CBAR_H_IN, CBAR_TICKS_IN = 0.06, 0.09, 0.2
NOTE_IN = 0.2
MARK_COLOUR = "#00c8ff"


def head_grid(
    image: Image.Image,
    maps: MapLike,
    title: str = "",
    style: Style = Style(),
    normalize: str = "per_map",
    extra: dict[str, MapLike] | None = None,
    ncols: int | None = None,
) -> Figure:
    """The image, one overlay per head of ``maps`` (heads, H, W) labelled "head 0", "head 1", ...,
    then each ``extra`` map (H, W) under its name, e.g. ``{"mean": ..., "max": ..., "min": ...}``.

    ``normalize``: "per_map" scales each panel to its own min..max; "shared" uses one scale for all
    panels so they can be compared (the figure says which). ``style.clip`` sets the top of each scale
    below the max so a few extreme patches saturate; a colour bar then ends in an arrow. ``ncols``
    defaults to 4-6 columns chosen to fill the rows.
    """
    panels = [(f"head {i}", m) for i, m in enumerate(_stack(maps))]
    return grid_figure(image, panels + list((extra or {}).items()), title, style, normalize, ncols)


def layer_grid(
    image: Image.Image,
    maps: MapLike,
    layer_ids: list[int] | None = None,
    title: str = "",
    style: Style = Style(),
    normalize: str = "per_map",
    extra: dict[str, MapLike] | None = None,
    ncols: int | None = None,
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
    return grid_figure(image, panels + list((extra or {}).items()), title, style, normalize, ncols)


def maps_figure(
    image: Image.Image,
    maps: dict[str, MapLike],
    title: str = "",
    style: Style = Style(),
    normalize: str = "per_map",
    ncols: int | None = None,
) -> Figure:
    """The image, then one overlay per named map (H, W) in one row (wrapped past 6 panels), e.g. the
    mean / max / min over layers and the rollout."""
    if not maps:
        raise ValueError("maps_figure needs at least one map")
    return grid_figure(image, list(maps.items()), title, style, normalize, ncols)


def attribution_figure(
    result: Attribution, image: int = 0, style: Style = Style(), top_k: int = 5, normalize: str = "per_map",
    title: str | None = None,
) -> Figure:
    """One image of an ``Attribution``: the part of the photo the model saw, then every panel of the
    method (its heads, layers, or the map alone), titled with what the maps are. A model with a
    classification head gets its ``top_k`` predictions beside the maps, the explained class (gradient
    methods) in colour. The attribution's ``marks`` (e.g. the query patch) are crosses on every panel."""
    view = result.images[image]
    h, w = result.layout.grid_hw
    marks = [((col + 0.5) * view.width / w, (row + 0.5) * view.height / h)
             for row, col in (result.marks[image] if result.marks else [])]
    panels = [(label, m[image]) for label, m in result.panels]
    predictions = None
    if result.logits is not None and top_k > 0:
        rows = result.top(image, top_k)
        target = result.targets[image] if result.targets is not None else None
        if target is not None and target not in [i for i, _, _ in rows]:
            probs = result.logits[image].float().softmax(-1)
            rows.append((target, result.labels.get(target, f"class {target}"), float(probs[target])))
        predictions = (rows, target)
    heading = result.title if title is None else title
    if result.targets is not None:
        target = result.targets[image]
        heading += f" of {short_label(result.labels.get(target, f'class {target}'))} ({target})"
    return grid_figure(view, panels, heading, style, normalize, predictions=predictions, marks=marks)


def short_label(label: str, width: int = 24) -> str:
    """First synonym of a class label, cut to ``width`` characters."""
    first = label.split(",")[0].strip()
    return first if len(first) <= width else first[: width - 1] + "…"


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, e.g. .png) whole or not at all, creating parent
    folders; a full disk raises ``DiskFull`` naming the file. Returns the path."""
    path = Path(path)
    return atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=dpi,
                                                    bbox_inches="tight", pad_inches=0.05), "a figure")


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


def grid_figure(
    image: Image.Image,
    panels: list[tuple[str, MapLike]],
    title: str = "",
    style: Style = Style(),
    normalize: str = "per_map",
    ncols: int | None = None,
    predictions: tuple[list[tuple[int, str, float]], int | None] | None = None,
    marks: Sequence[tuple[float, float]] = (),
) -> Figure:
    """The image and one overlay per (label, map (H, W)) panel, row-major, each box shaped like the image.

    A panel given as a picture (h, w, 3) in [0, 1] (e.g. a mosaic of filters) is drawn as it is. With
    ``style.colorbar`` each overlay gets a bar of the raw values its colours stand for, and a line
    under the title says whether the panels share one scale. ``predictions`` (rows of
    (index, label, probability), the class to colour) adds a cell of horizontal bars. ``marks`` are
    (x, y) pixel positions of ``image`` drawn as crosses on every panel.
    """
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"unknown normalize {normalize!r}; use one of {NORMALIZE_MODES}")
    heats = [as_numpy(m) for _, m in panels]
    maps = [h for h in heats if h.ndim == 2]  # (h, w, 3) panels are pictures, drawn as they are
    signed = [h.ndim == 2 and is_signed(h) for h in heats]
    everything = np.concatenate([h.ravel() for h in maps]) if maps else np.zeros(1)
    shared = signed_range(everything, style.clip) if any(signed) else value_range(everything, clip=style.clip)
    bounds = [shared if normalize == "shared" else signed_range(h, style.clip) if sign else
              value_range(h, clip=style.clip) for h, sign in zip(heats, signed, strict=True)]
    view = _thumbnail(image)
    shrink = view.width / image.width
    n = len(panels) + 1 + (predictions is not None)
    cols = min(ncols or _columns(n), n)
    rows = math.ceil(n / cols)
    panel_w = max(math.sqrt(PANEL_AREA_IN2 * view.width / view.height), MIN_PANEL_W_IN)
    panel_h = panel_w * view.height / view.width
    cbar_in = CBAR_GAP_IN + CBAR_H_IN + CBAR_TICKS_IN if style.colorbar else 0.0
    row_h = LABEL_IN + panel_h + cbar_in
    note = ""
    if style.colorbar and len(panels) > 1:
        note = "one colour scale for all panels" if normalize == "shared" else "each panel on its own colour scale"
        top = "max" if style.clip >= 100 else f"{style.clip:g}th percentile"
        note += f" (min to {top}" + (f"; maps of both signs ±{top} of |value|, centred at 0)" if any(signed) else ")")
    title_in = (TITLE_IN if title else 0.0) + (NOTE_IN if note else 0.0)
    fig_w = 2 * MARGIN_IN + cols * panel_w + (cols - 1) * GAP_IN
    fig_h = 2 * MARGIN_IN + title_in + rows * row_h + (rows - 1) * GAP_IN
    fig = new_figure(fig_w, fig_h)

    def box(left_in: float, bottom_in: float, w_in: float, h_in: float) -> list[float]:
        return [left_in / fig_w, bottom_in / fig_h, w_in / fig_w, h_in / fig_h]

    centred = any(signed) if normalize == "shared" else None
    cells = [("image", None, (0.0, 0.0), False)] + [
        (p[0], h, b, sign if centred is None else centred)
        for p, h, b, sign in zip(panels, heats, bounds, signed, strict=True)]
    if predictions is not None:
        cells.append((None, None, (0.0, 0.0), False))  # the predictions cell
    for k, (label, heat, (lo, hi), diverging) in enumerate(cells):
        row, col = divmod(k, cols)
        left = MARGIN_IN + col * (panel_w + GAP_IN)
        bottom = fig_h - MARGIN_IN - title_in - row * (row_h + GAP_IN) - LABEL_IN - panel_h
        ax = fig.add_axes(box(left, bottom, panel_w, panel_h))
        if label is None:
            _draw_predictions(ax, *predictions)
            continue
        ax.set_axis_off()
        ax.set_title(label, fontsize=9, pad=3)
        if heat is not None and heat.ndim == 3:
            ax.imshow(np.clip(heat, 0.0, 1.0), interpolation="nearest")
            continue
        drawn = replace(style, cmap=style.signed_cmap) if diverging else style
        ax.imshow(np.asarray(view if heat is None else overlay(view, heat, drawn, lo, hi)), aspect="auto")
        for x, y in marks:
            ax.plot([x * shrink - 0.5], [y * shrink - 0.5], marker="+", markersize=9, markeredgewidth=1.8,
                    color=MARK_COLOUR)
        if heat is not None and style.colorbar:
            cax = fig.add_axes(box(left + 0.1 * panel_w, bottom - CBAR_GAP_IN - CBAR_H_IN, 0.8 * panel_w, CBAR_H_IN))
            beyond = (heat.min() < lo, heat.max() > hi)  # arrows: values past the bar saturate
            bar = fig.colorbar(
                ScalarMappable(Normalize(lo, hi), matplotlib.colormaps[drawn.cmap]), cax=cax,
                orientation="horizontal",
                extend={(True, True): "both", (True, False): "min", (False, True): "max"}.get(beyond, "neither"),
            )
            bar.set_ticks([lo, hi], labels=[_tick_label(lo, hi - lo), _tick_label(hi, hi - lo)])
            bar.ax.tick_params(labelsize=7, length=2, pad=1)
    if title:
        fig.suptitle(title, y=1 - MARGIN_IN / fig_h, va="top", fontsize=11)
    if note:
        fig.text(0.5, 1 - (MARGIN_IN + (TITLE_IN if title else 0.0)) / fig_h, note, ha="center", va="top",
                 fontsize=8, color="0.35")
    return fig


def _draw_predictions(ax, rows: list[tuple[int, str, float]], target: int | None) -> None:
    """Horizontal bars of the top predictions, each labelled above its bar; ``target`` in colour."""
    top = max((p for _, _, p in rows), default=1.0) or 1.0
    n = len(rows)
    for k, (index, label, p) in enumerate(rows):
        y = n - 1 - k
        ax.barh(y, p / top, height=0.45, color="tab:orange" if index == target else "tab:gray")
        ax.text(0.0, y + 0.3, f"{short_label(label)} ({index})  {p:.3f}", fontsize=7, va="bottom")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(-0.5, n)
    ax.set_axis_off()
    ax.set_title("top predictions", fontsize=9, pad=3)
