"""A frame strip: frames of a video with their maps drawn on, side by side in one row, each labelled."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from PIL import Image

from .canvas import new_figure

PANEL_H_IN = 1.9
LABEL_IN, TITLE_IN, GAP_IN = 0.22, 0.3, 0.06


def frame_strip(panels: Sequence[tuple[str, Image.Image]], title: str = "") -> Figure:
    """One row of ``panels`` ((label, picture) — frames already drawn on), every picture at its own aspect
    and one height, the label under each and ``title`` on top."""
    if not panels:
        raise ValueError("a frame strip needs at least one frame")
    widths = [PANEL_H_IN * p.width / p.height for _, p in panels]
    fig_w = sum(widths) + GAP_IN * (len(panels) + 1)
    fig_h = PANEL_H_IN + LABEL_IN + (TITLE_IN if title else 0) + GAP_IN
    fig = new_figure(fig_w, fig_h)
    left = GAP_IN
    for (label, picture), width in zip(panels, widths, strict=True):
        ax = fig.add_axes((left / fig_w, LABEL_IN / fig_h, width / fig_w, PANEL_H_IN / fig_h))
        ax.imshow(picture)
        ax.set_axis_off()
        fig.text((left + width / 2) / fig_w, LABEL_IN / 2 / fig_h, label, ha="center", va="center", fontsize=8)
        left += width + GAP_IN
    if title:
        fig.text(0.5, 1 - TITLE_IN / 2 / fig_h, title, ha="center", va="center", fontsize=9)
    return fig
