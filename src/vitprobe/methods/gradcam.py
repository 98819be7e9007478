"""``gradcam``: Grad-CAM (Selvaraju et al. 2017) on a block's token activations."""

from __future__ import annotations

from typing import Any

from ..analysis.cam import gradcam
from .base import Context, Method, Needs, Result, register_method
from .cam import CAM_LAYER, cam_inputs, cam_result
from .params import TARGET


@register_method
class GradCam(Method):
    """ReLU(Σₖ wₖ Aₖ) with wₖ the grid mean of ∂y/∂Aₖ, A the patch tokens of block ``layer``'s input norm
    as D channels on the image's own grid (prefix tokens dropped by the layout), before any upsampling."""

    name = "gradcam"
    summary = "Grad-CAM: ReLU of the channels of a block's input tokens weighted by their mean score gradient"
    params = (TARGET, CAM_LAYER)
    requires = ("gradients",)
    details = {}

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        ctx.resolve_layer(p["layer"])
        return Needs()

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        cam = cam_inputs(ctx, p, gradients=True)
        return cam_result(self.name, "Grad-CAM", gradcam(cam.channels, cam.grads), cam)
