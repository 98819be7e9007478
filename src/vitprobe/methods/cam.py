"""What the Grad-CAM-family methods share: their layer parameter and one batch's token activations.

Infrastructure, not a method: ``gradcam``, ``gradcampp``, ``scorecam`` and ``eigencam`` each read the
activations of one block's input norm (the last block's by default, as pytorch-grad-cam's ViT recipe)
with the prefix tokens dropped by the model's own layout, on the image's own grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..activations import token_activations
from ..analysis.cam import channel_maps
from ..input_scores import InputScores, input_scores
from .base import Context, Method, Needs, Param, Result
from .params import TARGET

CAM_LAYER = Param("layer", -1, "block whose input norm's output tokens are the activations (negative counts back "
                  "from the last)", "layer")


@dataclass(frozen=True)
class CamInputs:
    """``channels`` (B, D, H, W) the activations on the grid, ``grads`` (B, D, H, W) their gradient of the
    target's score (None when not asked), ``scores`` the target's scores (None when not asked), and
    ``layer`` the block index."""

    channels: torch.Tensor
    grads: torch.Tensor | None
    scores: InputScores | None
    layer: int


def cam_inputs(ctx: Context, p: dict[str, Any], *, gradients: bool, target: bool = True) -> CamInputs:
    """The activations of block ``p["layer"]`` for the context's images, with the target's scores (and
    the activations' gradient of them when ``gradients``)."""
    model, pixels = ctx.model_and_pixels()
    layer = ctx.resolve_layer(p["layer"])
    scores = input_scores(model, pixels, p.get("target")) if target else None
    acts, grads = token_activations(model, pixels, layer, scores if gradients else None)
    return CamInputs(channel_maps(acts, ctx.layout), None if grads is None else channel_maps(grads, ctx.layout),
                     scores, layer)


def cam_result(name: str, title: str, maps: torch.Tensor, cam: CamInputs) -> Result:
    """The ``Result`` of a CAM method: ``maps`` (B, H, W), titled with the layer and what was explained."""
    scores = cam.scores
    words = "" if scores is None or scores.targets is not None else f" of {scores.words}"
    return Result(maps, f"{title}{words}, block {cam.layer} input norm", panels=[(name, maps)],
                  targets=None if scores is None else scores.targets, logits=None if scores is None else scores.logits)


class CamMethod(Method):
    """A method on one block's token activations: its ``layer`` parameter is checked before anything runs."""

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        ctx.resolve_layer(p["layer"])
        return Needs()


class GradientCam(CamMethod):
    """A CAM weighted by the target's gradient of the activations: ``weigh(channels, grads)`` (B, D, H, W)
    twice -> (B, H, W) is the one thing each such method adds, with its ``title``."""

    params = (TARGET, CAM_LAYER)
    requires = ("gradients",)
    title: ClassVar[str]
    weigh: ClassVar[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        cam = cam_inputs(ctx, p, gradients=True)
        return cam_result(self.name, self.title, type(self).weigh(cam.channels, cam.grads), cam)
