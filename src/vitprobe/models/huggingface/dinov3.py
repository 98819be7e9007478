"""DINOv3 ViT: CLS + register tokens, layer scale, and a rotary position embedding applied to the patch
tokens' q and k inside attention, so q and k are read from the model's SDPA call (rotation included)."""

from __future__ import annotations

import torch
from torch import nn

from .spec import HfFamily, register_hf_family


def _prefix(config) -> tuple[str, ...]:
    return ("cls", *(f"reg{i}" for i in range(config.num_register_tokens)))


def _patch_weight(vision: nn.Module) -> torch.Tensor:
    return vision.embeddings.patch_embeddings.weight.detach()


def _readout(module: nn.Module):
    def readout(tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        return module.norm(tokens)[:, 0], None

    return readout


register_hf_family(HfFamily(
    title="DINOv3", model_types=("dinov3_vit",), classes=("DINOv3ViTModel",),
    checkpoint="facebook/dinov3-vits16-pretrain-lvd1689m", tokens="CLS + registers", prefix_names=_prefix,
    patch_weight=_patch_weight,
    readout=_readout, in_kernel="a rotary position embedding",
    gives="CLS + 4 registers, rotary positions inside attention; dense maps",
))
