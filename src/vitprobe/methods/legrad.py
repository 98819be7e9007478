"""``legrad``: LeGrad (Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via
Feature Formation Sensitivity", ICCV 2025), as its authors compute it (github.com/WalBouss/LeGrad,
legrad/wrapper.py: ``compute_legrad_clip`` and ``compute_legrad_siglip``) for the families they cover, and by
vitprobe's rule for the others."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..analysis.maps import to_grid
from .base import Context, Method, Needs, Param, Result, register_method
from .params import START_LAYER, TARGET

NEUTRAL_PROMPT = "a photo of a"
"""The prompt whose map the authors' SigLIP path subtracts (their ``empty_embedding``)."""
CORRECTION = Param("correction", 0.8, "SigLIP with a text tower: zero the patches where the map of the neutral "
                   f"prompt '{NEUTRAL_PROMPT}' (min-max scaled) exceeds this, as the authors do; 1 turns it off",
                   "float", low=0.0, high=1.0)


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each image's map (B, H, W) scaled to [0, 1]."""
    flat = maps.flatten(1)
    low = flat.amin(1).view(-1, 1, 1)
    span = (flat.amax(1).view(-1, 1, 1) - low).clamp_min(torch.finfo(maps.dtype).tiny)
    return (maps - low) / span


def _relevance(grad: torch.Tensor, pooled: bool) -> torch.Tensor:
    """ReLU of a gradient w.r.t. attention, averaged over heads, then over query rows (a layer's own attention
    (B, heads, T, T)) or the first learned query's row (a pooling head's (B, heads, Q, T)): (B, T)."""
    heads = grad.float().clamp_min(0.0).mean(dim=1)
    return heads[:, 0] if pooled else heads.mean(dim=1)


@register_method
class LeGrad(Method):
    """For each layer l from ``start_layer`` (the authors' default: the last two layers) a score s_l of the
    target is computed from layer l's output tokens; the layer map is ReLU(∂s_l/∂A), averaged over heads and
    query rows, prefix columns dropped; the layer maps are summed and min–max scaled per image.

    - OpenCLIP and Hugging Face CLIP / MetaCLIP 2 towers (the authors' ``compute_legrad_clip``): s_l scores
      the feature ln_post(mean over every token of layer l, CLS included) · projection (``VitModel.feature``),
      and A is layer l's own attention.
    - SigLIP / SigLIP 2 with an attention-pooling head (the authors' ``compute_legrad_siglip``): s_l scores
      the pooling head applied to layer l's tokens without the tower's final norm, and A is that head's
      attention (its first learned query's row); with a text tower, the patches where the map of the prompt
      "a photo of a" (min–max scaled) exceeds ``correction`` are zeroed before the final min–max.
    - Every other family (classifiers, backbones without text, timm towers): vitprobe's rule, s_l from layer
      l's tokens through the model's own final norm, pooling and head (the readout), A layer l's attention.

    Scores: a prompt's is the model's own image–text logit (its logit scale and bias: a positive factor
    and a constant beside the authors' cosine, the same maps); ``self`` / ``image:PATH`` project the feature
    on the reference direction taken with the same feature; a class target is the readout's logit. Maps stay
    on the patch grid (the authors upsample each layer map bilinearly before the min–max; upsampling is the
    renderer's job here). Detail: ``layers`` (B, L', H, W) each layer's map before the sum; ``neutral``
    (B, H, W) the neutral prompt's min–max map where the correction ran."""

    name = "legrad"
    summary = "LeGrad: ReLU of each layer's score gradient w.r.t. attention, mean over heads and rows (authors' path)"
    params = (TARGET, replace(START_LAYER, default=-2), CORRECTION)
    requires = ("gradients",)
    details = {"layers": "(B, L', H, W) each explained layer's map (L' layers from start_layer on), min-max scaled",
               "neutral": "(B, H, W) the neutral prompt's map (SigLIP only) whose peaks above correction are zeroed"}

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        ctx.resolve_layer(p["start_layer"])
        return Needs(gradients=True)

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        start = ctx.resolve_layer(p["start_layer"])
        run = ctx.gradient_pass(p["target"])
        model = ctx.model
        feature = model.feature if run.rescore is not None else None
        correct = feature is not None and model.similarity is not None and p["correction"] < 1.0
        per_layer, neutral_layers, pooled = [], [], False
        with torch.enable_grad():
            score_of = run.rescore(lambda tokens: feature(tokens)[0]) if feature is not None else None
            for layer in range(start, ctx.n_layers):
                if feature is None:
                    score, probs = run.score(run.tokens[layer]), None
                else:
                    with model.lock:
                        embedding, probs = feature(run.tokens[layer])
                    score = score_of(embedding)
                pooled = probs is not None
                wrt = probs if pooled else run.attentions[layer]
                (grad,) = torch.autograd.grad(score.sum(), wrt, retain_graph=True)
                per_layer.append(to_grid(_relevance(grad, pooled), ctx.layout))
                if pooled and correct:
                    with model.lock:
                        neutral = model.similarity(embedding, [NEUTRAL_PROMPT])[:, 0]
                    (grad,) = torch.autograd.grad(neutral.sum(), probs, retain_graph=True)
                    neutral_layers.append(to_grid(_relevance(grad, True), ctx.layout))
        layers = torch.stack(per_layer, dim=1)  # (B, L', H, W)
        summed = layers.sum(dim=1)
        detail = {"layers": layers}
        if neutral_layers:
            detail["neutral"] = _min_max(torch.stack(neutral_layers, dim=1).sum(dim=1))
            summed = summed.masked_fill(detail["neutral"] > p["correction"], 0.0)
        maps = _min_max(summed)
        title = (f"LeGrad, layers {start}..{ctx.n_layers - 1}" + (", pooling head's attention" if pooled else "")
                 + ("" if run.targets is not None else f", {run.words}"))
        panels = [("legrad", maps), *((f"layer {start + k}", layers[:, k]) for k in range(layers.shape[1]))]
        if neutral_layers:
            panels.append((f'"{NEUTRAL_PROMPT}"', detail["neutral"]))
        return Result(maps, title, detail, panels, targets=run.targets, logits=run.logits)
