"""CLIP, MetaCLIP 2, SigLIP and SigLIP 2: the image towers of vision-language models, with their
text towers for prompt targets. CLIP-like towers have a class token; SigLIP has none and pools the
patch tokens with a learned probe (its attention is the ``pool`` method's map)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from ...hub import locate
from ..openclip import explicit_attention
from .spec import Feature, HfFamily, Similarity, register_hf_family, square_grid


def _tower(module: nn.Module) -> nn.Module:
    """The image tower: a dual or vision model's ``vision_model``, or the module itself."""
    return getattr(module, "vision_model", module)


def _run_tower(module: nn.Module, pixels: torch.Tensor, **kwargs):
    return _tower(module)(pixel_values=pixels, interpolate_pos_encoding=True, **kwargs)


def _conv_weight(vision: nn.Module) -> torch.Tensor:
    return vision.embeddings.patch_embedding.weight.detach()


def _cls_position_grid(vision: nn.Module) -> torch.Tensor | None:
    return square_grid(vision.embeddings.position_embedding.weight, 1)


def _patch_position_grid(vision: nn.Module) -> torch.Tensor | None:
    return square_grid(vision.embeddings.position_embedding.weight, 0)


def _clip_readout(module: nn.Module):
    """CLS token through the tower's final norm, then the projection into the joint space (dual models)."""
    norm = _tower(module).post_layernorm
    projection = getattr(module, "visual_projection", None)

    def readout(tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        pooled = norm(tokens[:, 0])
        return (projection(pooled) if projection is not None else pooled), None

    return readout


def _siglip_readout(module: nn.Module):
    """All tokens through the final norm, then the attention-pooling head (the mean where there is none)."""
    vision = _tower(module)

    def readout(tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = vision.post_layernorm(tokens)
        return (vision.head(x) if getattr(vision, "use_head", False) else x.mean(dim=1)), None

    return readout


def _clip_feature(module: nn.Module) -> Feature:
    """LeGrad's feature (its authors' ``compute_legrad_clip``): the final norm of the mean over every token,
    the CLS token included, then the projection into the joint space (dual models)."""
    norm = _tower(module).post_layernorm
    projection = getattr(module, "visual_projection", None)

    def feature(tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        pooled = norm(tokens.mean(dim=1))
        return (projection(pooled) if projection is not None else pooled), None

    return feature


def _siglip_feature(module: nn.Module) -> Feature | None:
    """LeGrad's SigLIP feature (its authors' ``compute_legrad_siglip``): the attention-pooling head applied to
    the layer's tokens without the tower's final norm, with the head's probabilities (B, heads, 1, T) in the
    graph (LeGrad differentiates those); None without a head (mean pooling)."""
    vision = _tower(module)
    if not getattr(vision, "use_head", False):
        return None
    head = vision.head

    def feature(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probe = head.probe.expand(len(tokens), -1, -1)
        pooled, probs = explicit_attention(head.attention, probe, tokens, tokens)
        pooled = pooled + head.mlp(head.layernorm(pooled))
        return pooled[:, 0], probs

    return feature


def _pool(module: nn.Module) -> nn.MultiheadAttention | None:
    vision = _tower(module)
    return vision.head.attention if getattr(vision, "use_head", False) else None


def _similarity(module: nn.Module, source: str) -> Similarity | None:
    """The model's own image–text logits: scale · cos(image, text) (+ SigLIP's bias), text prompts
    tokenised by the checkpoint's tokenizer (SigLIP pads to its full length, as it was trained)."""
    if not hasattr(module, "text_model"):
        return None
    text_config = module.config.text_config
    padding = ({"padding": "max_length", "max_length": text_config.max_position_embeddings}
               if module.config.model_type.startswith("siglip") else {"padding": True})
    cache: dict[tuple[str, ...], torch.Tensor] = {}
    loaded: list = []

    def tokenizer():
        """The checkpoint's own tokenizer, loaded on first use (a vision-only directory may lack one)."""
        if not loaded:
            try:
                loaded.append(transformers.AutoTokenizer.from_pretrained(source, local_files_only=locate(source)))
            except (OSError, ValueError) as err:
                raise ValueError(f"{source}: no tokenizer to encode text prompts with ({str(err).splitlines()[0]})"
                                 ) from None
        return loaded[0]

    def text_embeddings(prompts: tuple[str, ...]) -> torch.Tensor:
        if prompts not in cache:
            tokens = tokenizer()(list(prompts), truncation=True, return_tensors="pt", **padding)
            device = next(module.parameters()).device
            with torch.no_grad():
                out = module.get_text_features(**{k: v.to(device) for k, v in tokens.items()})
            cache[prompts] = F.normalize(getattr(out, "pooler_output", out).float(), dim=-1)
        return cache[prompts]

    def similarity(embeddings: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        text = text_embeddings(tuple(prompts)).to(embeddings.device)
        logits = F.normalize(embeddings.float(), dim=-1) @ text.T * module.logit_scale.float().exp()
        bias = getattr(module, "logit_bias", None)
        return logits + bias.float() if bias is not None else logits

    return similarity


def _patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, gh·gw, P·P·3): NaFlex patches in row-major grid order, each (P, P, C)."""
    b, c, h, w = pixels.shape
    x = pixels.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def _run_naflex(module: nn.Module, pixels: torch.Tensor, **kwargs):
    """SigLIP 2's NaFlex input for one size of image: its patches, all valid, and its (gh, gw) grid."""
    vision = _tower(module)
    patch = vision.config.patch_size
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    patches = _patchify(pixels, patch)
    shapes = torch.tensor([grid] * len(pixels), device=pixels.device)
    mask = torch.ones(patches.shape[:2], dtype=torch.long, device=pixels.device)
    return vision(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes, **kwargs)


def _linear_patch_weight(vision: nn.Module) -> torch.Tensor:
    """SigLIP 2's linear patch embedding (D, P·P·3) as the conv-shaped filters (D, 3, P, P)."""
    weight = vision.embeddings.patch_embedding.weight.detach()
    patch = vision.config.patch_size
    return weight.view(weight.shape[0], patch, patch, -1).permute(0, 3, 1, 2)


def _cls(_config) -> tuple[str, ...]:
    return ("cls",)


def _none(_config) -> tuple[str, ...]:
    return ()


_CLIP_LIKE = dict(prefix_names=_cls, vision=_tower, run=_run_tower, patch_weight=_conv_weight,
                  position_grid=_cls_position_grid, readout=_clip_readout, similarity=_similarity,
                  feature=_clip_feature)
_SIGLIP_LIKE = dict(tokens="none", prefix_names=_none, vision=_tower, position_grid=_patch_position_grid,
                    readout=_siglip_readout, pool=_pool, similarity=_similarity, feature=_siglip_feature)

register_hf_family(HfFamily(
    title="CLIP", model_types=("clip", "clip_vision_model"),
    classes=("CLIPModel", "CLIPVisionModel", "CLIPVisionModelWithProjection"),
    checkpoint="openai/clip-vit-base-patch16", gives="CLS maps, rollout; gradient methods for text prompts",
    **_CLIP_LIKE,
))
register_hf_family(HfFamily(
    title="MetaCLIP 2", model_types=("metaclip_2", "metaclip_2_vision_model"),
    classes=("MetaClip2Model", "MetaClip2VisionModel", "MetaClip2VisionModelWithProjection"),
    checkpoint="facebook/metaclip-2-worldwide-huge-quickgelu", gives="as CLIP, multilingual prompts", **_CLIP_LIKE,
))
register_hf_family(HfFamily(
    title="SigLIP", model_types=("siglip", "siglip_vision_model"), classes=("SiglipModel", "SiglipVisionModel"),
    checkpoint="google/siglip-base-patch16-224", run=_run_tower, patch_weight=_conv_weight,
    gives="no CLS: the pool map, query-patch maps; text prompts", **_SIGLIP_LIKE,
))
register_hf_family(HfFamily(
    title="SigLIP 2", model_types=("siglip2", "siglip2_vision_model"), classes=("Siglip2Model", "Siglip2VisionModel"),
    checkpoint="google/siglip2-base-patch16-naflex", run=_run_naflex, patch_weight=_linear_patch_weight,
    gives="as SigLIP; NaFlex input at any grid (size=(H, W))", **_SIGLIP_LIKE,
))
