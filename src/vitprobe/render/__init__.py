"""Rendering: one ``Style`` for colormaps, overlays on the image, and figure grids (matplotlib object API,
never pyplot). Renderers draw what the methods and analyses computed; they never run a model."""

from .annotate import annotate
from .canvas import NotebookFigure
from .colormap import colorize, normalize
from .figures import attribution_figure, grid_figure, head_grid, layer_grid, maps_figure, save_figure
from .overlay import overlay, side_by_side
from .style import DEFAULT_CLIP, Style

__all__ = [
    "DEFAULT_CLIP",
    "NotebookFigure",
    "Style",
    "annotate",
    "attribution_figure",
    "colorize",
    "grid_figure",
    "head_grid",
    "layer_grid",
    "maps_figure",
    "normalize",
    "overlay",
    "save_figure",
    "side_by_side",
]
