"""``integrated_gradients``: Integrated Gradients (Sundararajan et al. 2017) through Captum."""

from __future__ import annotations

from typing import Any

from .base import Context, Needs, Param, Result, register_method
from .params import TARGET
from .pixel_attribution import BASELINE, CaptumMethod, baseline_pixels, captum_attr, pixel_result, prepared

N_STEPS = Param("n_steps", 32, "integration steps (Captum's Gauss-Legendre rule)", "int", low=1)
INTERNAL_BATCH = 16
"""Interpolated images through the model at once (Captum's ``internal_batch_size``)."""


@register_method
class IntegratedGradients(CaptumMethod):
    """(x − x′) ⊙ ∫₀¹ ∂y(x′ + α(x − x′))/∂x dα at the model's input, by Captum's ``IntegratedGradients``
    with ``n_steps`` points, summed over colour channels and each patch's pixels; x′ the ``baseline``.
    Detail: ``pixels`` (B, H_in, W_in) the channel sum; ``delta`` (B,) Captum's convergence delta (the
    attributions' sum minus y(x) − y(x′))."""

    name = "integrated_gradients"
    summary = "Integrated Gradients (Captum) at the input pixels, summed over each patch"
    params = (TARGET, BASELINE, N_STEPS)
    requires = ("gradients",)
    details = {"pixels": "(B, H_in, W_in) the attribution at each input pixel, summed over colour channels",
               "delta": "(B,) Captum's convergence delta: the attributions' sum minus y(x) - y(baseline)"}

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        return Needs()

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        attr = captum_attr()
        pixels, scores = prepared(ctx, p)
        method = attr.IntegratedGradients(scores.scores)
        values, delta = method.attribute(pixels, baselines=baseline_pixels(ctx, pixels, p["baseline"]),
                                         target=scores.index.to(pixels.device), n_steps=p["n_steps"],
                                         internal_batch_size=INTERNAL_BATCH, return_convergence_delta=True)
        return pixel_result(self.name, f"Integrated Gradients ({p['baseline']} baseline)", values, ctx, scores,
                            delta=delta.detach().float().cpu())
