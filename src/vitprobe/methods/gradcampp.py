"""``gradcampp``: Grad-CAM++ (Chattopadhay et al. 2018) on a block's token activations."""

from __future__ import annotations

from typing import Any

from ..analysis.cam import gradcampp
from .base import Context, Method, Needs, Result, register_method
from .cam import CAM_LAYER, cam_inputs, cam_result
from .params import TARGET


@register_method
class GradCamPlusPlus(Method):
    """ReLU(Σₖ wₖ Aₖ), wₖ = Σ_grid αₖ ReLU(∂y/∂Aₖ) with αₖ = g² / (2g² + Σ_grid Aₖ g³ + 1e-6) (pytorch-grad-cam's
    form of the paper's eq. 19), A the patch tokens of block ``layer``'s input norm on the grid."""

    name = "gradcampp"
    summary = "Grad-CAM++: channels weighted by the positive gradients with the second-order weights"
    params = (TARGET, CAM_LAYER)
    requires = ("gradients",)
    details = {}

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        ctx.resolve_layer(p["layer"])
        return Needs()

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        cam = cam_inputs(ctx, p, gradients=True)
        return cam_result(self.name, "Grad-CAM++", gradcampp(cam.channels, cam.grads), cam)
