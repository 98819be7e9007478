"""Class-specific maps from attention and its gradient with respect to one class score.

Both methods weigh each layer's attention A (B, heads, T, T) by the gradient G = ∂y_c/∂A of the
target logit y_c, layer by layer (the gradient of layer l is paired with the attention of layer
l; vit-explain pairs them in reverse order):

- ``"gradrollout"`` (vit-explain's gradient rollout): Ā = ReLU(mean_heads(A ⊙ G)), then rollout
  as in ``analysis.rollout``: Â = (½Ā + ½I) with rows renormalised, joint = Â_L ⋯ Â_1, with the
  same optional ``discard_ratio``;
- ``"chefer"`` (Chefer et al. 2021, "Generic attention-model explainability"):
  Ā = mean_heads(ReLU(A ⊙ G)), R ← R + Ā·R from R = I through the layers, i.e.
  R = (I + Ā_L) ⋯ (I + Ā_1).

The map is the CLS row of the joint matrix over the patch tokens (prefix tokens dropped, not
renormalised), carried as a row vector from the top layer down (O(L·T²), no T×T products).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..layout import TokenLayout
from .maps import to_grid
from .rollout import rollout_rows

KINDS = ("gradrollout", "chefer")


def weighted_attention(attn: torch.Tensor, grads: torch.Tensor, method: str) -> torch.Tensor:
    """Head-fused gradient-weighted attention of one layer: attn, grads (..., heads, T, T) -> (..., T, T), float32.

    "gradrollout" clamps after the head mean, "chefer" before it.
    """
    if attn.shape != grads.shape:
        raise ValueError(f"attention {tuple(attn.shape)} and gradients {tuple(grads.shape)} differ in shape")
    product = attn.float() * grads.float()
    if method == "gradrollout":
        return product.mean(dim=-3).clamp_min(0.0)
    if method == "chefer":
        return product.clamp_min(0.0).mean(dim=-3)
    raise ValueError(f"unknown class-map method {method!r}; use one of {KINDS}")


def chefer_rows(weighted: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """CLS row of R = (I + Ā_L) ⋯ (I + Ā_1) over all tokens: weighted (L, B, T, T) -> (B, T), float32."""
    row = torch.zeros(weighted.shape[1], weighted.shape[-1], dtype=torch.float32, device=weighted.device)
    row[:, layout.cls_index] = 1.0
    for layer in reversed(range(weighted.shape[0])):
        row = row + torch.bmm(row[:, None, :], weighted[layer].float())[:, 0]
    return row


def class_rows(
    weighted: torch.Tensor, layout: TokenLayout, method: str, discard_ratio: float = 0.0
) -> torch.Tensor:
    """Joint CLS row over all tokens from per-layer weighted attention (L, B, T, T) in forward order -> (B, T)."""
    if method == "gradrollout":
        return rollout_rows(weighted, layout, discard_ratio)
    if method == "chefer":
        if discard_ratio:
            raise ValueError("discard_ratio applies to gradrollout only")
        return chefer_rows(weighted, layout)
    raise ValueError(f"unknown class-map method {method!r}; use one of {KINDS}")


def class_map(
    attentions: Sequence[torch.Tensor] | torch.Tensor,
    gradients: Sequence[torch.Tensor] | torch.Tensor,
    layout: TokenLayout,
    method: str = "chefer",
    discard_ratio: float = 0.0,
) -> torch.Tensor:
    """Class-specific map on the patch grid (B, H, W) from per-layer attention and gradients.

    ``attentions[l]`` and ``gradients[l]`` are layer l's probabilities and ∂y_c/∂A, each
    (B, heads, T, T), in forward order (or stacked (L, B, heads, T, T)). From any framework: a
    Keras user passes the tensors a ``tf.GradientTape`` gave, converted to torch.
    """
    if len(attentions) != len(gradients):
        raise ValueError(f"{len(attentions)} attention layers but {len(gradients)} gradient layers")
    weighted = torch.stack(
        [weighted_attention(a, g, method) for a, g in zip(attentions, gradients, strict=True)]
    )
    return to_grid(class_rows(weighted, layout, method, discard_ratio), layout)
