"""vitprobe: see what Vision Transformers attend to, and measure it."""

from . import render
from .analysis.distance import mean_attention_distance
from .analysis.embeddings import patch_filters, position_similarity
from .analysis.entropy import map_entropy, rows_entropy, spread_levels
from .analysis.keypoints import find as find_keypoints
from .analysis.maps import aggregate_layers, fuse_heads
from .analysis.masks import mass_masks
from .analysis.thresholds import Threshold
from .analysis.tokens import artifact_counts
from .analysis.upsample import upsample_map
from .api import cls_attention, query_attention, rollout
from .byo import from_attentions
from .capture import Capture, CaptureError
from .classmaps import ClassMaps, class_maps, classmap_figure
from .evaluate import LocalizeOptions
from .layout import TokenLayout
from .localize import localize
from .models import UnsupportedModelError, VitModel, families, load
from .runner import AnalyzeOptions, run_analysis

__all__ = [
    "AnalyzeOptions",
    "Capture",
    "CaptureError",
    "ClassMaps",
    "LocalizeOptions",
    "Threshold",
    "TokenLayout",
    "UnsupportedModelError",
    "VitModel",
    "aggregate_layers",
    "artifact_counts",
    "class_maps",
    "classmap_figure",
    "cls_attention",
    "families",
    "find_keypoints",
    "from_attentions",
    "fuse_heads",
    "load",
    "localize",
    "map_entropy",
    "mass_masks",
    "mean_attention_distance",
    "patch_filters",
    "position_similarity",
    "query_attention",
    "render",
    "rollout",
    "rows_entropy",
    "run_analysis",
    "spread_levels",
    "upsample_map",
]
