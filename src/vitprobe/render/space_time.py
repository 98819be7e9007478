"""Plots of space-time attention statistics of video models (matplotlib object API on an Agg canvas).

- ``space_time_figure``: mean attention distance in pixels against mean attention distance in frames,
  one point per head, coloured by layer, the mean over heads of each layer joined in layer order;
- ``temporal_profile_figure``: per layer, the share of attention on the same, earlier and later tubelet
  steps (mean over heads), stacked.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .canvas import new_figure
from .colormap import MapLike, as_numpy

LAYER_CMAP = "viridis"
PROFILE_COLOURS = ("#4c72b0", "#dd8452", "#55a868")


def space_time_figure(space: MapLike, frames: MapLike, uniform_px: float | None = None,
                      uniform_frames: float | None = None, title: str = "Distance in space against distance in time"
                      ) -> Figure:
    """Dataset means (L, heads) of ``mean_attention_distance`` (pixels, y) and
    ``mean_attention_distance_frames`` (frames, x): a point per head coloured by layer, each layer's mean
    over heads joined in layer order; the values of uniform attention as dashed lines."""
    px, fr = as_numpy(space), as_numpy(frames)
    if px.shape != fr.shape or px.ndim != 2:
        raise ValueError(f"expected two (layers, heads) arrays, got {px.shape} and {fr.shape}")
    fig = new_figure(6.4, 4.2, layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps[LAYER_CMAP]
    n = px.shape[0]
    colours = [cmap(i / max(1, n - 1)) for i in range(n)]
    for layer in range(n):
        ax.scatter(fr[layer], px[layer], s=20, color=colours[layer], alpha=0.7, zorder=3)
    ax.plot(fr.mean(1), px.mean(1), color="black", lw=1, zorder=2, label="layer mean over heads")
    for layer in range(n):
        ax.scatter(fr[layer].mean(), px[layer].mean(), s=60, marker="D", color=colours[layer], edgecolor="black",
                   zorder=4, label=f"layer {layer}" if n <= 12 or layer in (0, n - 1) else None)
    if uniform_px is not None:
        ax.axhline(uniform_px, color="grey", ls="--", lw=1, label=f"uniform attention ({uniform_px:.0f} px)")
    if uniform_frames is not None:
        ax.axvline(uniform_frames, color="grey", ls=":", lw=1, label=f"uniform attention ({uniform_frames:.2f} frames)")
    ax.set_xlim(0, 1.08 * max(float(np.nanmax(fr)), uniform_frames or 0.0) or 1.0)
    ax.set_ylim(0, 1.08 * max(float(np.nanmax(px)), uniform_px or 0.0) or 1.0)
    ax.set_xlabel("mean attention distance in time (input frames)")
    ax.set_ylabel("mean attention distance in space (px)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def temporal_profile_figure(shares: MapLike, title: str = "Attention to the same, earlier and later steps"
                            ) -> Figure:
    """Shares (L, heads, 3) of ``temporal_same`` / ``earlier`` / ``later``: per layer the mean over heads,
    stacked (what is left up to 1 went to prefix tokens)."""
    values = as_numpy(shares)
    if values.ndim != 3 or values.shape[-1] != 3:
        raise ValueError(f"expected (layers, heads, 3), got {values.shape}")
    mean = values.mean(axis=1)
    fig = new_figure(6.4, 3.4, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(mean.shape[0])
    bottom = np.zeros(len(x))
    for i, (name, colour) in enumerate(zip(("same step", "earlier steps", "later steps"), PROFILE_COLOURS,
                                           strict=True)):
        ax.bar(x, mean[:, i], bottom=bottom, color=colour, label=name)
        bottom += mean[:, i]
    ax.set_xticks(x)
    ax.set_ylim(0, 1)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of attention (patch queries)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
