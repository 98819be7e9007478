"""vitprobe: see what Vision Transformers attend to, and measure it."""

from . import render
from .analysis.keypoints import find as find_keypoints
from .analysis.maps import aggregate_layers, fuse_heads
from .analysis.masks import mass_masks
from .analysis.thresholds import Threshold
from .analysis.upsample import upsample_map
from .api import cls_attention, query_attention, rollout
from .byo import from_attentions
from .capture import Capture, CaptureError
from .classmaps import ClassMaps, class_maps, classmap_figure
from .evaluate import LocalizeOptions
from .layout import TokenLayout
from .localize import localize
from .models import UnsupportedModelError, VitModel, families, load

__all__ = [
    "Capture",
    "CaptureError",
    "ClassMaps",
    "LocalizeOptions",
    "Threshold",
    "TokenLayout",
    "UnsupportedModelError",
    "VitModel",
    "aggregate_layers",
    "class_maps",
    "classmap_figure",
    "cls_attention",
    "families",
    "find_keypoints",
    "from_attentions",
    "fuse_heads",
    "load",
    "localize",
    "mass_masks",
    "query_attention",
    "render",
    "rollout",
    "upsample_map",
]
