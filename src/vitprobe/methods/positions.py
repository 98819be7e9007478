"""``positions``: how similar one grid position's learned embedding is to every other (ViT paper, fig. 7)."""

from __future__ import annotations

from typing import Any

from ..analysis.embeddings import position_similarity, resize_positions
from .base import Context, Method, Needs, Result, register_method
from .params import PATCH


@register_method
class PositionSimilarity(Method):
    """Cosine similarity of the position embedding at ``patch`` (default: the grid centre) to every
    position, on the image's own grid: the learned table is resized as the model resizes it
    (bicubic). The same for every image; needs the model's position table, not a forward pass.
    Panels: the chosen position, then the corners, edge midpoints and centre of the grid."""

    name = "positions"
    measured_by_default = False
    summary = "cosine similarity of one grid position's embedding to every position (ViT paper, fig. 7)"
    params = (PATCH,)
    details = {}

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        return Needs()

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        if ctx.model is None or ctx.model.position_grid is None:
            raise ValueError("positions needs a model with a learned position table (a capture holds none)")
        h, w = ctx.layout.grid_hw
        sim = position_similarity(resize_positions(ctx.model.position_grid.cpu(), (h, w)))  # (H, W, H, W)
        row, col = p["patch"] or (h // 2, w // 2)
        ctx.layout.patch_index(row, col)  # IndexError outside the grid
        batch = len(ctx.pixels)
        spread = [(r, c) for r in (0, h // 2, h - 1) for c in (0, w // 2, w - 1)]
        points = [(row, col), *(point for point in spread if point != (row, col))]
        panels = [(f"({r}, {c})", sim[r, c].expand(batch, h, w)) for r, c in points]
        return Result(sim[row, col].expand(batch, h, w).contiguous(),
                      f"position-embedding similarity to (row {row}, col {col})", panels=panels)
