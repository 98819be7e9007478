"""Tiny random timm models for the tests (timm imported with the torchvision stand-in when needed)."""

from __future__ import annotations

import torch

from tests.torchvision_stub import import_timm

TORCHVISION = import_timm()
""""real" or "stub": the torchvision timm was imported with; None when timm is not installed."""
SKIP_REASON = "timm is not installed: pip install -e '.[timm]' (with --no-deps where torchvision is broken)"

PATCH = 8
IMAGE = 32
FAMILIES = {
    "vit": "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "dino": "vit_small_patch16_224.dino",
    "deit_distilled": "deit_tiny_distilled_patch16_224",
    "dinov2_reg4": "vit_small_patch14_reg4_dinov2",
    "eva02": "eva02_tiny_patch14_224",
    "siglip_map": "vit_base_patch16_siglip_224",
}
PREFIX = {
    "vit": ("cls",),
    "dino": ("cls",),
    "deit_distilled": ("cls", "distillation"),
    "dinov2_reg4": ("cls", "reg0", "reg1", "reg2", "reg3"),
    "eva02": ("cls",),
    "siglip_map": (),
}


def tiny(name: str, seed: int = 0, std: float = 0.4, **overrides) -> torch.nn.Module:
    """A 2-layer, 4-head, 32-dim timm model for 32×32 inputs (8-px patches, 5 classes), any input size.

    Matrix weights are redrawn from N(0, std²) so the attention is peaked, not the near-uniform
    attention of timm's small initialisation, where any capture would look right.
    """
    import timm

    kwargs = {"img_size": IMAGE, "patch_size": PATCH, "depth": 2, "embed_dim": 32, "num_heads": 4,
              "num_classes": 5, "dynamic_img_size": True, **overrides}
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, std)
    return model.eval()


def non_fused_attentions(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Reference: timm's own non-fused attention (fused_attn off), read from each block's attn_drop."""
    attns = [block.attn for block in model.blocks]
    probs: dict[int, torch.Tensor] = {}
    handles = [
        attn.attn_drop.register_forward_hook(lambda _m, _i, out, layer=i: probs.__setitem__(layer, out.detach()))
        for i, attn in enumerate(attns)
    ]
    for attn in attns:
        attn.fused_attn = False
    try:
        with torch.no_grad():
            out = model(pixels)
    finally:
        for attn in attns:
            attn.fused_attn = True
        for handle in handles:
            handle.remove()
    return out, [probs[i] for i in range(len(attns))]
