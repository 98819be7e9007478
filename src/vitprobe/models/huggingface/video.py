"""Video transformers: VideoMAE, ViViT, V-JEPA 2 (encoder) and TimeSformer, whose patch tokens are tubelets
(step, row, col) of a clip; the clip length, tubelet size and grid are read from each config.

- VideoMAE: joint space-time attention over every tubelet, no CLS (mean pooling);
- ViViT: joint attention, CLS first;
- V-JEPA 2: joint attention with a 3-D rotary position embedding applied to q and k inside attention, so
  q and k are read from the model's SDPA call (as for DINOv3); no CLS; the predictor is not run;
- TimeSformer (divided space-time): in every block a temporal attention (each patch over its own
  position in every frame) and then a spatial attention (each frame's patches and a copy of the CLS token,
  whose outputs are averaged over the frames). Both are recorded, each written as one attention over the
  model's joint sequence (CLS, then patches in (row, col, frame) order): the spatial one in ``sites`` (its
  CLS row is the mean over frames of each frame's CLS row, so each frame's patches get 1/F of their
  frame's CLS attention and the row sums to 1), the temporal one in ``temporal_sites`` (the CLS row is
  the identity: the CLS token takes no part in it).
"""

from __future__ import annotations

import torch
from torch import nn

from ...capture import AttentionSite
from .spec import HfFamily, VideoFamily, register_hf_family


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _inner(module: nn.Module, name: str) -> nn.Module:
    """The backbone of a model with or without a video-classification head."""
    return getattr(module, name, module)


def _no_readout(_module: nn.Module) -> None:
    return None


def _no_weight(_vision: nn.Module) -> None:
    return None


def _none(_config) -> tuple[str, ...]:
    return ()


def _cls(_config) -> tuple[str, ...]:
    return ("cls",)


# --- VideoMAE ----------------------------------------------------------------------------------------


def _videomae_grid(config) -> tuple[int, int]:
    h, w = _pair(config.image_size)
    ph, pw = _pair(config.patch_size)
    return h // ph, w // pw


def _videomae_run(module: nn.Module, pixels: torch.Tensor, **kwargs):
    return module(pixel_values=pixels, **kwargs)


register_hf_family(HfFamily(
    title="VideoMAE", model_types=("videomae",), classes=("VideoMAEModel", "VideoMAEForVideoClassification"),
    checkpoint="MCG-NJU/videomae-base", tokens="none", prefix_names=_none, patch_weight=_no_weight,
    readout=_no_readout, vision=lambda m: _inner(m, "videomae"), run=_videomae_run,
    gives="joint space-time attention over tubelets, no CLS (mean pooling): query maps, distances, entropies",
    video=VideoFamily(
        frames=lambda c: int(c.num_frames), tubelet=lambda c: int(c.tubelet_size), grid=_videomae_grid,
        patch=lambda c: _pair(c.patch_size)[0],
        why_not=lambda c: "its patches are not square" if len(set(_pair(c.patch_size))) > 1 else None,
    ),
))


# --- ViViT -------------------------------------------------------------------------------------------


def _vivit_grid(config) -> tuple[int, int]:
    h, w = _pair(config.image_size)
    return h // int(config.tubelet_size[1]), w // int(config.tubelet_size[2])


def _vivit_why_not(config) -> str | None:
    return "its tubelets are not square in space" if config.tubelet_size[1] != config.tubelet_size[2] else None


def _vivit_offset(proc: dict) -> float:
    """ViViT's processors rescale to [-1, 1] (x / 127.5 − 1) before normalising (its image processor's
    ``offset``, always on in its video processor)."""
    return -1.0 if proc.get("offset", True) else 0.0


register_hf_family(HfFamily(
    title="ViViT", model_types=("vivit",), classes=("VivitModel", "VivitForVideoClassification"),
    checkpoint="google/vivit-b-16x2-kinetics400", prefix_names=_cls, patch_weight=_no_weight,
    readout=_no_readout, vision=lambda m: _inner(m, "vivit"),
    gives="joint space-time attention over tubelets, CLS: CLS maps per tubelet step, rollout",
    video=VideoFamily(
        frames=lambda c: int(c.num_frames), tubelet=lambda c: int(c.tubelet_size[0]), grid=_vivit_grid,
        patch=lambda c: int(c.tubelet_size[1]), rescale_offset=_vivit_offset, why_not=_vivit_why_not,
    ),
))


# --- V-JEPA 2 ----------------------------------------------------------------------------------------


def _vjepa2_encoder(module: nn.Module) -> nn.Module:
    return _inner(module, "vjepa2").encoder


def _vjepa2_run(module: nn.Module, pixels: torch.Tensor, **kwargs):
    if hasattr(module, "vjepa2"):  # with its classification head: the head's own call skips the predictor
        return module(pixel_values_videos=pixels, **kwargs)
    return module(pixel_values_videos=pixels, skip_predictor=True, **kwargs)


def _vjepa2_grid(config) -> tuple[int, int]:
    side = int(config.crop_size) // int(config.patch_size)
    return side, side


register_hf_family(HfFamily(
    title="V-JEPA 2", model_types=("vjepa2",), classes=("VJEPA2Model", "VJEPA2ForVideoClassification"),
    checkpoint="facebook/vjepa2-vitl-fpc64-256", tokens="none", prefix_names=_none, patch_weight=_no_weight,
    readout=_no_readout, vision=_vjepa2_encoder, run=_vjepa2_run, in_kernel="a 3-D rotary position embedding",
    gives="joint attention with 3-D rotary positions inside attention, no CLS: query maps, distances, entropies",
    video=VideoFamily(
        frames=lambda c: int(c.frames_per_clip), tubelet=lambda c: int(c.tubelet_size), grid=_vjepa2_grid,
        patch=lambda c: int(c.patch_size),
    ),
))


# --- TimeSformer -------------------------------------------------------------------------------------


def _timesformer_grid(config) -> tuple[int, int]:
    side = int(config.image_size) // int(config.patch_size)
    return side, side


def _timesformer_why_not(config) -> str | None:
    if config.attention_type == "space_only":
        return "attention_type 'space_only' attends within each frame only (no space-time attention)"
    return None


def spatial_joint(probs: torch.Tensor, frames: int) -> torch.Tensor:
    """TimeSformer's spatial attention of one block, per frame (B·F, heads, 1 + N, 1 + N) with the frames of
    each clip consecutive and N = H·W, written as one attention over the joint sequence (B, heads, T, T),
    T = 1 + N·F, patches in (row, col, frame) order: patch (p, f) keeps its row over the CLS token and the
    patches of frame f; the CLS row is the mean over the frames of each frame's CLS row (the block averages
    the CLS outputs of the frames), so frame f's patches get 1/F of their frame's CLS attention."""
    bf, heads, n1, _ = probs.shape
    batch, n = bf // frames, n1 - 1
    per = probs.reshape(batch, frames, heads, n1, n1)
    t = 1 + n * frames
    joint = probs.new_zeros(batch, heads, t, t)
    joint[:, :, 0, 0] = per[:, :, :, 0, 0].mean(dim=1)
    joint[:, :, 0, 1:] = (per[:, :, :, 0, 1:] / frames).permute(0, 2, 3, 1).reshape(batch, heads, n * frames)
    joint[:, :, 1:, 0] = per[:, :, :, 1:, 0].permute(0, 2, 3, 1).reshape(batch, heads, n * frames)
    patches = joint[:, :, 1:, 1:].view(batch, heads, n, frames, n, frames)  # rows (p, f), columns (q, g)
    for f in range(frames):
        patches[:, :, :, f, :, f] = per[:, f, :, 1:, 1:]
    return joint


def spatial_joint_cls(rows: torch.Tensor, frames: int) -> torch.Tensor:
    """The CLS row of ``spatial_joint`` from each frame's CLS row alone: (B·F, heads, 1 + N) -> (B, heads, T)."""
    bf, heads, n1 = rows.shape
    batch, n = bf // frames, n1 - 1
    per = rows.reshape(batch, frames, heads, n1)
    patches = (per[..., 1:] / frames).permute(0, 2, 3, 1).reshape(batch, heads, n * frames)
    return torch.cat([per[..., :1].mean(dim=1), patches], dim=-1)


def temporal_joint(probs: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """TimeSformer's temporal attention of one block, per patch position (B·N, heads, F, F) with the N = H·W
    positions of each clip consecutive, written as one attention over the joint sequence (B, heads, T, T),
    T = 1 + N·F: patch (p, f) keeps its row over (p, f') of every frame f'; the CLS row is the identity (the
    CLS token does not take part)."""
    bn, heads, frames, _ = probs.shape
    batch = bn // n_spatial
    per = probs.reshape(batch, n_spatial, heads, frames, frames)
    t = 1 + n_spatial * frames
    joint = probs.new_zeros(batch, heads, t, t)
    joint[:, :, 0, 0] = 1.0
    patches = joint[:, :, 1:, 1:].view(batch, heads, n_spatial, frames, n_spatial, frames)  # (p, f), (q, g)
    for p in range(n_spatial):
        patches[:, :, p, :, p, :] = per[:, p]
    return joint


def _qkv_site(attention: nn.Module, config, joint=None, joint_cls=None) -> AttentionSite:
    heads = config.num_attention_heads
    return AttentionSite(attention.qkv, attention.qkv, heads, config.hidden_size // heads, float(attention.scale),
                         qkv=True, joint=joint, joint_cls=joint_cls)


def _timesformer_sites(vision: nn.Module, config) -> list[AttentionSite]:
    frames = int(config.num_frames)
    if config.attention_type == "joint_space_time":
        return [_qkv_site(layer.attention.attention, config) for layer in vision.encoder.layer]
    return [_qkv_site(layer.attention.attention, config, lambda p: spatial_joint(p, frames),
                      lambda rows: spatial_joint_cls(rows, frames)) for layer in vision.encoder.layer]


def _timesformer_temporal(vision: nn.Module, config) -> list[AttentionSite] | None:
    if config.attention_type != "divided_space_time":
        return None
    h, w = _timesformer_grid(config)
    return [_qkv_site(layer.temporal_attention.attention, config, lambda p: temporal_joint(p, h * w))
            for layer in vision.encoder.layer]


register_hf_family(HfFamily(
    title="TimeSformer", model_types=("timesformer",),
    classes=("TimesformerModel", "TimesformerForVideoClassification"),
    checkpoint="facebook/timesformer-base-finetuned-k400", prefix_names=_cls, patch_weight=_no_weight,
    readout=_no_readout, vision=lambda m: _inner(m, "timesformer"),
    gives="divided space-time attention, both recorded: CLS maps from the spatial one, the temporal one as detail",
    video=VideoFamily(
        frames=lambda c: int(c.num_frames), tubelet=lambda _c: 1, grid=_timesformer_grid,
        patch=lambda c: int(c.patch_size), time_last=True, sites=_timesformer_sites,
        temporal_sites=_timesformer_temporal, why_not=_timesformer_why_not,
    ),
))
