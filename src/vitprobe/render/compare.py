"""Figures and the HTML page of a model comparison (``vitprobe compare``); draws what ``Comparison`` holds.

- ``distance_comparison``: mean attention distance against normalised depth, both conventions, every run
  in one figure: one small point per head (the ViT paper's fig. 7 right), the head mean as a line, each
  run's uniform-attention reference dotted in its colour;
- ``entropy_comparison``: CLS-row and all-row entropy (head mean, heads as points), CLS-map and
  rollout-map entropy, against normalised depth;
- ``levels_comparison``: the common images per spread level, run beside run;
- ``write_page``: ``compare.html`` with those figures in ``compare_files/`` and the tables.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ..io.files import atomic_write_text
from .canvas import new_figure
from .figures import save_figure

if TYPE_CHECKING:
    from ..comparison import Comparison

FILES = "compare_files"
RUN_CMAP = "tab10"
DISTANCES = (("mean_attention_distance", "prefix mass counts as distance 0 (ViT paper)"),
             ("mean_attention_distance_renormalized", "rows renormalised over the patches"))


def _colour(i: int):
    palette = matplotlib.colormaps[RUN_CMAP].colors
    return palette[i % len(palette)]


def _label(run) -> str:
    return run.name if run.name == run.model or run.model in run.name else f"{run.name} ({run.model})"


def distance_comparison(comparison: Comparison) -> Figure:
    """Both distance conventions side by side; x = (layer + 1) / L, y = pixels of each run's model input."""
    fig = new_figure(11.5, 4.0, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    top = 0.0
    for ax, (metric, words) in zip(axes, DISTANCES, strict=True):
        for i, run in enumerate(comparison.runs):
            values = comparison.curves[run.name].get(metric)
            if values is None:
                continue
            colour = _colour(i)
            depth = run.depth + (i - (len(comparison.runs) - 1) / 2) * 0.008  # runs' points side by side
            heads = np.repeat(depth[:, None], values.shape[1], axis=1)
            ax.scatter(heads.ravel(), values.ravel(), s=12, color=colour, alpha=0.45, linewidths=0, zorder=3)
            ax.plot(depth, np.nanmean(values, axis=1), color=colour, lw=1.8, marker="o", ms=3.5, zorder=4,
                    label=f"{_label(run)}: head mean")
            uniform = run.aggregates.get("distance_uniform_px")
            if uniform is not None:
                ax.axhline(uniform, color=colour, ls=":", lw=1.1, label=f"{run.name}: uniform ({uniform:.0f} px)")
                top = max(top, uniform)
            top = max(top, float(np.nanmax(values)))
        ax.set_title(words, fontsize=10)
        ax.set_xlabel("normalised depth (layer + 1) / L")
        ax.set_xlim(0, 1.04)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean attention distance (px); points: heads")
    axes[0].set_ylim(0, 1.08 * top if top > 0 else 1)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Mean attention distance per layer (means over the common images)", fontsize=11)
    return fig


def entropy_comparison(comparison: Comparison, limits: bool = True) -> Figure:
    """Four panels against normalised depth: CLS-row and all-row entropy (head mean line, heads as
    points), CLS-map and rollout-map entropy (one line per run); dotted: each run's log T or log N."""
    panels = (("entropy_cls", "CLS row over all tokens", "row"), ("entropy_rows", "all query rows (mean)", "row"),
              ("entropy_cls_map", "head-mean CLS map over the patches", "map"),
              ("entropy_rollout_map", "rollout map through the layer", "map"))
    fig = new_figure(15.5, 3.8, layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, (metric, title, kind) in zip(axes, panels, strict=True):
        for i, run in enumerate(comparison.runs):
            values, colour = comparison.curves[run.name].get(metric), _colour(i)
            if values is None:
                continue
            if values.ndim == 2:
                heads = np.repeat(run.depth[:, None], values.shape[1], axis=1)
                ax.scatter(heads.ravel(), values.ravel(), s=10, color=colour, alpha=0.4, linewidths=0, zorder=3)
                line = np.nanmean(values, axis=1)
            else:
                line = values
            ax.plot(run.depth, line, color=colour, lw=1.8, marker="o", ms=3, zorder=4, label=_label(run))
            top = (run.aggregates.get("entropy_max_nats") or {}).get(kind)
            if limits and top is not None:
                ax.axhline(top, color=colour, ls=":", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("normalised depth")
        ax.set_xlim(0, 1.04)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("entropy (nats); dotted: uniform")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Attention entropy per layer (means over the common images)", fontsize=11)
    return fig


def levels_comparison(comparison: Comparison) -> Figure:
    """Common images per spread level (1: most focused CLS map ... 4: most spread), one bar per run."""
    fig = new_figure(6.4, 3.4, layout="constrained")
    ax = fig.add_subplot()
    runs = [r for r in comparison.runs if comparison.levels[r.name][1] is not None]
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        levels = comparison.levels[run.name][1]
        counts = [sum(1 for v in levels if v == k) for k in (1, 2, 3, 4)]
        ax.bar(np.arange(1, 5) + (i - (len(runs) - 1) / 2) * width, counts, width * 0.95,
               color=_colour(comparison.runs.index(run)), label=_label(run))
    ax.set_xticks([1, 2, 3, 4], ["1 focused", "2", "3", "4 spread"])
    ax.set_xlabel("spread level (quartiles of each run's own CLS-map entropy)")
    ax.set_ylabel("common images")
    ax.grid(alpha=0.3, axis="y")
    if runs:
        ax.legend(fontsize=7)
    return fig


def write_page(out: Path, comparison: Comparison) -> Path:
    """``out/compare.html`` and its figures in ``out/compare_files/``; returns the page's path."""
    from ..io.store import require

    jinja2 = require("jinja2")
    files = out / FILES
    files.mkdir(parents=True, exist_ok=True)
    figures = {}
    for name, draw in (("distance", distance_comparison), ("entropy", entropy_comparison),
                       ("levels", levels_comparison)):
        save_figure(draw(comparison), files / f"{name}.png", dpi=100)
        figures[name] = f"{FILES}/{name}.png"
    maps = []
    for (a, b, method), values in comparison.maps.items():
        v = np.asarray(values, dtype=float)
        maps.append({"a": a, "b": b, "method": method, "images": int(np.isfinite(v).sum()),
                     "mean": float(np.nanmean(v)) if np.isfinite(v).any() else None,
                     "min": float(np.nanmin(v)) if np.isfinite(v).any() else None,
                     "max": float(np.nanmax(v)) if np.isfinite(v).any() else None})
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    env.filters["num"] = lambda v, fmt="{:.3g}": "–" if v is None or (isinstance(v, float) and math.isnan(v)) \
        else fmt.format(v)
    html = env.get_template("compare.html.j2").render(
        title=f"vitprobe comparison — {', '.join(r.name for r in comparison.runs)}",
        matched=comparison.matched, runs=comparison.run_rows(), layers=comparison.layer_rows(),
        levels=comparison.level_rows(), agreement=[{"a": a, "b": b, "same": s, "rho": r}
                                                   for (a, b), (s, r) in comparison.level_agreement.items()],
        maps=maps, maps_note=comparison.maps_note, figures=figures)
    path = out / "compare.html"
    atomic_write_text(path, html, "the comparison page")
    return path
