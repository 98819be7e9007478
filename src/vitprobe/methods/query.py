"""``query``: one patch's own attention over the patch grid (DINO's query view), per head and fused."""

from __future__ import annotations

from typing import Any

from ..analysis.maps import query_map
from ..fusion import FUSIONS, fuse_heads
from .base import Context, Method, Needs, Result, register_method
from .cls import pick_heads
from .params import HEAD, HEAD_FUSION, LAYER, PATCH


@register_method
class QueryAttention(Method):
    """Works without a CLS token. ``patch`` None means the grid centre (H // 2, W // 2). Detail:
    ``heads`` (B, heads, H, W) the query row's probabilities over the patches (not renormalised)."""

    name = "query"
    summary = "one patch's attention over the patches in one layer (DINO's query view), per head and fused"
    params = (LAYER, PATCH, HEAD_FUSION, HEAD)

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        return Needs(full_layers=frozenset({ctx.resolve_layer(p["layer"])}))

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        layer = ctx.resolve_layer(p["layer"])
        h, w = ctx.layout.grid_hw
        row, col = p["patch"] or (h // 2, w // 2)
        heads = query_map(ctx.capture.full[layer], ctx.layout, row, col)  # (B, heads, H, W)
        maps, which = pick_heads(heads, p)
        panels = [(f"head {i}", heads[:, i]) for i in range(heads.shape[1])]
        panels += [(f"head {how}", fuse_heads(heads, how)) for how in FUSIONS]
        return Result(maps, f"attention of patch (row {row}, col {col}), layer {layer}, {which}", {"heads": heads},
                      panels, marks=[(row, col)])
