"""OpenCLIP adapter: the image towers of ``open_clip`` models (an optional extra) and their text towers.

OpenCLIP's ViT blocks run ``nn.MultiheadAttention``; q and k are recomputed from each block's packed
in-projection (the same weights, float32), so the model keeps its own kernel. The text tower scores
prompts as the model does (logit scale × cosine, plus the bias of SigLIP-style models).

Specs: ``openclip:<architecture>:<file.safetensors>`` (a local state dict, never a pickle) or
``openclip:<architecture>:random``. Towers from timm (``TimmModel``) are refused in one line: load the
timm model itself with ``timm:<name>``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..capture import AttentionSite
from ..extras import missing_message
from ..io.preprocess import PreprocessSpec
from .base import Rebuild, UnsupportedModelError, VitModel
from .files import load_state

log = logging.getLogger(__name__)

MISSING_HINT = (missing_message("OpenCLIP models", "open_clip", "openclip")
                + " (if open_clip is installed, its torchvision import failed: where no working torchvision exists, "
                "install open_clip_torch with --no-deps)")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def _open_clip():
    try:
        import open_clip
    except ImportError as err:
        raise ImportError(f"{MISSING_HINT} ({err})") from None
    return open_clip


def _preprocess(visual: nn.Module) -> PreprocessSpec:
    """The tower's ``preprocess_cfg`` (set by ``create_model``): short side to the input size, centre crop."""
    cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    size = cfg.get("size", visual.image_size)
    hw = (size, size) if isinstance(size, int) else tuple(size)
    resample = _RESAMPLE.get(cfg.get("interpolation", "bicubic"), Image.Resampling.BICUBIC)
    mean, std = tuple(cfg.get("mean", OPENAI_MEAN)), tuple(cfg.get("std", OPENAI_STD))
    if cfg.get("resize_mode", "shortest") == "squash" or hw[0] != hw[1]:
        return PreprocessSpec(mean=mean, std=std, resize_hw=hw, resample=resample)
    return PreprocessSpec(mean=mean, std=std, shortest_edge=hw[0], crop_hw=hw, resample=resample)


def wrap(model: nn.Module, name: str, architecture: str | None = None) -> VitModel:
    """Wrap an open_clip model (``CLIP``, ``CustomTextCLIP``; eval mode) or its ViT image tower as a VitModel;
    ``architecture``: its open_clip name, whose tokenizer encodes text prompts."""
    open_clip = _open_clip()
    visual = getattr(model, "visual", model)
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise UnsupportedModelError(f"{name}: the image tower is {type(visual).__name__}, not open_clip's "
                                    "VisionTransformer; load a timm tower with 'timm:<name>'")
    model.eval()
    blocks = list(visual.transformer.resblocks)
    mhas = [block.attn for block in blocks]
    if not all(isinstance(m, nn.MultiheadAttention) for m in mhas):
        raise UnsupportedModelError(f"{name}: its blocks do not use nn.MultiheadAttention")
    heads = mhas[0].num_heads
    head_dim = mhas[0].embed_dim // heads
    sites = [AttentionSite(m, m, heads, head_dim, head_dim**-0.5, packed=True) for m in mhas]
    grid = tuple(visual.grid_size)
    patch = visual.patch_size[0] if isinstance(visual.patch_size, tuple) else visual.patch_size

    def check_grid(pixels: torch.Tensor) -> None:
        got = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
        if got != grid:
            raise ValueError(f"{name} runs at its own {grid[0]}x{grid[1]} patch grid "
                             f"({grid[0] * patch}x{grid[1] * patch} px), got {got[0]}x{got[1]}")

    def forward(pixels: torch.Tensor) -> None:
        check_grid(pixels)
        visual(pixels)
        return None

    def attention_forward(pixels: torch.Tensor):
        """Each block's per-head probabilities (B, heads, T, T) and output tokens (B, T, D) in the graph."""
        check_grid(pixels)
        attentions: list[torch.Tensor] = []
        tokens: list[torch.Tensor] = []

        def with_weights(mha: nn.MultiheadAttention):
            def forward(query, key, value, need_weights=False, attn_mask=None, **_kwargs):
                out, weights = explicit_attention(mha, query, key, value, attn_mask)
                attentions.append(weights)
                return out, None

            return forward

        handles = [block.register_forward_hook(lambda _m, _i, out: tokens.append(out)) for block in blocks]
        for mha in mhas:
            mha.forward = with_weights(mha)
        try:
            visual(pixels)
        finally:
            for mha in mhas:
                del mha.forward
            for handle in handles:
                handle.remove()
        if not visual.transformer.batch_first:
            tokens = [t.transpose(0, 1) for t in tokens]
        return None, attentions, tokens

    def readout(layer_tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        pooled, _ = visual._pool(layer_tokens)
        return (pooled @ visual.proj if visual.proj is not None else pooled), None

    def feature(layer_tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        """LeGrad's feature (its authors' ``compute_legrad_clip``): ln_post of the mean over every token, the
        CLS token included, then the projection."""
        pooled = visual.ln_post(layer_tokens.mean(dim=1))
        return (pooled @ visual.proj if visual.proj is not None else pooled), None

    table = visual.positional_embedding.detach()[1:]
    return VitModel(
        name=name,
        family="openclip",
        module=model,
        sites=sites,
        blocks=blocks,
        patch_weight=visual.conv1.weight.detach(),
        position_grid=table.reshape(*grid, -1),
        prefix_names=("cls",),
        patch_size=patch,
        preprocess=_preprocess(visual),
        forward=forward,
        attention_forward=attention_forward,
        readout=readout,
        similarity=_similarity(model, architecture) if hasattr(model, "encode_text") and architecture else None,
        feature=feature if visual.attn_pool is None else None,  # CoCa's attention pool: the readout
        rebuild=Rebuild(wrap, {"name": name, "architecture": architecture}),
    )


def explicit_attention(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.MultiheadAttention``'s own computation written out (packed in-projection, no dropout), so the
    probabilities (B, heads, T, T) are a tensor of the autograd graph: (output like the module's, probs)."""
    if not mha.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    q, k, v = (F.linear(x, w, b) for x, w, b in zip(
        (query, key, value), mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3), strict=True))
    b, t, d = q.shape
    heads = mha.num_heads
    q, k, v = (x.view(b, x.shape[1], heads, d // heads).transpose(1, 2) for x in (q, k, v))
    scores = q @ k.transpose(-1, -2) * (d // heads) ** -0.5
    if attn_mask is not None:
        scores = scores + attn_mask
    probs = scores.softmax(dim=-1)
    out = mha.out_proj((probs @ v).transpose(1, 2).reshape(b, t, d))
    return (out if mha.batch_first else out.transpose(0, 1)), probs


def _similarity(model: nn.Module, architecture: str):
    """The model's image–text logits for prompts, with its own tokenizer (loaded on first use)."""
    loaded: list = []
    cache: dict[tuple[str, ...], torch.Tensor] = {}

    def similarity(embeddings: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        key = tuple(prompts)
        if key not in cache:
            if not loaded:
                loaded.append(_open_clip().get_tokenizer(architecture))
            with torch.no_grad():
                text = model.encode_text(loaded[0](list(prompts)).to(embeddings.device))
            cache[key] = F.normalize(text.float(), dim=-1)
        logits = F.normalize(embeddings.float(), dim=-1) @ cache[key].T * model.logit_scale.float().exp()
        bias = getattr(model, "logit_bias", None)
        return logits + bias.float() if bias is not None else logits

    return similarity


def load_openclip(spec: str) -> VitModel:
    """``<architecture>:<file.safetensors>`` or ``<architecture>:random``, built by ``open_clip.create_model``."""
    open_clip = _open_clip()
    architecture, _, source = spec.partition(":")
    if architecture not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {architecture!r} (see open_clip.list_models())")
    if not source:
        raise ValueError(f"give the weights: 'openclip:{architecture}:<file.safetensors>' or "
                         f"'openclip:{architecture}:random' (no model hub is used)")
    model = open_clip.create_model(architecture, pretrained=None)
    if source == "random":
        log.warning("%s has random weights: its maps show an untrained model", architecture)
    else:
        load_state(model, Path(source))
    return wrap(model, f"openclip:{spec}", architecture)
