"""``query``: one patch's own attention over the patch grid (DINO's query view), per head and fused."""

from __future__ import annotations

from typing import Any

import torch

from ..analysis.maps import query_map
from ..fusion import FUSIONS, fuse_heads
from ..panels import Panels
from .base import Context, Method, Needs, Result, register_method
from .cls import pick_heads
from .params import FRAME, HEAD, HEAD_FUSION, LAYER, PATCH, QUERY_XY


@register_method
class QueryAttention(Method):
    """Works without a CLS token. ``patch`` None means the grid centre (H // 2, W // 2); ``query_xy``
    (x, y) in original-image pixels picks, per image, the patch under that point (through the image's
    own resize and crop) instead. Detail: ``heads`` (B, heads, H, W) the query row's probabilities
    over the patches (not renormalised).

    Video models: the query is a tubelet (step, row, col): ``patch=(step, row, col)``, or a (row, col) patch
    or ``query_xy`` point in the tubelet step holding clip frame ``frame`` (a frame of the clip as given,
    through its frame sampling; of the model's input frames for model-input pixels), else the middle step
    t // 2. Maps are then (B, t, H, W), heads (B, heads, t, H, W); ``steps`` in detail (B,) the query's step."""

    name = "query"
    measured_by_default = False
    summary = "one patch's attention over the patches in one layer (DINO's query view), per head and fused"
    params = (LAYER, PATCH, QUERY_XY, FRAME, HEAD_FUSION, HEAD)
    details = {"heads": "(B, heads, H, W) the query row's probabilities over the patches, per head (video models: "
               "(B, heads, t, H, W))", "steps": "(B,) each query's tubelet step (video models only)"}
    video = True

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        return Needs(full_layers=frozenset({ctx.resolve_layer(p["layer"])}))

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        layer = ctx.resolve_layer(p["layer"])
        attn = ctx.capture.full[layer]  # (B, heads, T, T)
        layout = ctx.layout
        patch = p["patch"]
        if not layout.has_time and (p["frame"] is not None or (patch is not None and len(patch) == 3)):
            raise ValueError("frame and a (step, row, col) patch apply to video models; this model takes images")
        if patch is not None and len(patch) == 3 and (p["frame"] is not None or p["query_xy"] is not None):
            raise ValueError("give the query's step once: a (step, row, col) patch, or frame with a (row, col) patch "
                             "or query_xy")
        steps = [query_step(layout, g, p["frame"]) for g in _geometries(ctx, attn.shape[0])]
        if p["query_xy"] is None:
            h, w = layout.grid_hw
            spot = patch or (h // 2, w // 2)
            if len(spot) == 3:
                steps, spot = [spot[0]] * attn.shape[0], spot[1:]
            row, col = spot
            points = [(float(row), float(col))] * attn.shape[0]
            where = f"patch (row {row}, col {col})"
        else:
            if not ctx.capture.geometry:
                raise ValueError("query_xy needs the images' geometry; give patch=(row, col) for model-input pixels")
            points = [grid_point(p["query_xy"], g, layout.patch_size) for g in ctx.capture.geometry]
            where = "point (x {:g}, y {:g})".format(*p["query_xy"])
        heads = torch.cat([query_map(attn[b : b + 1], layout, int(r + 0.5), int(c + 0.5), s)
                           for b, ((r, c), s) in enumerate(zip(points, steps, strict=True))])  # (B, heads, [t,] H, W)
        detail = {"heads": heads}
        if layout.has_time:
            where += f" of tubelet step {steps[0]}" if len(set(steps)) == 1 else " of each clip's step"
            detail["steps"] = torch.tensor(steps)
        maps, which = pick_heads(heads, p)
        panels = Panels(lambda: [*((f"head {i}", heads[:, i]) for i in range(heads.shape[1])),
                                 *((f"head {how}", fuse_heads(heads, how, dim=1)) for how in FUSIONS)])
        return Result(maps, f"attention of {where}, layer {layer}, {which}", detail, panels,
                      marks=[[point] for point in points])


def _geometries(ctx: Context, n: int) -> list:
    """Each image's geometry, or None per image where the capture has none (model-input pixels)."""
    return list(ctx.capture.geometry) if ctx.capture.geometry else [None] * n


def query_step(layout, geometry, frame: int | None) -> int | None:
    """The tubelet step of clip frame ``frame`` (None: the middle step, or no step for an image): through the
    clip's frame sampling where ``geometry`` records it (``ClipGeometry``), else ``frame`` is a model-input
    frame. ``ValueError`` outside the clip."""
    if not layout.has_time:
        return None
    if frame is None:
        return layout.n_steps // 2
    indices = getattr(geometry, "frame_indices", ())
    if indices:
        frame = geometry.input_frame(frame)
    elif frame >= layout.n_frames:
        raise ValueError(f"frame {frame} is outside the model's {layout.n_frames} input frames")
    return frame // layout.tubelet


def grid_point(xy: tuple[float, float], geometry, patch_size: int) -> tuple[float, float]:
    """(x, y) in original-image pixels -> its position (row, col) on the patch grid, patch centres at
    integers; ``ValueError`` when the model did not see that point."""
    y_in, x_in = geometry.original_to_input(xy[1], xy[0])
    h, w = geometry.input_hw
    if not (0 <= y_in < h and 0 <= x_in < w):
        raise ValueError(f"point (x {xy[0]:g}, y {xy[1]:g}) lies outside the part of the image the model saw")
    return y_in / patch_size - 0.5, x_in / patch_size - 0.5
