"""One block's token activations, and their gradient of a target's score, for the Grad-CAM family.

The activations are the output of a block's input norm (pytorch-grad-cam's ViT recipe uses
``blocks[-1].norm1``), found by the name each family gives it, caught by a forward hook during the
model's own forward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .input_scores import InputScores
from .targets import readout_forward

if TYPE_CHECKING:
    from .models.base import VitModel

INPUT_NORM_NAMES = ("norm1", "layernorm_before", "layer_norm1", "ln_1", "norm_1", "ln1", "input_layernorm")
"""The input norm of a block in timm and DINOv2 (``norm1``), transformers' ViT, BEiT, data2vec
(``layernorm_before``), CLIP and SigLIP (``layer_norm1``), OpenCLIP (``ln_1``) and others."""


def block_input_norm(block: nn.Module) -> nn.Module:
    """The norm a block applies to its input before attention: by its family's name, else its first direct
    child whose class name says it is a norm."""
    for name in INPUT_NORM_NAMES:
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return module
    for child in block.children():
        if "norm" in type(child).__name__.lower():
            return child
    raise ValueError(f"{type(block).__name__} has no input norm that vitprobe recognises (looked for "
                     f"{', '.join(INPUT_NORM_NAMES)})")


def _batch_first(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, T, D) from a module output that is (B, T, D) or, in sequence-first models, (T, B, D)."""
    if tokens.shape[0] != batch and tokens.shape[1] == batch:
        return tokens.transpose(0, 1)
    return tokens


def token_activations(model: VitModel, pixels: torch.Tensor, layer: int,
                      scores: InputScores | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The input norm's output tokens (B, T, D) of block ``layer`` for pixels (B, 3, H, W), and with
    ``scores`` their gradient (B, T, D) of the sum of each image's own target score (images do not
    interact, so each image's gradient is its own); float32."""
    module = block_input_norm(model.blocks[layer])
    caught: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs, output) -> None:
        caught.append(output[0] if isinstance(output, tuple) else output)

    with model.lock:
        handle = module.register_forward_hook(keep)
        try:
            if scores is None:
                readout_forward(model, pixels)
                return _batch_first(caught[-1], len(pixels)).float(), None
            with torch.enable_grad():
                x = pixels.detach().to(model.device, model.dtype).requires_grad_(True)  # a graph for frozen weights
                total = scores.own(x).sum()
                (grad,) = torch.autograd.grad(total, caught[-1])
        finally:
            handle.remove()
    batch = len(pixels)
    return _batch_first(caught[-1].detach(), batch).float(), _batch_first(grad, batch).float()
