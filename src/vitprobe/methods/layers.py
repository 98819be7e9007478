"""``layers``: the CLS maps of every layer, heads fused, aggregated over the layers (seed 004)."""

from __future__ import annotations

from typing import Any

import torch

from ..analysis.maps import aggregate_layers, cls_maps
from ..fusion import FUSIONS
from ..panels import Panels
from .artifacts import ARTIFACT_DETAILS, ARTIFACTS, artifact_needs, masked
from .base import Context, Method, Needs, Result, register_method
from .cls import pick_heads
from .params import HEAD, HEAD_FUSION, LAYER_FUSION


@register_method
class LayerAggregation(Method):
    """Detail: ``layers`` (B, L, H, W) each layer's head-fused (or one-head) CLS map, and
    ``layers_heads`` (B, L, heads, H, W) every layer's per-head CLS maps. Panels: every layer, then
    the mean / max / min over layers."""

    name = "layers"
    summary = "CLS maps of every layer (heads fused) aggregated over the layers by mean, max or min"
    params = (LAYER_FUSION, HEAD_FUSION, HEAD, ARTIFACTS)
    requires = ("cls",)
    details = {"layers": "(B, L, H, W) each layer's head-fused (or one-head) CLS map",
               "layers_heads": "(B, L, heads, H, W) each layer's per-head CLS maps", **ARTIFACT_DETAILS}
    video = True

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        return Needs(cls_layers=frozenset(range(ctx.n_layers))) | artifact_needs(p)

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        cap = ctx.capture
        per_head = cls_maps(cap.cls[[cap.layer_position(i) for i in range(ctx.n_layers)]], ctx.layout)
        layers_heads = per_head.transpose(0, 1)  # (B, L, heads, H, W)
        fused = [pick_heads(layer, p) for layer in per_head]  # per layer: (B, H, W), words
        per_layer = torch.stack([m for m, _ in fused], dim=1)  # (B, L, H, W)
        maps = aggregate_layers(per_layer, p["layer_fusion"], dim=1)
        panels = Panels(lambda: [*((f"layer {i}", per_layer[:, i]) for i in range(ctx.n_layers)),
                                 *((f"layer {how}", aggregate_layers(per_layer, how, dim=1)) for how in FUSIONS)])
        which = fused[0][1]
        return masked(ctx, p, Result(maps, f"{p['layer_fusion']} over layers of the CLS maps, {which}",
                                     {"layers": per_layer, "layers_heads": layers_heads}, panels))
