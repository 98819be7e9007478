"""``chefer``: Chefer et al. 2021 ("Generic attention-model explainability") of a class score."""

from __future__ import annotations

from typing import Any

from ..analysis.gradients import class_map
from .base import Context, Method, Needs, Result, register_method
from .params import TARGET


@register_method
class Chefer(Method):
    """Ā = mean_heads(ReLU(A ⊙ ∂y/∂A)) per layer, each gradient paired with its own layer's
    attention; R = (I + Ā_L) ⋯ (I + Ā_1); the map is R's CLS row over the patches."""

    name = "chefer"
    summary = "Chefer et al. 2021: relevance R = Π (I + head mean of ReLU(A ⊙ ∂y/∂A)), CLS row"
    params = (TARGET,)
    requires = ("cls", "gradients")
    details = {}

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        return Needs(gradients=True)

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        g = ctx.gradients(p["target"])
        maps = class_map(g.attentions, g.grads, ctx.layout, "chefer")
        title = "Chefer et al. 2021 relevance" + ("" if g.targets is not None else f" of {g.words}")
        return Result(maps, title, panels=[("chefer", maps)], targets=g.targets, logits=g.logits)
