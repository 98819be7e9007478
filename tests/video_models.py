"""Tiny random video transformers of the four families, saved with save_pretrained beside a video-processor
config as transformers writes one, and synthetic clips to run them on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers

SIDE, PATCH, FRAMES = 32, 8, 4
COMMON = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              initializer_range=0.3)

VIDEO_FAMILIES = {  # name: (build(frames, side), prefix tokens, tubelet, time last, processor class name)
    "videomae": (lambda f, side: transformers.VideoMAEModel(transformers.VideoMAEConfig(
        **COMMON, image_size=side, patch_size=PATCH, num_frames=f, tubelet_size=2)), (), 2, False,
        "VideoMAEVideoProcessor"),
    "vivit": (lambda f, side: transformers.VivitForVideoClassification(transformers.VivitConfig(
        **COMMON, image_size=side, num_frames=f, tubelet_size=[2, PATCH, PATCH], num_labels=3)), ("cls",), 2,
        False, "VivitVideoProcessor"),
    "vjepa2": (lambda f, side: transformers.VJEPA2Model(transformers.VJEPA2Config(
        **COMMON, crop_size=side, patch_size=PATCH, frames_per_clip=f, tubelet_size=2, pred_hidden_size=32,
        pred_num_hidden_layers=1, pred_num_attention_heads=4, pred_num_mask_tokens=2)), (), 2, False,
        "VJEPA2VideoProcessor"),
    "timesformer": (lambda f, side: transformers.TimesformerForVideoClassification(transformers.TimesformerConfig(
        **COMMON, image_size=side, patch_size=PATCH, num_frames=f, num_labels=3)), ("cls",), 1, True,
        "TimesformerVideoProcessor"),
}


def processor_config(kind: str, side: int = SIDE) -> dict:
    """The video_preprocessor_config.json a transformers video processor of ``kind`` writes (its defaults,
    sized for the tiny models)."""
    vivit = kind == "vivit"
    return {
        "video_processor_type": VIDEO_FAMILIES[kind][4], "do_resize": True, "size": {"shortest_edge": side},
        "do_center_crop": True, "crop_size": {"height": side, "width": side}, "do_rescale": True,
        "rescale_factor": 1 / 127.5 if vivit else 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5] if vivit else [0.485, 0.456, 0.406],
        "image_std": [0.5, 0.5, 0.5] if vivit else [0.229, 0.224, 0.225], "resample": 2, "do_convert_rgb": True,
        "do_sample_frames": False, "num_frames": None, "fps": None,
    }


def make_tiny_video(kind: str, directory: Path, seed: int = 0, frames: int = FRAMES, side: int = SIDE) -> Path:
    """Write a tiny random model of ``kind`` (2 layers, 4 heads, ``frames`` frames of ``side`` px, patch 8) to
    ``directory``."""
    torch.manual_seed(seed)
    module = VIDEO_FAMILIES[kind][0](frames, side)
    with torch.no_grad():  # zero-initialised tables (CLS, positions, time) get values that matter
        for name, param in module.named_parameters():
            if any(key in name for key in ("cls_token", "position_embeddings", "time_embeddings")):
                param.normal_(0, 0.5)
    module.save_pretrained(directory)
    (directory / "video_preprocessor_config.json").write_text(json.dumps(processor_config(kind, side)))
    return directory


def moving_square(frames: int = 8, size: tuple[int, int] = (40, 48), side: int = 8, speed: tuple[int, int] = (0, 4),
                  start: tuple[int, int] = (8, 4)) -> np.ndarray:
    """A white square of ``side`` px on black moving ``speed`` (rows, cols) px per frame: (F, H, W, 3) uint8."""
    clip = np.zeros((frames, *size, 3), dtype=np.uint8)
    for f in range(frames):
        r, c = start[0] + speed[0] * f, start[1] + speed[1] * f
        clip[f, r : r + side, c : c + side] = 255
    return clip


def write_clip(path: Path, frames: np.ndarray, fps: float = 8.0) -> Path:
    """Encode frames (F, H, W, 3) uint8 as a video file (mp4 or gif by suffix)."""
    from vitprobe.render.video import VideoWriter

    with VideoWriter(path, fps, frames.shape[1:3]) as writer:
        for frame in frames:
            writer.write(frame)
    return path
