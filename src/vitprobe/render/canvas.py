"""The matplotlib Figure every renderer returns: object API on an Agg canvas (no pyplot state), and shown
by Jupyter by itself as a PNG (no ``%matplotlib inline`` or ``.show()`` needed)."""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

NOTEBOOK_DPI = 90


class NotebookFigure(Figure):
    """A ``matplotlib.figure.Figure`` with ``_repr_png_``, so a notebook cell that ends with one shows it."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=NOTEBOOK_DPI, bbox_inches="tight", pad_inches=0.05)
        return buffer.getvalue()


def new_figure(width_in: float, height_in: float, **kwargs) -> NotebookFigure:
    """A figure of ``width_in`` × ``height_in`` inches on its own Agg canvas."""
    fig = NotebookFigure(figsize=(width_in, height_in), **kwargs)
    FigureCanvasAgg(fig)
    return fig
