"""Hugging Face transformers adapter: the families described in ``models/huggingface/``, loaded with
transformers' own ``from_pretrained`` (no remote code) and wrapped as a ``VitModel``."""

from __future__ import annotations

import importlib
import json
import logging
import math
import pkgutil

import torch
import transformers
from PIL import Image
from torch import nn

from ..capture import AttentionSite, mha_pool_site
from ..hub import locate
from ..io.preprocess import PreprocessSpec
from . import huggingface
from .base import Rebuild, UnsupportedModelError, VitModel
from .huggingface.spec import FAMILIES, HfFamily

log = logging.getLogger(__name__)

_WHY_NOT = {
    "swin": "windowed attention (B·windows, heads, 49, 49) has no global attention map",
    "swinv2": "windowed attention has no global attention map",
}


def hf_families() -> dict[str, HfFamily]:
    """Every described family by model type (the modules of ``models/huggingface`` register themselves)."""
    for info in pkgutil.iter_modules(huggingface.__path__):
        importlib.import_module(f"{huggingface.__name__}.{info.name}")
    return FAMILIES


def family_of(model_type: str) -> HfFamily:
    """The family of a config's ``model_type``; ``UnsupportedModelError`` (one line) when none is described."""
    families = hf_families()
    if model_type not in families:
        why = _WHY_NOT.get(model_type, "its attention layout is not known to vitprobe")
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported ({why}); supported Hugging Face types: "
            f"{', '.join(sorted(families))}; timm ViTs via 'timm:<name>'"
        )
    return families[model_type]


def vision_config(config):
    """The image tower's config: a dual model's ``vision_config``, else the config itself."""
    return getattr(config, "vision_config", None) or config


def attention_sites(vision: nn.Module, config, in_kernel: str | None = None) -> list[AttentionSite]:
    """Every self-attention layer of the image tower in forward order: modules owning linear q and k
    projections (``q_proj``/``k_proj`` or ``query``/``key``)."""
    sites = []
    heads = config.num_attention_heads
    for sub in vision.modules():
        for q_name, k_name in (("q_proj", "k_proj"), ("query", "key")):
            query, key = getattr(sub, q_name, None), getattr(sub, k_name, None)
            if isinstance(query, nn.Linear) and isinstance(key, nn.Linear):
                head_dim = query.out_features // heads
                scale = float(getattr(sub, "scaling", getattr(sub, "scale", head_dim**-0.5)))
                sites.append(AttentionSite(query, key, heads, head_dim, scale, in_kernel=in_kernel))
    if len(sites) != config.num_hidden_layers:
        raise UnsupportedModelError(
            f"found {len(sites)} attention layers with q/k projections, config says {config.num_hidden_layers}"
        )
    return sites


def blocks(module: nn.Module, sites: list[AttentionSite]) -> list[nn.Module]:
    """The transformer layer holding each attention site: the outermost module holding only that one."""
    owner: dict[int, nn.Module] = {}
    for sub in module.modules():  # pre-order: outer modules come first
        inside = {id(m) for m in sub.modules()}
        held = [i for i, site in enumerate(sites) if id(site.query) in inside]
        if len(held) == 1 and held[0] not in owner:
            owner[held[0]] = sub
    return [owner[i] for i in range(len(sites))]


def _native_side(config) -> int:
    """The input side a config was trained at: ``image_size``, or (NaFlex) the square of its position table."""
    size = getattr(config, "image_size", None)
    if size is None:
        return math.isqrt(config.num_patches) * config.patch_size
    return size if isinstance(size, int) else size[0]


def preprocess_from_dict(proc: dict | None, config) -> PreprocessSpec:
    """The model's own image-processor settings (preprocessor_config.json) as a PreprocessSpec."""
    if not proc:
        side = _native_side(config)
        log.warning("no preprocessor_config.json: resizing to %dx%d with mean/std 0.5", side, side)
        return PreprocessSpec(mean=(0.5,) * 3, std=(0.5,) * 3, resize_hw=(side, side))
    size = proc.get("size") or {}
    shortest = size.get("shortest_edge") if proc.get("do_resize", True) else None
    resize_hw = (size["height"], size["width"]) if "height" in size and not shortest else None
    if "max_num_patches" in proc and not size:  # NaFlex: the square grid of that many patches
        side = math.isqrt(proc["max_num_patches"]) * proc.get("patch_size", config.patch_size)
        resize_hw = (side, side)
    crop = proc.get("crop_size") if proc.get("do_center_crop") else None
    return PreprocessSpec(
        mean=tuple(proc.get("image_mean", (0.5, 0.5, 0.5))),
        std=tuple(proc.get("image_std", (0.5, 0.5, 0.5))),
        shortest_edge=shortest,
        resize_hw=resize_hw,
        crop_hw=(crop["height"], crop["width"]) if crop else None,
        resample=proc.get("resample", Image.Resampling.BILINEAR),
    )


Packed = tuple[type, transformers.PretrainedConfig, dict[str, torch.Tensor]]
"""A transformers module as pickling stores it: its class, its config, every parameter and buffer by name."""


def pack(module: nn.Module) -> Packed:
    """The module as class, config and tensors: transformers hooks the modules it records outputs from with
    local functions that pickle cannot store. Shared (tied) tensors are one object under each name."""
    tensors = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(module.named_buffers(remove_duplicate=False))
    return type(module), module.config, tensors


def unpack(packed: Packed) -> nn.Module:
    """The module of ``pack``: built on the meta device (no initialisation), then given every tensor."""
    cls, config, tensors = packed
    with torch.device("meta"):
        module = cls(config)
    for name, tensor in tensors.items():
        owner, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(owner), leaf, tensor)
    return module


def wrap(module: nn.Module, name: str, preprocess: PreprocessSpec | None = None,
         source: str | None = None) -> VitModel:
    """Wrap a loaded transformers module of a described family (put in eval mode) as a VitModel;
    ``source``: the directory or hub id it came from (its tokenizer, for text prompts). Every function of
    the model runs ``module``; ``rebuild`` wraps a copy the same way."""
    family = family_of(module.config.model_type)
    module.eval()
    family.prepare(module)
    vision = family.vision(module)
    config = vision_config(module.config)
    preprocess = preprocess or preprocess_from_dict(None, config)

    def forward(pixels):
        return getattr(family.run(module, pixels), "logits", None)

    def attention_forward(pixels):
        """Eager attention for this call: logits or None, per-layer probabilities (B, heads, T, T) and
        each layer's output tokens (B, T, D), all in the autograd graph."""
        with family.eager(module):
            out = family.run(module, pixels, output_attentions=True, output_hidden_states=True)
        return getattr(out, "logits", None), list(out.attentions), list(out.hidden_states[1:])

    has_head = hasattr(module, "classifier") or hasattr(module, "cls_classifier")
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    sites = attention_sites(vision, config, family.in_kernel)
    pool_head = family.pool(module)
    return VitModel(
        name=name,
        family=f"hf-{module.config.model_type}",
        module=module,
        sites=sites,
        blocks=blocks(vision, sites),
        patch_weight=family.patch_weight(vision),
        position_grid=family.position_grid(vision),
        prefix_names=family.prefix_names(config),
        patch_size=patch,
        preprocess=preprocess,
        forward=forward,
        attention_forward=attention_forward,
        readout=family.readout(module),
        labels={int(k): v for k, v in module.config.id2label.items()} if has_head else {},
        pool=mha_pool_site(pool_head) if pool_head is not None else None,
        similarity=family.similarity(module, source) if family.similarity and source else None,
        rebuild=Rebuild(wrap, {"name": name, "preprocess": preprocess, "source": source}, pack, unpack),
    )


def _processor_dict(spec: str, local_only: bool) -> dict | None:
    path = transformers.utils.cached_file(
        spec, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False, local_files_only=local_only,
    )
    if path is None:
        return None
    with open(path) as f:
        return json.load(f)


def load_hf(spec: str, attn_implementation: str | None = None) -> VitModel:
    """Load a hub id or local directory with transformers' own from_pretrained (no remote code)."""
    local_only = locate(spec)
    config = transformers.AutoConfig.from_pretrained(spec, trust_remote_code=False, local_files_only=local_only)
    family = family_of(config.model_type)
    arch = (config.architectures or [""])[0]
    cls = getattr(transformers, arch) if arch in family.classes else transformers.AutoModel
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    module = cls.from_pretrained(spec, trust_remote_code=False, local_files_only=local_only, **kwargs)
    return wrap(module, spec, preprocess_from_dict(_processor_dict(spec, local_only), vision_config(config)), spec)
