"""vitprobe: see what Vision Transformers attend to, and measure it."""

from . import render
from .analysis.maps import aggregate_layers, fuse_heads
from .analysis.upsample import upsample_map
from .api import cls_attention, query_attention, rollout
from .byo import from_attentions
from .capture import Capture, CaptureError
from .classmaps import ClassMaps, class_maps, classmap_figure
from .layout import TokenLayout
from .models import UnsupportedModelError, VitModel, families, load

__all__ = [
    "Capture",
    "CaptureError",
    "ClassMaps",
    "TokenLayout",
    "UnsupportedModelError",
    "VitModel",
    "aggregate_layers",
    "class_maps",
    "classmap_figure",
    "cls_attention",
    "families",
    "from_attentions",
    "fuse_heads",
    "load",
    "query_attention",
    "render",
    "rollout",
    "upsample_map",
]
