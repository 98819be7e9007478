"""``gradcam``: Grad-CAM (Selvaraju et al. 2017) on a block's token activations."""

from __future__ import annotations

from ..analysis.cam import gradcam
from .base import register_method
from .cam import GradientCam


@register_method
class GradCam(GradientCam):
    """ReLU(Σₖ wₖ Aₖ) with wₖ the grid mean of ∂y/∂Aₖ, A the patch tokens of block ``layer``'s input norm
    as D channels on the image's own grid (prefix tokens dropped by the layout), before any upsampling."""

    name = "gradcam"
    summary = "Grad-CAM: ReLU of the channels of a block's input tokens weighted by their mean score gradient"
    title = "Grad-CAM"
    weigh = staticmethod(gradcam)
    details = {}
