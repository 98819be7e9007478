"""Tiny random ViT-family models saved with save_pretrained and loaded back with the real loader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import transformers

from vitprobe.cache import cache_dir

PATCH = 8
IMAGE = 32

if not torch.cuda.is_available():  # the Triton kernel's tests run on CPU tensors through its interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
# One build of the C++ kernel for the whole run and its subprocesses, whatever VITPROBE_CACHE a test sets.
os.environ.setdefault("VITPROBE_KERNEL_CACHE", str(cache_dir() / "kernels"))

TINY = {
    "vit": (transformers.ViTConfig, transformers.ViTForImageClassification, {}),
    "deit": (transformers.DeiTConfig, transformers.DeiTForImageClassificationWithTeacher, {}),
    "dinov2": (transformers.Dinov2Config, transformers.Dinov2Model, {}),
    "dinov2_with_registers": (
        transformers.Dinov2WithRegistersConfig, transformers.Dinov2WithRegistersModel, {"num_register_tokens": 4}
    ),
}
PREFIX_COUNT = {"vit": 1, "deit": 2, "dinov2": 1, "dinov2_with_registers": 5}


def make_tiny(kind: str, directory: Path, seed: int = 0, processor: dict | None = None) -> Path:
    """Write a tiny random model of ``kind`` (2 layers, 4 heads, patch 8, 32 px) to ``directory``."""
    config_cls, model_cls, extra = TINY[kind]
    config = config_cls(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        image_size=IMAGE, patch_size=PATCH, num_labels=5, initializer_range=0.3, **extra,
    )
    torch.manual_seed(seed)
    model_cls(config).save_pretrained(directory)
    proc = processor or {
        "do_resize": True, "size": {"height": IMAGE, "width": IMAGE}, "resample": 2,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(proc))
    return directory


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {kind: make_tiny(kind, root / kind) for kind in TINY}


@pytest.fixture(params=sorted(TINY))
def tiny_kind(request) -> str:
    return request.param
