"""Plots of dataset statistics and embeddings (matplotlib object API on an Agg canvas, no pyplot).

- ``distance_scatter``: mean attention distance, x = layer, y = pixels, one point per head (seed 003);
- ``entropy_plot``: entropy per layer, one point per head, and the mean over heads;
- ``tile_grid`` + ``filters_figure``: images (n, h, w, 3) tiled into one mosaic (patch filters);
- ``position_grid_figure``: for each position a map (H, W) of its similarity to all others, laid
  out on the grid (the ViT paper's fig. 7); ``similarity_matrix_figure``: the same as one matrix;
- ``artifact_figure``: outlier-token share and norm ratio per layer;
- ``faithfulness_figure``: deletion and insertion curves and the randomisation check per method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from scipy.integrate import trapezoid

from .canvas import new_figure
from .colormap import MapLike, as_numpy

HEAD_CMAP = "tab10"


def _figure(w_in: float, h_in: float) -> Figure:
    return new_figure(w_in, h_in, layout="constrained")


def distance_scatter(
    mean: MapLike,
    layer_ids: Sequence[int],
    title: str = "Mean attention distance",
    uniform: float | None = None,
    ylabel: str = "mean attention distance (px)",
) -> Figure:
    """Dataset mean distance (L, heads): one point per head at x = layer (seed 003's figure), the
    mean over heads as a line, and the value of ``uniform`` attention as a dashed line."""
    values = as_numpy(mean)
    if values.ndim != 2 or values.shape[0] != len(layer_ids):
        raise ValueError(f"expected (layers, heads) for {len(layer_ids)} layers, got {values.shape}")
    fig = _figure(6.4, 3.8)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps[HEAD_CMAP]
    x = np.asarray(layer_ids)
    for h in range(values.shape[1]):
        ax.scatter(x, values[:, h], s=22, color=cmap(h % cmap.N), label=f"head {h}", zorder=3)
    ax.plot(x, values.mean(axis=1), color="black", lw=1.2, label="mean over heads", zorder=2)
    top = float(np.nanmax(values))
    if uniform is not None:
        ax.axhline(uniform, color="grey", ls="--", lw=1, label=f"uniform attention ({uniform:.0f} px)")
        top = max(top, uniform)
    ax.set_ylim(0, 1.08 * top)
    ax.set_xticks(x)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def entropy_plot(
    per_head: dict[str, MapLike],
    layer_ids: Sequence[int],
    per_layer: dict[str, MapLike] | None = None,
    limits: dict[str, float] | None = None,
    title: str = "Attention entropy per layer",
) -> Figure:
    """One panel per entry of ``per_head`` (L, heads): points per head and the mean over heads; each
    ``per_layer`` curve (L,) is drawn in every panel; ``limits`` draws named horizontal lines (e.g. log T)."""
    fig = _figure(3.9 * len(per_head) + 1.4, 3.6)
    axes = fig.subplots(1, len(per_head), squeeze=False)[0]
    cmap = matplotlib.colormaps[HEAD_CMAP]
    x = np.asarray(layer_ids)
    for ax, (name, values) in zip(axes, per_head.items(), strict=True):
        v = as_numpy(values)
        for h in range(v.shape[1]):
            ax.scatter(x, v[:, h], s=14, color=cmap(h % cmap.N), label=f"head {h}", zorder=3)
        ax.plot(x, v.mean(axis=1), color="black", lw=1.2, label="mean over heads")
        for curve, y in (per_layer or {}).items():
            ax.plot(x, as_numpy(y), lw=1.5, ls="-.", label=curve)
        for label, y in (limits or {}).items():
            ax.axhline(y, color="grey", ls="--", lw=1, label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xticks(x)
        ax.set_xlabel("layer")
        ax.set_ylabel("entropy (nats)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title)
    return fig


def tile_grid(tiles: MapLike, ncols: int, gap: int = 1, background: float = 1.0) -> np.ndarray:
    """Tile (n, h, w) or (n, h, w, 3) arrays row-major into one array with ``gap`` pixels between."""
    arr = as_numpy(tiles)
    n, h, w = arr.shape[:3]
    rows = math.ceil(n / ncols)
    shape = (rows * h + (rows - 1) * gap, ncols * w + (ncols - 1) * gap, *arr.shape[3:])
    canvas = np.full(shape, background, dtype=np.float64)
    for i in range(n):
        r, c = divmod(i, ncols)
        canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = arr[i]
    return canvas


def filters_figure(filters: MapLike, title: str, ncols: int = 16, subtitle: str = "") -> Figure:
    """RGB filters (n, P, P, 3) in [0, 1], each drawn as a small image in a grid of ``ncols`` columns."""
    arr = as_numpy(filters)
    ncols = min(ncols, arr.shape[0])
    mosaic = tile_grid(arr, ncols, gap=max(1, arr.shape[1] // 7))
    aspect = mosaic.shape[0] / mosaic.shape[1]
    fig = _figure(7.5, 7.5 * aspect + 0.5)
    ax = fig.add_subplot()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    return fig


def position_grid_figure(
    sim: MapLike, title: str = "Position-embedding similarity", max_cells: int = 12, cmap: str = "viridis"
) -> Figure:
    """Similarity (H, W, H, W): cell (r, c) of the grid shows the map (H, W) sim[r, c]; at most
    ``max_cells`` cells per side (positions subsampled evenly). One colour scale, min..max of all maps."""
    s = as_numpy(sim)
    h, w = s.shape[:2]
    rows = np.unique(np.linspace(0, h - 1, min(h, max_cells)).round().astype(int))
    cols = np.unique(np.linspace(0, w - 1, min(w, max_cells)).round().astype(int))
    maps = np.stack([s[r, c] for r in rows for c in cols])
    lo, hi = float(s.min()), float(s.max())
    colours = matplotlib.colormaps[cmap]((maps - lo) / (hi - lo))[..., :3]
    mosaic = tile_grid(colours, len(cols), gap=max(1, h // 6))
    fig = _figure(7.5, 7.5 * mosaic.shape[0] / mosaic.shape[1] + 0.4)
    ax = fig.add_subplot()
    image = ax.imshow(mosaic, interpolation="nearest")
    image.set_cmap(cmap)
    image.set_clim(lo, hi)
    ax.set_xticks([(w + max(1, h // 6)) * i + w / 2 for i in range(len(cols))], [str(c) for c in cols], fontsize=7)
    ax.set_yticks([(h + max(1, h // 6)) * i + h / 2 for i in range(len(rows))], [str(r) for r in rows], fontsize=7)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.6, label="similarity")
    return fig


def similarity_matrix_figure(matrix: MapLike, title: str = "Position-embedding similarity matrix",
                             cmap: str = "inferno") -> Figure:
    """One (N, N) similarity matrix, patches in row-major grid order on both axes (seed 003's view)."""
    m = as_numpy(matrix)
    fig = _figure(5.2, 4.6)
    ax = fig.add_subplot()
    image = ax.imshow(m, cmap=cmap, interpolation="nearest")
    ax.set_xlabel("position (row-major)")
    ax.set_ylabel("position (row-major)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def artifact_figure(
    layer_ids: Sequence[int],
    shares: dict[str, MapLike],
    ratio: MapLike,
    threshold: float,
    title: str = "Artifact tokens (high-norm patch tokens) per layer",
) -> Figure:
    """Left: each share (L,) in percent; right: mean largest/median patch-token norm (L,) with the
    outlier threshold."""
    fig = _figure(9.0, 3.6)
    left, right = fig.subplots(1, 2)
    x = np.asarray(layer_ids)
    for name, values in shares.items():
        left.plot(x, 100 * np.nan_to_num(as_numpy(values)), marker="o", ms=4, label=name)
    left.set_ylabel("%")
    left.set_xlabel("layer")
    left.set_xticks(x)
    left.set_ylim(bottom=0)
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    right.plot(x, as_numpy(ratio), marker="o", ms=4, color="tab:purple", label="largest / median norm (mean)")
    right.axhline(threshold, color="grey", ls="--", lw=1, label=f"outlier threshold ({threshold:g}×)")
    right.set_xlabel("layer")
    right.set_xticks(x)
    right.set_ylim(bottom=0)
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def faithfulness_figure(
    fractions: np.ndarray,
    deletion: dict[str, np.ndarray],
    insertion: dict[str, np.ndarray],
    rho: dict[str, np.ndarray],
    score: str,
    title: str = "Faithfulness",
) -> Figure:
    """Mean deletion and insertion curves (K + 1,) per method over the fraction of patches, and the mean
    Spearman ρ (S,) per cascade step of the randomisation check (a third panel when there are steps).
    Names starting with ``baseline`` are drawn dashed in grey tones."""
    panels = 3 if any(len(v) for v in rho.values()) else 2
    fig = _figure(4.2 * panels, 3.8)
    axes = fig.subplots(1, panels)
    palette = matplotlib.colormaps["tab10"].colors
    methods = [name for name in deletion if not name.startswith("baseline")]
    style = {name: {"color": palette[i % len(palette)], "ls": ("-", "-.", ":")[i // len(palette) % 3]}
             for i, name in enumerate(methods)}  # past ten methods the colours come back with another line style
    greys = iter(("0.35", "0.6", "0.8"))
    style.update({name: {"color": next(greys), "ls": "--"} for name in deletion if name.startswith("baseline")})
    for ax, curves, name, better in ((axes[0], deletion, "deletion", "lower AUC is better"),
                                     (axes[1], insertion, "insertion", "higher AUC is better")):
        for method, values in curves.items():
            auc = float(trapezoid(values, fractions))
            ax.plot(fractions, values, lw=1.4, label=f"{method} ({auc:.3f})", **style[method])
        ax.set_xlabel("fraction of patches " + ("removed" if name == "deletion" else "revealed"))
        ax.set_ylabel(score)
        ax.set_title(f"{name} ({better})", fontsize=10)
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if panels == 3:
        ax = axes[2]
        for method, values in rho.items():
            steps = np.arange(1, len(values) + 1)
            ax.plot(steps, values, marker="o", ms=3, lw=1.2, label=method, **style[method])
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("blocks re-initialised from the top")
        ax.set_ylabel("Spearman ρ with the original map")
        ax.set_title("model randomisation (lower: the map depends on the weights)", fontsize=10)
        ax.set_ylim(-1.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig
