"""What Captum's attribution methods share: the baseline parameter, the import, and pooling to the grid.

Infrastructure, not a method: ``integrated_gradients``, ``input_x_gradient`` and ``occlusion`` run
Captum (the ``captum`` extra) on the model's input pixels with the target's scores
(``input_scores``: every perturbed or interpolated copy of image b is scored by b's own target), and
give the attribution summed over colour channels and each patch's pixels as the (B, H, W) map; the
channel-summed pixel map is ``detail["pixels"]`` (B, H_in, W_in).

Baselines, at the model's input: ``mean`` is zeros there (the normalisation's mean colour, the
deletion substrate of the faithfulness protocols), ``black`` is pixel value 0 normalised, ``blur``
the image blurred as the insertion substrate (Gaussian, σ = 5 px, 11 × 11 window).
"""

from __future__ import annotations

from typing import Any

import torch

from ..analysis.maps import pixels_to_grid
from ..analysis.perturbation import blurred
from ..input_scores import InputScores, input_scores
from ..layout import TokenLayout
from .base import Context, Method, Param, Result, import_extra

BASELINE = Param("baseline", "mean", "what the image is compared with: the normalisation's mean colour (zeros at the "
                 "model input), black, or the image blurred", "choice", choices=("mean", "black", "blur"))


def captum_attr() -> Any:
    """``captum.attr``, or ``MissingExtra`` with the one-line install hint."""
    return import_extra("captum.attr", "captum", "this method")


class CaptumMethod(Method):
    """A method run by Captum: refused with the install line, before anything runs, when it is missing."""

    measured_by_default = False

    def check_model(self, layout: TokenLayout, has_classifier: bool | None) -> None:
        super().check_model(layout, has_classifier)
        import_extra("captum.attr", "captum", f"method {self.name!r}")


def baseline_pixels(ctx: Context, pixels: torch.Tensor, kind: str) -> torch.Tensor:
    """The baseline (B, 3, H, W) of model-input ``pixels`` (B, 3, H, W): ``mean``, ``black`` or ``blur``."""
    if kind == "mean":
        return torch.zeros_like(pixels)
    if kind == "black":
        spec = ctx.model.preprocess
        mean = torch.tensor(spec.mean, dtype=pixels.dtype, device=pixels.device)
        std = torch.tensor(spec.std, dtype=pixels.dtype, device=pixels.device)
        return (-mean / std)[None, :, None, None].expand_as(pixels).clone()
    if kind == "blur":
        return torch.stack([blurred(image) for image in pixels])
    raise ValueError(f"--baseline takes {BASELINE.describe()}, got {kind!r}")


def prepared(ctx: Context, p: dict[str, Any]) -> tuple[torch.Tensor, InputScores]:
    """The model-input pixels (B, 3, H, W) on the model's device and dtype, and the target's scores."""
    model, pixels = ctx.model_and_pixels()
    pixels = pixels.detach().to(model.device, model.dtype).requires_grad_(True)  # Captum's inputs to differentiate
    return pixels, input_scores(model, pixels.detach(), p.get("target"))


def pixel_result(name: str, title: str, attributions: torch.Tensor, ctx: Context, scores: InputScores,
                 **detail: torch.Tensor) -> Result:
    """The ``Result`` of pixel attributions (B, 3, H_in, W_in): the grid map, ``detail["pixels"]`` and more."""
    pixels_map = attributions.detach().float().sum(dim=1).cpu()
    maps = pixels_to_grid(attributions.detach().float().cpu(), ctx.layout.grid_hw)
    words = "" if scores.targets is not None else f" of {scores.words}"
    return Result(maps, f"{title}{words}", {"pixels": pixels_map, **detail}, [(name, maps)],
                  targets=scores.targets, logits=scores.logits)
