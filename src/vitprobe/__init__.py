"""vitprobe: see what Vision Transformers attend to, and measure it."""

from . import render
from .analysis.distance import MeanDistance, mean_attention_distance
from .analysis.embeddings import patch_filters, position_similarity
from .analysis.entropy import RowEntropy, map_entropy, rows_entropy, spread_levels
from .analysis.keypoints import find as find_keypoints
from .analysis.maps import aggregate_layers, fuse_heads
from .analysis.masks import mass_masks
from .analysis.thresholds import Threshold
from .analysis.tokens import artifact_counts
from .analysis.upsample import upsample_map
from .byo import from_attentions
from .capture import AttentionBlock, Capture, CaptureError, RowReducer
from .evaluate import LocalizeOptions
from .io.images import ImageLoadError, load_image
from .io.samples import SAMPLE_NAMES, write_samples
from .layout import TokenLayout
from .localize import localize
from .methods import (
    Attribution,
    Method,
    MissingCapture,
    Needs,
    Param,
    Result,
    attribute,
    capture_for,
    check,
    get_method,
    method_names,
    methods,
    register_method,
)
from .models import UnsupportedModelError, VitModel, families, load
from .render.style import Style
from .runner import AnalyzeOptions, run_analysis

__all__ = [
    "SAMPLE_NAMES",
    "AnalyzeOptions",
    "AttentionBlock",
    "Attribution",
    "Capture",
    "CaptureError",
    "ImageLoadError",
    "LocalizeOptions",
    "MeanDistance",
    "Method",
    "MissingCapture",
    "Needs",
    "Param",
    "Result",
    "RowEntropy",
    "RowReducer",
    "Style",
    "Threshold",
    "TokenLayout",
    "UnsupportedModelError",
    "VitModel",
    "aggregate_layers",
    "artifact_counts",
    "attribute",
    "capture_for",
    "check",
    "families",
    "find_keypoints",
    "from_attentions",
    "fuse_heads",
    "get_method",
    "load",
    "load_image",
    "localize",
    "map_entropy",
    "mass_masks",
    "mean_attention_distance",
    "method_names",
    "methods",
    "patch_filters",
    "position_similarity",
    "register_method",
    "render",
    "rows_entropy",
    "run_analysis",
    "spread_levels",
    "upsample_map",
    "write_samples",
]
