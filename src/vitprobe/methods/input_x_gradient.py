"""``input_x_gradient``: input × gradient (Shrikumar et al. 2016) through Captum."""

from __future__ import annotations

from typing import Any

from .base import Context, Needs, Result, register_method
from .params import TARGET
from .pixel_attribution import CaptumMethod, captum_attr, pixel_result, prepared


@register_method
class InputXGradient(CaptumMethod):
    """x ⊙ ∂y/∂x at the model's input (normalised pixels), by Captum's ``InputXGradient``, summed over
    colour channels and each patch's pixels. Detail: ``pixels`` (B, H_in, W_in) the channel sum."""

    name = "input_x_gradient"
    summary = "input x gradient (Captum) at the input pixels, summed over each patch"
    params = (TARGET,)
    requires = ("gradients",)
    details = {"pixels": "(B, H_in, W_in) input x gradient at each input pixel, summed over colour channels"}

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        return Needs()

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        attr = captum_attr()
        pixels, scores = prepared(ctx, p)
        values = attr.InputXGradient(scores.scores).attribute(pixels, target=scores.index.to(pixels.device))
        return pixel_result(self.name, "input x gradient", values, ctx, scores)
