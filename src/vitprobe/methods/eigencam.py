"""``eigencam``: Eigen-CAM (Muhammad & Yeasin 2020), the first principal component of a block's tokens."""

from __future__ import annotations

from typing import Any

from ..analysis.cam import eigencam
from .base import Context, Param, Result, register_method
from .cam import CAM_LAYER, CamMethod, cam_inputs, cam_result

ORIENT = Param("orient", "peak", "the component's sign: as the SVD returns it (svd, pytorch-grad-cam's EigenCAM), or "
               "flipped where its minimum outweighs its maximum (peak)", "choice", choices=("peak", "svd"))


@register_method
class EigenCam(CamMethod):
    """ReLU of the projection of the centred patch tokens (H·W, D) of block ``layer``'s input norm on their
    first right singular vector. Needs no target and no gradient. The SVD's sign is arbitrary:
    ``orient="svd"`` keeps it (pytorch-grad-cam's EigenCAM, which can light up the background),
    ``"peak"`` flips a projection whose most negative value outweighs its largest."""

    name = "eigencam"
    summary = "Eigen-CAM: a block's patch tokens projected on their first principal component (no gradients)"
    params = (CAM_LAYER, ORIENT)
    requires = ("model",)
    details = {}

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        cam = cam_inputs(ctx, p, gradients=False, target=False)
        return cam_result(self.name, "Eigen-CAM", eigencam(cam.channels, p["orient"]), cam)
