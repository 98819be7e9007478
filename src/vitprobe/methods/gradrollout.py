"""``gradrollout``: gradient rollout (vit-explain's idea) of a class score."""

from __future__ import annotations

from typing import Any

from ..analysis.gradients import class_map
from .base import Context, Method, Needs, Result, register_method
from .params import DISCARD_RATIO, TARGET


@register_method
class GradientRollout(Method):
    """Ā = ReLU(mean_heads(A ⊙ ∂y/∂A)) per layer, each gradient paired with its own layer's
    attention, then rollout as in ``rollout`` (with its ``discard_ratio``); y is the target's logit."""

    name = "gradrollout"
    summary = "gradient rollout: rollout of ReLU(head mean of A ⊙ ∂y/∂A) for a class score y"
    params = (TARGET, DISCARD_RATIO)
    requires = ("cls", "gradients")
    details = {}

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        return Needs(gradients=True)

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        g = ctx.gradients(p["target"])
        maps = class_map(g.attentions, g.grads, ctx.layout, "gradrollout", p["discard_ratio"])
        title = "gradient rollout" + ("" if g.targets is not None else f" of {g.words}")
        return Result(maps, title, panels=[("gradrollout", maps)], targets=g.targets, logits=g.logits)
