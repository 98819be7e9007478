"""``gradcampp``: Grad-CAM++ (Chattopadhay et al. 2018) on a block's token activations."""

from __future__ import annotations

from ..analysis.cam import gradcampp
from .base import register_method
from .cam import GradientCam


@register_method
class GradCamPlusPlus(GradientCam):
    """ReLU(Σₖ wₖ Aₖ), wₖ = Σ_grid αₖ ReLU(∂y/∂Aₖ) with αₖ = g² / (2g² + Σ_grid Aₖ g³ + 1e-6) (pytorch-grad-cam's
    form of the paper's eq. 19), A the patch tokens of block ``layer``'s input norm on the grid."""

    name = "gradcampp"
    summary = "Grad-CAM++: channels weighted by the positive gradients with the second-order weights"
    title = "Grad-CAM++"
    weigh = staticmethod(gradcampp)
    details = {}
