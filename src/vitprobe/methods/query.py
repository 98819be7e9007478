"""``query``: one patch's own attention over the patch grid (DINO's query view), per head and fused."""

from __future__ import annotations

from typing import Any

import torch

from ..analysis.maps import query_map
from ..fusion import FUSIONS, fuse_heads
from .base import Context, Method, Needs, Result, register_method
from .cls import pick_heads
from .params import HEAD, HEAD_FUSION, LAYER, PATCH, QUERY_XY


@register_method
class QueryAttention(Method):
    """Works without a CLS token. ``patch`` None means the grid centre (H // 2, W // 2); ``query_xy``
    (x, y) in original-image pixels picks, per image, the patch under that point (through the image's
    own resize and crop) instead. Detail: ``heads`` (B, heads, H, W) the query row's probabilities
    over the patches (not renormalised)."""

    name = "query"
    summary = "one patch's attention over the patches in one layer (DINO's query view), per head and fused"
    params = (LAYER, PATCH, QUERY_XY, HEAD_FUSION, HEAD)

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        return Needs(full_layers=frozenset({ctx.resolve_layer(p["layer"])}))

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        layer = ctx.resolve_layer(p["layer"])
        attn = ctx.capture.full[layer]  # (B, heads, T, T)
        if p["query_xy"] is None:
            h, w = ctx.layout.grid_hw
            row, col = p["patch"] or (h // 2, w // 2)
            points = [(float(row), float(col))] * attn.shape[0]
            where = f"patch (row {row}, col {col})"
        else:
            if not ctx.capture.geometry:
                raise ValueError("query_xy needs the images' geometry; give patch=(row, col) for model-input pixels")
            points = [grid_point(p["query_xy"], g, ctx.layout.patch_size) for g in ctx.capture.geometry]
            where = "point (x {:g}, y {:g})".format(*p["query_xy"])
        heads = torch.cat([query_map(attn[b : b + 1], ctx.layout, int(r + 0.5), int(c + 0.5))
                           for b, (r, c) in enumerate(points)])  # (B, heads, H, W)
        maps, which = pick_heads(heads, p)
        panels = [(f"head {i}", heads[:, i]) for i in range(heads.shape[1])]
        panels += [(f"head {how}", fuse_heads(heads, how)) for how in FUSIONS]
        return Result(maps, f"attention of {where}, layer {layer}, {which}", {"heads": heads}, panels,
                      marks=[[point] for point in points])


def grid_point(xy: tuple[float, float], geometry, patch_size: int) -> tuple[float, float]:
    """(x, y) in original-image pixels -> its position (row, col) on the patch grid, patch centres at
    integers; ``ValueError`` when the model did not see that point."""
    y_in, x_in = geometry.original_to_input(xy[1], xy[0])
    h, w = geometry.input_hw
    if not (0 <= y_in < h and 0 <= x_in < w):
        raise ValueError(f"point (x {xy[0]:g}, y {xy[1]:g}) lies outside the part of the image the model saw")
    return y_in / patch_size - 0.5, x_in / patch_size - 0.5
