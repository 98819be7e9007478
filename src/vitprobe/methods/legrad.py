"""``legrad``: LeGrad (Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via
Feature Formation Sensitivity", ICCV 2025; the authors' code: github.com/WalBouss/LeGrad, legrad/wrapper.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..analysis.maps import to_grid
from .base import Context, Method, Needs, Result, register_method
from .params import START_LAYER, TARGET


@register_method
class LeGrad(Method):
    """For each layer l from ``start_layer`` (the authors' default: the last two layers), the layer's own
    output tokens go through the model's final norm, pooling and head or projection (the readout), and
    the target's score is computed from them; the map of layer l is ReLU(∂score_l / ∂A_l) of that
    layer's own attention, averaged over heads and over all query rows, prefix columns dropped. The
    layer maps are summed and min–max normalised per image. Targets as for the other gradient methods
    (``targets``): a class, or the image's or another image's embedding. Detail: ``layers`` (B, L', H, W)
    the map of each layer used, before the sum."""

    name = "legrad"
    summary = "LeGrad: ReLU of each layer's score gradient w.r.t. its own attention, mean over heads and rows"
    params = (TARGET, replace(START_LAYER, default=-2))
    requires = ("gradients",)

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        ctx.resolve_layer(p["start_layer"])
        return Needs(gradients=True)

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        start = ctx.resolve_layer(p["start_layer"])
        run = ctx.gradient_pass(p["target"])
        per_layer = []
        with torch.enable_grad():
            for layer in range(start, ctx.n_layers):
                score = run.score(run.tokens[layer]).sum()
                (grad,) = torch.autograd.grad(score, run.attentions[layer], retain_graph=True)
                relevance = grad.float().clamp_min(0.0).mean(dim=1).mean(dim=1)  # (B, T): heads, then rows
                per_layer.append(to_grid(relevance, ctx.layout))
        layers = torch.stack(per_layer, dim=1)  # (B, L', H, W)
        summed = layers.sum(dim=1)
        low = summed.flatten(1).amin(1).view(-1, 1, 1)
        span = (summed.flatten(1).amax(1).view(-1, 1, 1) - low).clamp_min(torch.finfo(torch.float32).tiny)
        maps = (summed - low) / span
        title = f"LeGrad, layers {start}..{ctx.n_layers - 1}" + ("" if run.targets is not None else f", {run.words}")
        panels = [("legrad", maps), *((f"layer {start + k}", layers[:, k]) for k in range(layers.shape[1]))]
        return Result(maps, title, {"layers": layers}, panels, targets=run.targets, logits=run.logits)
