"""``filters``: the patch projection's filters and how strongly each patch of the image excites them."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from ..analysis.embeddings import filter_components, patch_filters, tile
from ..panels import Panels
from .base import Context, Method, Needs, Result, register_method

SHOWN = 64
COMPONENTS = 28


@register_method
class PatchFilters(Method):
    """The map: per patch, the L2 norm of its embedding by the patch projection (before position
    embeddings), (B, H, W). Panels: that map, the first 64 filters and the 28 principal components
    of all filters (seed 003, method IV; the ViT paper's fig. 7, left), each filter min-max scaled
    on its own. Detail: ``response`` (B, D, H, W) every filter's response."""

    name = "filters"
    measured_by_default = False
    summary = "patch-embedding filters, their principal components, and each patch's response to them"
    details = {"response": "(B, D, H, W) every filter's response at each patch (D filters)"}

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        return Needs()

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        if ctx.model is None or ctx.model.patch_weight is None:
            raise ValueError("filters needs a model with a patch projection (a capture holds none)")
        weight = ctx.model.patch_weight.float().cpu()
        response = F.conv2d(ctx.pixels.float().cpu(), weight, stride=weight.shape[-1])  # (B, D, H, W)
        maps = response.norm(dim=1)
        batch = len(maps)

        def panels():
            shown = tile(patch_filters(weight)[:SHOWN], columns=8)
            components, ratio = filter_components(weight, k=COMPONENTS)
            pcs = tile(components, columns=7)
            explained = f"{len(components)} components ({100 * float(ratio.sum()):.0f}% of variance)"
            return [("response norm", maps),
                    (f"filters 0-{min(SHOWN, len(weight)) - 1}", shown.expand(batch, *shown.shape)),
                    (explained, pcs.expand(batch, *pcs.shape))]

        return Result(maps, f"patch-embedding filters ({len(weight)} of {weight.shape[-1]}x{weight.shape[-1]} px)",
                      {"response": response}, Panels(panels))
