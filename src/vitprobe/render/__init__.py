"""Rendering: colormaps, overlays on the image, and figure grids (matplotlib object API, never pyplot)."""

from .colormap import colorize, normalize
from .figures import head_grid, layer_grid, maps_figure, save_figure
from .overlay import overlay, side_by_side

__all__ = ["colorize", "head_grid", "layer_grid", "maps_figure", "normalize", "overlay", "save_figure", "side_by_side"]
