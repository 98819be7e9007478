"""timm adapter: ViT (incl. DINO, AugReg, DINOv2, registers), DeiT (incl. distilled) and EVA-02 (RoPE).

Attention is captured while timm keeps its fused kernel: each layer's ``q_norm`` and ``k_norm``
(identities unless the model normalises q and k) output q and k split per head (B, heads, T, d),
and models with rotary position embeddings get the same rotation applied to q and k before the
softmax. Preprocessing is read from the model's ``pretrained_cfg`` without ``timm.data``.

Specs: ``timm:<name>`` loads timm's pretrained weights (hub or local cache),
``timm:<name>:random`` builds the model with random weights, ``timm:<name>:<file.safetensors>``
loads a local state dict. Swin and other windowed or hybrid models are rejected.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ..capture import AttentionSite, CaptureError, PoolSite, query_row_probs
from ..extras import missing_message
from ..io.preprocess import PreprocessSpec
from .base import Rebuild, UnsupportedModelError, VitModel
from .files import load_state

log = logging.getLogger(__name__)

MISSING_HINT = (missing_message("timm models", "timm", "timm")
                + " (if timm is installed, its torchvision import failed: where no working torchvision exists, "
                "install timm with --no-deps)")
SUPPORTED_MODULES = ("vision_transformer", "deit", "eva")
ATTENTION_CLASSES = ("Attention", "EvaAttention", "AttentionRope")  # softmax(q·kᵀ·scale), q/k via q_norm/k_norm
_WHY_NOT = {
    "swin_transformer": "windowed attention (B·windows, heads, 49, 49) has no global attention map",
    "swin_transformer_v2": "windowed attention has no global attention map",
    "vision_transformer_hybrid": "a convolutional stem makes the patch grid differ from the patch size",
}
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _timm():
    try:
        import timm
    except ImportError as err:
        raise ImportError(f"{MISSING_HINT} ({err})") from None
    return timm


def unsupported(name: str, module: str) -> UnsupportedModelError:
    why = _WHY_NOT.get(module, f"the attention of timm module {module!r} is not one vitprobe can recompute")
    return UnsupportedModelError(
        f"timm model {name!r} is not supported ({why}); supported: vit_* (incl. DINO, AugReg, DINOv2, "
        f"registers), deit_* (incl. distilled), eva02_*"
    )


def prefix_names(module: nn.Module) -> tuple[str, ...]:
    """Tokens before the patch grid in timm's order: CLS, then registers, or CLS then distillation."""
    names: list[str] = []
    if getattr(module, "cls_token", None) is not None:
        names.append("cls")
    if getattr(module, "dist_token", None) is not None:
        names.append("distillation")
    if getattr(module, "reg_token", None) is not None:
        names += [f"reg{i}" for i in range(module.reg_token.shape[1])]
    if len(names) != module.num_prefix_tokens:
        raise UnsupportedModelError(
            f"{type(module).__name__} has {module.num_prefix_tokens} prefix tokens, vitprobe identified {names}"
        )
    return tuple(names)


class _RopeTap:
    """The rotary embedding a timm attention module receives in its forward, kept for its q/k transform."""

    def __init__(self, attn: nn.Module) -> None:
        self.attn = attn
        self.rope: torch.Tensor | None = None

    def pre_hook(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.rope = kwargs.get("rope", args[1] if len(args) > 1 else None)

    def transform(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, heads, T, d), k (B, kv_heads, T, d) as they enter the softmax: rotated patch tokens
        (prefix tokens are not rotated), k heads repeated for grouped-query attention."""
        from timm.layers import apply_rot_embed_cat

        if self.rope is not None:
            n = self.attn.num_prefix_tokens
            half = getattr(self.attn, "rotate_half", False)
            q = torch.cat([q[:, :, :n], apply_rot_embed_cat(q[:, :, n:], self.rope, half=half)], dim=2)
            k = torch.cat([k[:, :, :n], apply_rot_embed_cat(k[:, :, n:], self.rope, half=half)], dim=2)
        if k.shape[1] != q.shape[1]:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        return q, k


def _check_attention(block: nn.Module, layer: int) -> nn.Module:
    """The block's attention, if it is one of timm's softmax(q·kᵀ·scale) modules vitprobe recomputes."""
    attn = getattr(block, "attn", None)
    kind = type(attn)
    if kind.__name__ not in ATTENTION_CLASSES or not kind.__module__.startswith("timm."):
        raise UnsupportedModelError(
            f"layer {layer}: timm attention {kind.__name__} is not one vitprobe can recompute from q and k "
            f"(supported: {', '.join(ATTENTION_CLASSES)})"
        )
    return attn


def attention_sites(module: nn.Module) -> tuple[list[AttentionSite], list[_RopeTap]]:
    """One site per block: q and k from ``q_norm`` / ``k_norm``; RoPE models also get a tap per layer."""
    sites, taps = [], []
    for layer, block in enumerate(module.blocks):
        attn = _check_attention(block, layer)
        transform = None
        if "rope" in inspect.signature(attn.forward).parameters:
            tap = _RopeTap(attn)
            taps.append(tap)
            transform = tap.transform
        site = AttentionSite(attn.q_norm, attn.k_norm, attn.num_heads, attn.head_dim, float(attn.scale), transform)
        sites.append(site)
    return sites, taps


def preprocess_from_cfg(module: nn.Module) -> PreprocessSpec:
    """timm's evaluation transform from ``pretrained_cfg``: resize to input size / crop_pct, centre crop.

    The input size is the model's own ``patch_embed.img_size`` when it differs from the config (a
    model built with ``img_size=...``). ``crop_mode`` "center" with a square input resizes the
    short side; "squash" resizes both sides; "border" (pad to keep the whole image) and non-square
    "center" are approximated by "squash".
    """
    cfg = dict(getattr(module, "pretrained_cfg", None) or {})
    size = tuple(cfg.get("input_size", (3, 224, 224))[-2:])
    own = getattr(getattr(module, "patch_embed", None), "img_size", None)
    if own is not None and tuple(own) != size:
        size = tuple(own)
    crop_pct = cfg.get("crop_pct") or 0.875
    scaled = tuple(math.floor(s / crop_pct) for s in size)
    mode = cfg.get("crop_mode") or "center"
    interpolation = cfg.get("interpolation") or "bicubic"
    resample = _RESAMPLE.get(interpolation, Image.Resampling.BICUBIC)
    common = {
        "mean": tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        "crop_hw": size,
        "resample": resample,
    }
    if mode == "center" and size[0] == size[1]:
        return PreprocessSpec(shortest_edge=scaled[0], resize_hw=None, **common)
    if mode != "squash":
        log.warning("timm crop_mode %r with input %dx%d is approximated by 'squash'", mode, *size)
    return PreprocessSpec(shortest_edge=None, resize_hw=scaled, **common)


def labels(module: nn.Module) -> dict[int, str]:
    """Class names of the head: the config's own, or ImageNet's (timm ships them) for ImageNet-sized heads."""
    n = getattr(module, "num_classes", 0)
    if not n:
        return {}
    cfg = dict(getattr(module, "pretrained_cfg", None) or {})
    names = cfg.get("label_names")
    if names and len(names) == n:
        descriptions = cfg.get("label_descriptions") or {}
        return {i: descriptions.get(name, name) for i, name in enumerate(names)}
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(module)
    if subset is None:
        return {}
    info = ImageNetInfo(subset)
    return {i: info.index_to_description(i) for i in range(n)}


def position_grid(module: nn.Module) -> torch.Tensor | None:
    """Learned position table of the patch tokens at the native grid (gh, gw, D); None without one."""
    table = getattr(module, "pos_embed", None)
    if table is None:
        return None
    gh, gw = module.patch_embed.grid_size
    patches = table.detach()[0, table.shape[1] - gh * gw :]
    return patches.reshape(gh, gw, -1)


def _attention_forward(module: nn.Module, head: bool) -> Callable:
    """Run with timm's non-fused attention and return (logits or None, per-layer probabilities
    (B, heads, T, T) read from each layer's ``attn_drop`` (identity in eval), each block's output tokens),
    all in the autograd graph."""

    def run(pixels: torch.Tensor) -> tuple[torch.Tensor | None, list[torch.Tensor], list[torch.Tensor]]:
        attns = [block.attn for block in module.blocks]
        fused = [attn.fused_attn for attn in attns]
        probs: dict[int, torch.Tensor] = {}
        tokens: dict[int, torch.Tensor] = {}

        def keep(store: dict, layer: int):
            def hook(_m: nn.Module, _inputs, output: torch.Tensor) -> None:
                store[layer] = output

            return hook

        handles = [attn.attn_drop.register_forward_hook(keep(probs, i)) for i, attn in enumerate(attns)]
        handles += [block.register_forward_hook(keep(tokens, i)) for i, block in enumerate(module.blocks)]
        try:
            for attn in attns:
                attn.fused_attn = False
            out = module(pixels)
        finally:
            for attn, was in zip(attns, fused, strict=True):
                attn.fused_attn = was
            for handle in handles:
                handle.remove()
        if len(probs) != len(attns):
            raise CaptureError(f"non-fused timm forward gave {len(probs)} attention maps for {len(attns)} layers")
        return (out if head else None), [probs[i] for i in range(len(attns))], [tokens[i] for i in range(len(attns))]

    return run


def _readout(module: nn.Module, head: bool) -> Callable:
    """tokens (B, T, D) of any block -> (pooled embedding (B, D), logits or None) through timm's own final
    norm, pooling and head (``forward_head``), as its forward does them for the last block."""

    def readout(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = module.norm(tokens)
        return module.forward_head(x, pre_logits=True), module.forward_head(x) if head else None

    return readout


def wrap(module: nn.Module, name: str) -> VitModel:
    """Wrap a timm VisionTransformer / VisionTransformerDistilled / Eva (any weights) as a VitModel, in eval mode."""
    if not (hasattr(module, "blocks") and hasattr(module, "patch_embed") and hasattr(module, "num_prefix_tokens")):
        raise unsupported(name, type(module).__module__.rsplit(".", 1)[-1])
    patch = tuple(module.patch_embed.patch_size)
    if patch[0] != patch[1]:
        raise UnsupportedModelError(f"timm model {name!r} has non-square patches {patch}")
    module.eval()
    sites, taps = attention_sites(module)
    head = bool(getattr(module, "num_classes", 0))

    def forward(pixels: torch.Tensor) -> torch.Tensor | None:
        handles = [tap.attn.register_forward_pre_hook(tap.pre_hook, with_kwargs=True) for tap in taps]
        try:
            out = module(pixels)
        finally:
            for handle in handles:
                handle.remove()
        return out if head else None

    return VitModel(
        name=name,
        family="timm",
        module=module,
        sites=sites,
        blocks=list(module.blocks),
        prefix_names=prefix_names(module),
        patch_size=patch[0],
        preprocess=preprocess_from_cfg(module),
        forward=forward,
        labels=labels(module) if head else {},
        patch_weight=module.patch_embed.proj.weight.detach(),
        position_grid=position_grid(module),
        attention_forward=_attention_forward(module, head),
        readout=_readout(module, head),
        pool=_pool_site(module),
        rebuild=Rebuild(wrap, {"name": name}),
    )


def _pool_site(module: nn.Module) -> PoolSite | None:
    """timm's ``attn_pool`` (``global_pool='map'``, SigLIP): a learned latent attends to every token."""
    pool = getattr(module, "attn_pool", None)
    if pool is None or not all(hasattr(pool, name) for name in ("latent", "q", "kv", "q_norm", "k_norm")):
        return None

    def probe(head: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """The first latent's attention (B, heads, N), as the head computes it before its softmax."""
        x = (args[0] if args else kwargs["x"]).detach()
        b, n, _ = x.shape
        if head.pos_embed is not None:
            x = x + head.pos_embed.unsqueeze(0).to(x.dtype)
        q = head.q(head.latent.expand(b, -1, -1)).reshape(b, head.latent_len, head.num_heads, head.head_dim)
        k = head.kv(x).reshape(b, n, 2, head.num_heads, head.head_dim).permute(2, 0, 3, 1, 4)[0]
        q, k = head.q_norm(q.transpose(1, 2)), head.k_norm(k)
        return query_row_probs(q[:, :, 0], k, head.scale)

    return PoolSite(pool, probe)


def load_timm(spec: str) -> VitModel:
    """Load ``<name>`` (timm's pretrained weights), ``<name>:random`` or ``<name>:<file.safetensors>``."""
    timm = _timm()
    name, _, source = spec.partition(":")
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models())")
    module_name = timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]
    if module_name not in SUPPORTED_MODULES:
        raise unsupported(name, module_name)
    pretrained = source == ""
    try:
        module = timm.create_model(name, pretrained=pretrained, dynamic_img_size=True)
    except (OSError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not pretrained:
            raise ValueError(f"timm cannot build {name!r}: {first}") from None
        raise OSError(
            f"timm could not fetch pretrained weights for {name!r} ({first}); use 'timm:{name}:<file.safetensors>' "
            f"for local weights or 'timm:{name}:random'"
        ) from None
    if source == "random":
        log.warning("%s has random weights: its maps show an untrained model", name)
    elif source:
        load_state(module, Path(source))
    return wrap(module, f"timm:{spec}")
