"""ViT, DeiT (distilled too), DINO (a ViT checkpoint), DINOv2 and DINOv2 with registers."""

from __future__ import annotations

import torch
from torch import nn

from .spec import HfFamily, register_hf_family, square_grid


def _backbone(module: nn.Module) -> nn.Module:
    """The backbone of a model with or without a classification head."""
    for name in ("vit", "deit", "dinov2", "dinov2_with_registers"):
        if hasattr(module, name):
            return getattr(module, name)
    return module


def _prefix(config) -> tuple[str, ...]:
    if config.model_type == "deit":
        return ("cls", "distillation")
    if config.model_type == "dinov2_with_registers":
        return ("cls", *(f"reg{i}" for i in range(config.num_register_tokens)))
    return ("cls",)


def _patch_weight(module: nn.Module) -> torch.Tensor:
    return _backbone(module).embeddings.patch_embeddings.projection.weight.detach()


def _position_grid(module: nn.Module) -> torch.Tensor | None:
    table = getattr(_backbone(module).embeddings, "position_embeddings", None)
    n_prefix = 2 if module.config.model_type == "deit" else 1  # registers carry no position embedding
    return None if table is None else square_grid(table, n_prefix)


def _readout(module: nn.Module):
    config = module.config
    norm = _backbone(module).layernorm
    n_prefix = len(_prefix(config))

    def readout(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = norm(tokens)
        embedding = x[:, 0]
        if hasattr(module, "cls_classifier"):  # DeiT with teacher: the mean of both heads
            return embedding, (module.cls_classifier(x[:, 0]) + module.distillation_classifier(x[:, 1])) / 2
        if not hasattr(module, "classifier"):
            return embedding, None
        if config.model_type.startswith("dinov2"):  # CLS beside the mean of the patch tokens
            return embedding, module.classifier(torch.cat([x[:, 0], x[:, n_prefix:].mean(dim=1)], dim=-1))
        return embedding, module.classifier(x[:, 0])

    return readout


def _run_interpolated(module: nn.Module, pixels: torch.Tensor, **kwargs):
    return module(pixel_values=pixels, interpolate_pos_encoding=True, **kwargs)


_COMMON = dict(prefix_names=_prefix, patch_weight=_patch_weight, position_grid=_position_grid, readout=_readout)

register_hf_family(HfFamily(
    title="ViT / DINO", model_types=("vit",), classes=("ViTModel", "ViTForImageClassification"),
    checkpoint="google/vit-base-patch16-224", run=_run_interpolated,
    gives="CLS maps, rollout, gradient methods with ImageNet classes", **_COMMON,
))
register_hf_family(HfFamily(
    title="DeiT (distilled)", model_types=("deit",),
    classes=("DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
    checkpoint="facebook/deit-base-distilled-patch16-224", tokens="CLS + distillation", run=_run_interpolated,
    gives="CLS and distillation tokens; class targets", **_COMMON,
))
register_hf_family(HfFamily(
    title="DINOv2", model_types=("dinov2",), classes=("Dinov2Model", "Dinov2ForImageClassification"),
    checkpoint="facebook/dinov2-small", gives="CLS maps, dense features, embedding targets", **_COMMON,
))
register_hf_family(HfFamily(
    title="DINOv2 with registers", model_types=("dinov2_with_registers",),
    classes=("Dinov2WithRegistersModel", "Dinov2WithRegistersForImageClassification"),
    checkpoint="facebook/dinov2-with-registers-small", tokens="CLS + registers",
    gives="CLS + 4 register tokens, artifact-free maps",
    **_COMMON,
))
