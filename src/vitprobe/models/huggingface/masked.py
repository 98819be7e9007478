"""Masked-image pre-training: MAE (run unmasked: every patch, in grid order) and I-JEPA (no prefix
token at all: query-patch maps, distances, entropies; CLS methods say why not)."""

from __future__ import annotations

import torch
from torch import nn

from .spec import HfFamily, register_hf_family, square_grid


def _backbone(module: nn.Module) -> nn.Module:
    for name in ("vit", "ijepa"):
        if hasattr(module, name):
            return getattr(module, name)
    return module


def _patch_weight(vision: nn.Module) -> torch.Tensor:
    return _backbone(vision).embeddings.patch_embeddings.projection.weight.detach()


def _mae_unmasked(module: nn.Module) -> None:
    """MAE drops a random ``mask_ratio`` of the patches in every forward; capture keeps them all."""
    module.config.mask_ratio = 0.0


def _run_mae(module: nn.Module, pixels: torch.Tensor, **kwargs):
    """Every patch, in grid order: MAE keeps the patches whose noise sorts first, so rising noise keeps
    them as they are."""
    config = module.config
    n = (pixels.shape[-2] // config.patch_size) * (pixels.shape[-1] // config.patch_size)
    noise = torch.arange(n, device=pixels.device, dtype=torch.float32).expand(len(pixels), n)
    return _backbone(module)(pixel_values=pixels, noise=noise, interpolate_pos_encoding=True, **kwargs)


def _mae_readout(module: nn.Module):
    norm = _backbone(module).layernorm

    def readout(tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        return norm(tokens)[:, 0], None

    return readout


def _mae_grid(vision: nn.Module) -> torch.Tensor | None:
    return square_grid(_backbone(vision).embeddings.position_embeddings, 1)


def _ijepa_readout(module: nn.Module):
    """The mean of the normed tokens (I-JEPA has no CLS), and the head on it where there is one."""
    norm = _backbone(module).layernorm
    classifier = getattr(module, "classifier", None)

    def readout(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        pooled = norm(tokens).mean(dim=1)
        return pooled, (classifier(pooled) if classifier is not None else None)

    return readout


def _ijepa_grid(vision: nn.Module) -> torch.Tensor | None:
    return square_grid(_backbone(vision).embeddings.position_embeddings, 0)


def _run_ijepa(module: nn.Module, pixels: torch.Tensor, **kwargs):
    return module(pixel_values=pixels, interpolate_pos_encoding=True, **kwargs)


register_hf_family(HfFamily(
    title="MAE", model_types=("vit_mae",), classes=("ViTMAEModel",), checkpoint="facebook/vit-mae-base",
    prefix_names=lambda _config: ("cls",), patch_weight=_patch_weight, position_grid=_mae_grid,
    readout=_mae_readout, run=_run_mae, prepare=_mae_unmasked,
    gives="CLS maps of the unmasked encoder (all patches, deterministic)",
))
register_hf_family(HfFamily(
    title="I-JEPA", model_types=("ijepa",), classes=("IJepaModel", "IJepaForImageClassification"),
    checkpoint="facebook/ijepa_vith14_1k", tokens="none", prefix_names=lambda _config: (), patch_weight=_patch_weight,
    position_grid=_ijepa_grid, readout=_ijepa_readout, run=_run_ijepa,
    gives="no prefix token: query-patch maps, distances, entropies, artifacts",
))
