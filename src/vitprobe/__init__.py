"""vitprobe: see what Vision Transformers attend to, and measure it."""

from . import render
from .analysis.maps import aggregate_layers, fuse_heads
from .analysis.upsample import upsample_map
from .api import cls_attention, query_attention, rollout
from .capture import Capture, CaptureError
from .layout import TokenLayout
from .models import UnsupportedModelError, VitModel, families, load

__all__ = [
    "Capture",
    "CaptureError",
    "TokenLayout",
    "UnsupportedModelError",
    "VitModel",
    "aggregate_layers",
    "cls_attention",
    "families",
    "fuse_heads",
    "load",
    "query_attention",
    "render",
    "rollout",
    "upsample_map",
]
