"""Attention heat maps over every frame of a video, overlaid on the frames and encoded again.

Two streaming passes over the input, so memory stays bounded whatever the length:

1. decode frames in batches, capture each batch, keep its (H, W) grid maps in a float32 file on
   disk (a few KB per frame) and the running minimum and maximum;
2. decode the frames again, overlay each frame's map and encode the result (mp4 and/or GIF).

Colour scale (``normalize``): ``"video"`` maps the smallest value of all frames' maps to the
bottom of the colormap and their ``style.clip`` percentile (as for images) to the top, the same
for every frame, so brightness can be compared across frames and a frame where attention is
spread out looks dimmer; ``"frame"`` scales each frame's map on its own, so every frame uses the
full colormap.

The model sees the WHOLE frame resized, aspect kept (short side: the model's own input size
unless given), so the map covers every pixel of the frame, which keeps its size and frame rate.
Frames that run out of memory together go through the model in halves (``memory.BatchSize``, one
warning); a frame that does not fit alone ends the video with one line naming it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import render
from .choices import VIDEO_SHORT_SIDE
from .io.files import atomic_write
from .localization import default_short_side, whole_image_hw
from .memory import BatchSize, OutOfMemory
from .methods import attribute, check, get_method
from .models.base import VitModel
from .render.style import Style
from .render.video import VideoError, VideoReader, batched, overlay_video

log = logging.getLogger(__name__)

NORMALIZE_MODES = ("video", "frame")


@dataclass(frozen=True)
class VideoOptions:
    """What ``attention_video`` draws.

    ``method`` (a registered name) with its ``params``; ``normalize`` the colour scale ("video":
    one scale for all frames, from the smallest value to the ``style.clip`` percentile of all maps;
    "frame": each frame its own); ``fps`` resamples the video (None keeps its rate); ``start`` /
    ``end`` (seconds) take a part of it; ``max_frames`` stops early; ``short_side`` is the
    model-input short side in pixels (default 224: a few frames a second on a CPU; None: the model's
    own input size, finer and several times slower).
    """

    method: str = "cls"
    params: dict[str, Any] = field(default_factory=dict)
    normalize: str = "video"
    short_side: int | None = VIDEO_SHORT_SIDE
    fps: float | None = None
    start: float = 0.0
    end: float | None = None
    max_frames: int | None = None
    batch_size: int = 8
    style: Style = Style()

    def check(self) -> None:
        """Raise ``ValueError`` (one line) for an unknown method, a bad parameter or an option out of range."""
        get_method(self.method).resolve(self.params)
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {self.normalize!r}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            raise ValueError(f"the time range must have 0 <= start < end, got start {self.start:g}, end {self.end}")
        for name, value in (("max frames", self.max_frames), ("short side", self.short_side)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class VideoResult:
    """What was written: ``frames`` at ``fps``, each ``size_hw`` (H, W); maps on a ``grid_hw``
    (H, W) grid; ``value_range`` (min, max) of all maps; seconds spent in the model pass and in
    all, and the files written."""

    frames: int
    fps: float
    size_hw: tuple[int, int]
    grid_hw: tuple[int, int]
    value_range: tuple[float, float]
    model_seconds: float
    total_seconds: float
    outputs: list[Path]


def frame_maps(model: VitModel, frames: Sequence[np.ndarray], opts: VideoOptions) -> torch.Tensor:
    """Heat maps of frames (H, W, 3) uint8, all of one size: -> (B, H_grid, W_grid) float32."""
    size = whole_image_hw(frames[0].shape[:2], opts.short_side or default_short_side(model.preprocess),
                          model.patch_size)
    return attribute(model, list(frames), method=opts.method, size=size, batch_size=len(frames), **opts.params).maps


def shrinking_frame_maps(model: VitModel, frames: Sequence[np.ndarray], opts: VideoOptions, sizer: BatchSize,
                         where: str, first: int) -> np.ndarray:
    """``frame_maps`` of frames (H, W, 3), ``sizer.size`` at a time: (B, H_grid, W_grid) float32. ``VideoError``
    naming the frame (``first`` is the index of ``frames[0]`` in ``where``) when one does not fit alone."""

    def too_large(i: int, err: OutOfMemory) -> None:
        raise VideoError(f"{where}: frame {first + i}: {err}")

    parts = sizer.run(len(frames), lambda span: frame_maps(model, frames[span], opts).float().cpu().numpy(),
                      too_large)
    return np.concatenate([maps for _, maps in parts])


def attention_video(
    model: VitModel,
    source: str | Path,
    outputs: Sequence[str | Path],
    opts: VideoOptions = VideoOptions(),
    maps_path: str | Path | None = None,
    progress: bool = True,
) -> VideoResult:
    """Write the attention overlay of every frame of ``source`` to each of ``outputs`` (.mp4 / .gif).

    ``maps_path`` (optional, .npy) also keeps the per-frame maps (frames, H_grid, W_grid) float32.
    Raises ``VideoError`` for an unreadable or empty video, ``ValueError`` for bad options; a video
    that decodes to clearly fewer frames than its container states (truncated) gives a warning.
    """
    opts.check()
    check(model, opts.method, **opts.params)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vitprobe-video-") as tmp:
        raw = Path(tmp) / "maps.f32"
        with VideoReader(source, opts.fps, opts.max_frames, opts.start, opts.end) as reader, raw.open("wb") as sink:
            if not reader.fps > 0:
                raise VideoError(f"{source}: the video does not state its frame rate; pass fps")
            fps, size_hw, expected = reader.fps, reader.info.size_hw, reader.frames_estimate
            n, grid_hw, lo, hi = 0, (0, 0), np.inf, -np.inf
            side = f"short side {opts.short_side or default_short_side(model.preprocess)} px"
            bar = tqdm(total=reader.frames_estimate or None, desc=f"attention ({side})", unit="frame",
                       disable=not progress)
            sizer = BatchSize(opts.batch_size, "video")
            with bar:
                for frames in batched(reader, opts.batch_size):
                    maps = shrinking_frame_maps(model, frames, opts, sizer, str(source), n)
                    sink.write(maps.tobytes())
                    n, grid_hw = n + len(frames), maps.shape[1:]
                    lo, hi = min(lo, float(maps.min())), max(hi, float(maps.max()))
                    bar.update(len(frames))
        if n == 0:
            raise VideoError(f"{source}: the video has no frames")
        if n < expected - max(2, expected // 20):
            log.warning("%s: decoded %d frames where the container promises %d; the file may be truncated "
                        "or corrupt (what could be decoded was used)", source, n, expected)
        model_seconds = time.perf_counter() - start
        maps = np.memmap(raw, dtype=np.float32, mode="r", shape=(n, *grid_hw))
        top = float(np.percentile(maps, opts.style.clip)) if opts.normalize == "video" else None
        bounds = (lo, top) if opts.normalize == "video" else (None, None)
        paths = [Path(p) for p in outputs]
        def draw(i: int, frame: np.ndarray, maps: np.ndarray = maps) -> Image.Image:
            return render.overlay(Image.fromarray(frame), maps[i], opts.style, vmin=bounds[0], vmax=bounds[1])

        overlay_video(source, (opts.fps, opts.start, opts.end), n, fps, size_hw, paths, draw, progress=progress)
        if maps_path is not None:
            atomic_write(maps_path, lambda f, maps=maps: np.save(f, maps), "the per-frame maps")
        del draw, maps  # the memmap is released before its temporary folder is removed
    return VideoResult(n, fps, size_hw, tuple(grid_hw), (lo, hi), model_seconds, time.perf_counter() - start,
                       paths + ([Path(maps_path)] if maps_path is not None else []))
