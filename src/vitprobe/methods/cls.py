"""``cls``: the CLS token's attention over the patch grid in one layer, per head and head-fused."""

from __future__ import annotations

from typing import Any

from ..analysis.maps import cls_maps
from ..fusion import FUSIONS, fuse_heads
from ..panels import Panels
from .artifacts import ARTIFACT_DETAILS, ARTIFACTS, artifact_needs, masked
from .base import Context, Method, Needs, Result, register_method
from .params import HEAD, HEAD_FUSION, LAYER


def pick_heads(heads, p: dict[str, Any]):
    """The one map of per-head maps (B, heads, H, W) (video: (B, heads, t, H, W)): head ``p["head"]``, or the
    heads fused by ``p["head_fusion"]``; with the words that say which."""
    if p["head"] is not None:
        return heads[:, p["head"]], f"head {p['head']}"
    return fuse_heads(heads, p["head_fusion"], dim=1), f"heads fused by {p['head_fusion']}"


@register_method
class ClsAttention(Method):
    """Detail: ``heads`` (B, heads, H, W) the raw CLS-row probabilities over the patches (prefix
    tokens dropped, not renormalised); for a video model maps are (B, t, H, W), heads (B, heads, t, H, W).
    Panels: every head, then the mean / max / min over heads.
    ``artifacts="mask"``: see ``methods.artifacts``."""

    name = "cls"
    summary = "CLS token's attention over the patches in one layer, per head and head-fused"
    params = (LAYER, HEAD_FUSION, HEAD, ARTIFACTS)
    requires = ("cls",)
    details = {"heads": "(B, heads, H, W) the layer's CLS-row probabilities over the patches, per head (video models: "
               "(B, heads, t, H, W))", **ARTIFACT_DETAILS}
    video = True

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        return Needs(cls_layers=frozenset({ctx.resolve_layer(p["layer"])})) | artifact_needs(p)

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        layer = ctx.resolve_layer(p["layer"])
        cap = ctx.capture
        heads = cls_maps(cap.cls[cap.layer_position(layer)], ctx.layout)  # (B, heads, H, W)
        maps, which = pick_heads(heads, p)
        panels = Panels(lambda: [*((f"head {i}", heads[:, i]) for i in range(heads.shape[1])),
                                 *((f"head {how}", fuse_heads(heads, how, dim=1)) for how in FUSIONS)])
        return masked(ctx, p, Result(maps, f"CLS attention, layer {layer}, {which}", {"heads": heads}, panels))
