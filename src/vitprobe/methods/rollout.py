"""``rollout``: attention rollout (Abnar & Zuidema 2020) through every layer."""

from __future__ import annotations

from typing import Any

from ..analysis.rollout import rollout
from .artifacts import ARTIFACT_DETAILS, ARTIFACTS, artifact_needs, masked
from .base import Context, Method, Needs, Result, register_method
from .params import DISCARD_RATIO, HEAD_FUSION


@register_method
class Rollout(Method):
    """Per layer Â = ½A + ½I of the head-fused attention with rows renormalised, joint = Â_L ⋯ Â_1;
    the map is the CLS row over the patches (prefix dropped, not renormalised), carried as a row
    vector from the top layer down in float32. ``discard_ratio`` zeroes the lowest fraction of each
    fused matrix's entries outside the CLS column first."""

    name = "rollout"
    summary = "attention rollout: ½A + ½I of the fused heads multiplied through every layer, CLS row"
    params = (HEAD_FUSION, DISCARD_RATIO, ARTIFACTS)
    requires = ("cls",)
    details = ARTIFACT_DETAILS
    video = True

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        return Needs(fuse=frozenset({p["head_fusion"]})) | artifact_needs(p)

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        maps = rollout(ctx.capture.fused[p["head_fusion"]], ctx.layout, p["discard_ratio"])
        title = f"rollout, heads fused by {p['head_fusion']}, discard ratio {p['discard_ratio']:g}"
        return masked(ctx, p, Result(maps, title, panels=[("rollout", maps)]))
