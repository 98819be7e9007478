"""Hugging Face transformers adapter: ViT, DeiT (incl. distilled), DINO, DINOv2, DINOv2 with registers."""

from __future__ import annotations

import json
import logging

import torch
import transformers
from PIL import Image
from torch import nn

from ..capture import AttentionSite
from ..hub import locate
from ..io.preprocess import PreprocessSpec
from .base import UnsupportedModelError, VitModel

log = logging.getLogger(__name__)

SUPPORTED_TYPES = ("vit", "deit", "dinov2", "dinov2_with_registers")
_NEEDS_INTERPOLATE_FLAG = ("vit", "deit")
_MODEL_CLASSES = (
    "ViTModel", "ViTForImageClassification",
    "DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher",
    "Dinov2Model", "Dinov2ForImageClassification",
    "Dinov2WithRegistersModel", "Dinov2WithRegistersForImageClassification",
)
_WHY_NOT = {
    "swin": "windowed attention (B·windows, heads, 49, 49) has no global attention map",
    "swinv2": "windowed attention has no global attention map",
    "siglip_vision_model": "no CLS token (attention-pooled), so a CLS map is undefined",
    "siglip": "no CLS token (attention-pooled), so a CLS map is undefined",
}


def unsupported(model_type: str) -> UnsupportedModelError:
    why = _WHY_NOT.get(model_type, "its attention layout is not known to vitprobe")
    return UnsupportedModelError(
        f"model type {model_type!r} is not supported ({why}); supported Hugging Face types: "
        f"{', '.join(SUPPORTED_TYPES)}; timm ViTs via 'timm:<name>'"
    )


def prefix_names(config) -> tuple[str, ...]:
    """Tokens before the patch grid, read from the config's model type."""
    if config.model_type == "deit":
        return ("cls", "distillation")
    if config.model_type == "dinov2_with_registers":
        return ("cls", *(f"reg{i}" for i in range(config.num_register_tokens)))
    return ("cls",)


def attention_sites(module: nn.Module, config) -> list[AttentionSite]:
    """Every self-attention layer in forward order: modules that own q_proj and k_proj."""
    sites = []
    for sub in module.modules():
        if isinstance(getattr(sub, "q_proj", None), nn.Linear) and isinstance(getattr(sub, "k_proj", None), nn.Linear):
            heads = config.num_attention_heads
            head_dim = sub.q_proj.out_features // heads
            sites.append(AttentionSite(sub.q_proj, sub.k_proj, heads, head_dim, float(sub.scaling)))
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


def position_grid(module: nn.Module, config) -> torch.Tensor | None:
    """Learned position table of the patch tokens at its native grid (gh, gw, D)."""
    table = getattr(getattr(_base(module), "embeddings", None), "position_embeddings", None)
    if table is None:
        return None
    n_prefix = 2 if config.model_type == "deit" else 1  # registers carry no position embedding
    patches = table.detach()[0, n_prefix:]
    side = int(round(patches.shape[0] ** 0.5))
    return patches.reshape(side, side, -1)


def _base(module: nn.Module) -> nn.Module:
    """The backbone of a model with or without a classification head."""
    for name in ("vit", "deit", "dinov2", "dinov2_with_registers"):
        if hasattr(module, name):
            return getattr(module, name)
    return module


def preprocess_from_dict(proc: dict | None, config) -> PreprocessSpec:
    """The model's own image-processor settings (preprocessor_config.json) as a PreprocessSpec."""
    if not proc:
        side = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        log.warning("no preprocessor_config.json: resizing to %dx%d with mean/std 0.5", side, side)
        return PreprocessSpec(mean=(0.5,) * 3, std=(0.5,) * 3, resize_hw=(side, side))
    size = proc.get("size") or {}
    shortest = size.get("shortest_edge") if proc.get("do_resize", True) else None
    resize_hw = (size["height"], size["width"]) if "height" in size and not shortest else None
    crop = proc.get("crop_size") if proc.get("do_center_crop") else None
    return PreprocessSpec(
        mean=tuple(proc.get("image_mean", (0.5, 0.5, 0.5))),
        std=tuple(proc.get("image_std", (0.5, 0.5, 0.5))),
        shortest_edge=shortest,
        resize_hw=resize_hw,
        crop_hw=(crop["height"], crop["width"]) if crop else None,
        resample=proc.get("resample", Image.Resampling.BILINEAR),
    )


def wrap(module: nn.Module, name: str, preprocess: PreprocessSpec | None = None) -> VitModel:
    """Wrap a loaded transformers ViT-family module (eval mode) as a VitModel."""
    config = module.config
    if config.model_type not in SUPPORTED_TYPES:
        raise unsupported(config.model_type)
    module.eval()
    flag = {"interpolate_pos_encoding": True} if config.model_type in _NEEDS_INTERPOLATE_FLAG else {}

    def forward(pixels):
        out = module(pixel_values=pixels, **flag)
        return getattr(out, "logits", None)

    def attention_forward(pixels):
        """Eager attention for this call: logits or None, per-layer probabilities (B, heads, T, T) and
        each layer's output tokens (B, T, D), all in the autograd graph."""
        previous = module.config._attn_implementation
        module.set_attn_implementation("eager")
        try:
            out = module(pixel_values=pixels, output_attentions=True, output_hidden_states=True, **flag)
        finally:
            module.set_attn_implementation(previous)
        return getattr(out, "logits", None), list(out.attentions), list(out.hidden_states[1:])

    has_head = hasattr(module, "classifier") or hasattr(module, "cls_classifier")
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    sites = attention_sites(module, config)
    return VitModel(
        name=name,
        family=f"hf-{config.model_type}",
        module=module,
        sites=sites,
        blocks=blocks(module, sites),
        patch_weight=_base(module).embeddings.patch_embeddings.projection.weight.detach(),
        position_grid=position_grid(module, config),
        prefix_names=prefix_names(config),
        patch_size=patch,
        preprocess=preprocess or preprocess_from_dict(None, config),
        forward=forward,
        attention_forward=attention_forward,
        readout=_readout(module, config),
        labels={int(k): v for k, v in config.id2label.items()} if has_head else {},
    )


def _readout(module: nn.Module, config):
    """tokens (B, T, D) of any layer -> (pooled embedding (B, D), logits or None) through the model's final
    layer norm and its own pooling and head, as its forward does them for the last layer."""
    norm = _base(module).layernorm
    n_prefix = len(prefix_names(config))

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
    if config.model_type not in SUPPORTED_TYPES:
        raise unsupported(config.model_type)
    arch = (config.architectures or [""])[0]
    cls = getattr(transformers, arch) if arch in _MODEL_CLASSES else transformers.AutoModel
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    module = cls.from_pretrained(spec, trust_remote_code=False, local_files_only=local_only, **kwargs)
    return wrap(module, spec, preprocess_from_dict(_processor_dict(spec, local_only), config))
