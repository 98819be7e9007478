"""BEiT and data2vec-vision: a relative position bias (per layer or shared) is added to the attention
logits inside the attention call, so q, k and that bias are read from the model's SDPA call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .spec import HfFamily, register_hf_family, square_grid


def _backbone(module: nn.Module) -> nn.Module:
    for name in ("beit", "data2vec_vision"):
        if hasattr(module, name):
            return getattr(module, name)
    return module


def _cls(_config) -> tuple[str, ...]:
    return ("cls",)


def _patch_weight(vision: nn.Module) -> torch.Tensor:
    return _backbone(vision).embeddings.patch_embeddings.projection.weight.detach()


def _position_grid(vision: nn.Module) -> torch.Tensor | None:
    table = _backbone(vision).embeddings.position_embeddings  # None unless absolute positions are used
    return None if table is None else square_grid(table, 1)


def _readout(module: nn.Module):
    """The model's final norm, then its pooler (mean of the patch tokens, normed; or CLS) and head."""
    backbone = _backbone(module)
    classifier = getattr(module, "classifier", None)

    def readout(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = backbone.layernorm(tokens)
        pooled = backbone.pooler(x) if backbone.pooler is not None else x[:, 0]
        return pooled, (classifier(pooled) if classifier is not None else None)

    return readout


def _run(module: nn.Module, pixels: torch.Tensor, **kwargs):
    return module(pixel_values=pixels, interpolate_pos_encoding=True, **kwargs)


@contextmanager
def _data2vec_eager(module: nn.Module) -> Iterator[None]:
    """data2vec-vision picks its attention class when built (the SDPA one subclasses the eager one with
    the same parameters), so the eager computation is had by switching each module's class back."""
    swapped = [(sub, type(sub)) for sub in module.modules() if type(sub).__name__.endswith("SdpaSelfAttention")]
    for sub, cls in swapped:
        sub.__class__ = cls.__mro__[1]
    try:
        yield
    finally:
        for sub, cls in swapped:
            sub.__class__ = cls


_COMMON = dict(prefix_names=_cls, patch_weight=_patch_weight, position_grid=_position_grid, readout=_readout,
               run=_run, in_kernel="a relative position bias")

register_hf_family(HfFamily(
    title="BEiT", model_types=("beit",), classes=("BeitModel", "BeitForImageClassification"),
    checkpoint="microsoft/beit-base-patch16-224", gives="CLS maps with the relative position bias included",
    **_COMMON,
))
register_hf_family(HfFamily(
    title="data2vec-vision", model_types=("data2vec-vision",),
    classes=("Data2VecVisionModel", "Data2VecVisionForImageClassification"),
    checkpoint="facebook/data2vec-vision-base-ft1k", gives="as BEiT", eager=_data2vec_eager, **_COMMON,
))
