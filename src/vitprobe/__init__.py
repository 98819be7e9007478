"""vitprobe: see what Vision Transformers attend to, and measure it.

The methods registry (``attribute``, ``methods``, ``register_method``, ...) is imported at once; every
other name is imported on first use, so ``vitprobe --help`` and ``import vitprobe`` stay fast and
load torch only when something needs it.
"""

from importlib import import_module
from typing import Any

from ._version import __version__
from .methods import (
    Attribution,
    Method,
    MissingCapture,
    MissingExtra,
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

_LAZY: dict[str, tuple[str, str | None]] = {
    "aggregate_layers": (".analysis.maps", "aggregate_layers"),
    "AnalyzeOptions": (".runner", "AnalyzeOptions"),
    "artifact_counts": (".analysis.tokens", "artifact_counts"),
    "AttentionBlock": (".kernels.base", "AttentionBlock"),
    "Capture": (".capture", "Capture"),
    "CaptureError": (".capture", "CaptureError"),
    "cls_entropy": (".analysis.entropy", "cls_entropy"),
    "compare": (".comparison", "compare"),
    "Comparison": (".comparison", "Comparison"),
    "families": (".models", "families"),
    "find_keypoints": (".analysis.keypoints", "find"),
    "from_attentions": (".byo", "from_attentions"),
    "fuse_heads": (".analysis.maps", "fuse_heads"),
    "ImageLoadError": (".io.images", "ImageLoadError"),
    "load": (".models", "load"),
    "load_image": (".io.images", "load_image"),
    "localize": (".localization", "localize"),
    "LocalizeOptions": (".evaluate", "LocalizeOptions"),
    "map_entropy": (".analysis.entropy", "map_entropy"),
    "mass_masks": (".analysis.masks", "mass_masks"),
    "mean_attention_distance": (".analysis.distance", "mean_attention_distance"),
    "MeanDistance": (".analysis.distance", "MeanDistance"),
    "patch_filters": (".analysis.embeddings", "patch_filters"),
    "position_similarity": (".analysis.embeddings", "position_similarity"),
    "render": (".render", None),
    "RowEntropy": (".analysis.entropy", "RowEntropy"),
    "LayerRequest": (".kernels.base", "LayerRequest"),
    "LayerResult": (".kernels.base", "LayerResult"),
    "RowReducer": (".kernels.base", "RowReducer"),
    "RowStatReducer": (".kernels.base", "RowStatReducer"),
    "rows_entropy": (".analysis.entropy", "rows_entropy"),
    "run_analysis": (".runner", "run_analysis"),
    "SAMPLE_NAMES": (".io.samples", "SAMPLE_NAMES"),
    "spread_levels": (".analysis.entropy", "spread_levels"),
    "Style": (".render.style", "Style"),
    "Threshold": (".analysis.thresholds", "Threshold"),
    "TokenLayout": (".layout", "TokenLayout"),
    "UnsupportedModelError": (".models", "UnsupportedModelError"),
    "uniform_distance": (".analysis.distance", "uniform_distance"),
    "upsample_map": (".analysis.upsample", "upsample_map"),
    "VitModel": (".models", "VitModel"),
    "write_samples": (".io.samples", "write_samples"),
}
"""Public name -> (module, attribute in it; None: the module itself)."""


REMOVED: dict[str, str] = {
    "rollout": 'vp.attribute(model, images, method="rollout", discard_ratio=...)',
    "cls_attention": 'vp.attribute(model, images, method="cls", layer=...) (per head: .detail["heads"]); '
                     'every layer: method="layers", .detail["layers_heads"] (B, L, heads, H, W)',
    "query_attention": 'vp.attribute(model, images, method="query", patch=(row, col), layer=...)',
    "class_maps": 'vp.attribute(model, images, method="chefer", target=...) (or method="gradrollout")',
    "ClassMaps": 'the Attribution that vp.attribute(model, images, method="chefer", target=...) returns',
    "classmap_figure": 'vp.render.attribution_figure(vp.attribute(model, images, method="chefer", target=...))',
}
"""Names an earlier vitprobe exported -> what replaces them (the one verb ``vp.attribute``)."""


class RemovedName(AttributeError):
    """A name an earlier vitprobe had; the message (one line) names its replacement."""


def __getattr__(name: str) -> Any:
    if name in REMOVED:
        raise RemovedName(f"vp.{name} was removed: use {REMOVED[name]}")
    if name not in _LAZY:
        raise AttributeError(f"module 'vitprobe' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = import_module(module, __name__)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "__version__",
    "aggregate_layers",
    "AnalyzeOptions",
    "artifact_counts",
    "AttentionBlock",
    "attribute",
    "Attribution",
    "Capture",
    "capture_for",
    "CaptureError",
    "check",
    "cls_entropy",
    "compare",
    "Comparison",
    "families",
    "find_keypoints",
    "from_attentions",
    "fuse_heads",
    "get_method",
    "ImageLoadError",
    "LayerRequest",
    "LayerResult",
    "load",
    "load_image",
    "localize",
    "LocalizeOptions",
    "map_entropy",
    "mass_masks",
    "mean_attention_distance",
    "MeanDistance",
    "Method",
    "method_names",
    "methods",
    "MissingCapture",
    "MissingExtra",
    "Needs",
    "Param",
    "patch_filters",
    "position_similarity",
    "register_method",
    "render",
    "Result",
    "RowEntropy",
    "RowReducer",
    "RowStatReducer",
    "rows_entropy",
    "run_analysis",
    "SAMPLE_NAMES",
    "spread_levels",
    "Style",
    "Threshold",
    "TokenLayout",
    "uniform_distance",
    "UnsupportedModelError",
    "upsample_map",
    "VitModel",
    "write_samples",
]
