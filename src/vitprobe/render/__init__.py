"""Rendering: one ``Style`` for colormaps, overlays on the image, and figure grids (matplotlib object API,
never pyplot). Renderers draw what the methods and analyses computed; they never run a model.

Names are imported on first use, so ``from vitprobe.render.style import DEFAULT_CLIP`` stays light."""

from importlib import import_module
from typing import Any

_LAZY = {
    "annotate": ".annotate",
    "attribution_figure": ".figures",
    "colorize": ".colormap",
    "DEFAULT_CLIP": ".style",
    "grid_figure": ".figures",
    "head_grid": ".figures",
    "layer_grid": ".figures",
    "maps_figure": ".figures",
    "NotebookFigure": ".canvas",
    "normalize": ".colormap",
    "overlay": ".overlay",
    "save_figure": ".figures",
    "side_by_side": ".overlay",
    "Style": ".style",
}
"""Public name -> the module of this package that defines it."""


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'vitprobe.render' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = sorted(_LAZY)
