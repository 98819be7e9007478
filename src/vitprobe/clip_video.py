"""``vitprobe video --model <video model>``: a video transformer's maps over a whole video, in sliding windows.

A video model takes clips of a fixed number of frames F (``VideoModel.clip``). The video is read at its own
frame rate (or ``fps``) and cut into windows of F consecutive frames starting every ``stride`` frames; when
the last window does not end on the last frame, one more window ends there. Each window goes through the
model (the processor's resize and centre crop on every frame) and the method draws its (t, H, W) maps; the
map of tubelet step s is drawn on the ``tubelet`` frames that step covers. A frame inside several windows
gets the mean of their maps (overlaps averaged). A video shorter than F frames cannot be drawn (one line).

Outputs: the overlay video (mp4 and/or GIF) with the input's frame count, size and rate — the map on the
region the model saw (the centre crop), the rest of the frame darkened; a frame-strip figure (PNG) of
evenly spaced frames; and the maps (.npz): ``maps`` (N, H, W) float32 per frame, ``windows`` (n, t, H, W)
each window's own maps, ``starts`` (n,) their first frames, ``coverage`` (N,) windows per frame, and the
layout, method and parameters as JSON.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import render
from .io.files import atomic_write, jsonable
from .io.preprocess import preprocess
from .methods import attribute, check
from .methods.query import grid_point
from .models.video import ClipGeometry, VideoModel
from .render.strip import frame_strip
from .render.video import VideoError, VideoReader, overlay_video
from .video import VideoOptions

log = logging.getLogger(__name__)

OUTSIDE_DIM = 0.45
"""Brightness kept outside the region the model saw (the processor's centre crop)."""


@dataclass(frozen=True)
class ClipVideoResult:
    """What was written: ``frames`` at ``fps`` of ``size_hw`` (H, W); ``windows`` model windows of
    ``window`` frames every ``stride``; maps (t, H, W) per window on ``grid``; seconds in the model and in all."""

    frames: int
    fps: float
    size_hw: tuple[int, int]
    window: int
    stride: int
    windows: int
    grid: tuple[int, int, int]
    value_range: tuple[float, float]
    model_seconds: float
    total_seconds: float
    outputs: list[Path]


def window_starts(n_frames: int, window: int, stride: int) -> list[int]:
    """First frames of the windows over ``n_frames``: 0, stride, 2·stride, … while a window fits, and one
    ending on the last frame when those do not; ``ValueError`` when the video is shorter than a window."""
    if n_frames < window:
        raise ValueError(f"the video has {n_frames} frames and the model takes clips of {window}")
    starts = list(range(0, n_frames - window + 1, stride))
    if starts[-1] != n_frames - window:
        starts.append(n_frames - window)
    return starts


def spread_over_frames(window_maps: np.ndarray, starts: Sequence[int], n_frames: int,
                       tubelet: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame maps from per-window maps (n, t, H, W) starting at ``starts``: frame ``start + i`` of a window
    gets its step i // tubelet; a frame in several windows the mean of theirs. -> (maps (N, H, W) float32,
    coverage (N,) int: windows per frame)."""
    n, t, h, w = window_maps.shape
    total = np.zeros((n_frames, h, w), dtype=np.float64)
    coverage = np.zeros(n_frames, dtype=np.int64)
    for maps, start in zip(window_maps, starts, strict=True):
        total[start : start + t * tubelet] += np.repeat(maps, tubelet, axis=0)
        coverage[start : start + t * tubelet] += 1
    if (coverage == 0).any():
        raise ValueError(f"frame {int(np.argmin(coverage))} lies in no window")
    return (total / coverage[:, None, None]).astype(np.float32), coverage


def _query_patch(model: VideoModel, opts: VideoOptions, geometry: ClipGeometry) -> dict:
    """The method's parameters for one window: a ``query_xy`` point becomes the patch under it (every window
    has the same geometry); a clip frame cannot be chosen (each window has its own steps)."""
    params = dict(opts.params)
    if params.get("frame") is not None:
        raise ValueError("--frame does not apply to vitprobe video: the query is in each window's own steps "
                         "(--patch STEP,ROW,COL; default: the middle step)")
    if params.get("query_xy") is not None:
        row, col = grid_point(params.pop("query_xy"), geometry, model.patch_size)
        params["patch"] = (int(row + 0.5), int(col + 0.5))
    return params


def _draw(frame: np.ndarray, heat: np.ndarray, geometry: ClipGeometry, opts: VideoOptions,
          bounds: tuple[float | None, float | None]) -> Image.Image:
    """The frame with ``heat`` (H, W) over the region the model saw, the rest darkened."""
    picture = Image.fromarray(frame)
    top, left, height, width = geometry.crop_box
    box = (round(left), round(top), round(left + width), round(top + height))
    seen = render.overlay(picture.crop(box), heat, opts.style, vmin=bounds[0], vmax=bounds[1])
    out = Image.fromarray((np.asarray(picture, dtype=np.float32) * OUTSIDE_DIM).astype(np.uint8))
    out.paste(seen, box[:2])
    return out


def clip_attention_video(
    model: VideoModel,
    source: str | Path,
    outputs: Sequence[str | Path],
    opts: VideoOptions | None = None,
    stride: int | None = None,
    maps_path: str | Path | None = None,
    strip_path: str | Path | None = None,
    strip_frames: int = 8,
    progress: bool = True,
) -> ClipVideoResult:
    """Draw ``model``'s maps over the whole of ``source`` (see the module docstring) into each of ``outputs``
    (.mp4 / .gif), the frame strip ``strip_path`` (.png) and the maps ``maps_path`` (.npz), each optional.
    ``stride`` (frames, default half the clip length) must lie in [1, F]. Raises ``VideoError`` for a video
    that cannot be read or is too short, ``ValueError`` for bad options."""
    opts = opts or VideoOptions()
    opts.check()
    check(model, opts.method, **opts.params)
    window = model.clip.frames
    stride = max(1, window // 2) if stride is None else stride
    if not 1 <= stride <= window:
        raise ValueError(f"stride must lie in [1, {window}] (the model's clip length), got {stride}")
    start_time = time.perf_counter()
    model_seconds = 0.0
    buffer: deque[tuple[int, torch.Tensor]] = deque(maxlen=window)  # (frame index, model input (3, H, W))
    batches: list[torch.Tensor] = []
    done_maps: list[np.ndarray] = []
    starts: list[int] = []
    geometry: ClipGeometry | None = None
    params: dict | None = None

    def run(group: list[torch.Tensor]) -> None:
        nonlocal model_seconds
        began = time.perf_counter()
        pixels = torch.stack(group)
        result = attribute(model, pixels, method=opts.method, batch_size=len(group), **params)
        done_maps.append(result.maps.float().cpu().numpy())
        model_seconds += time.perf_counter() - began

    def take(first: int) -> None:
        frames = [p for i, p in buffer if first <= i < first + window]
        batches.append(torch.stack(frames))
        starts.append(first)
        if len(batches) == opts.batch_size:
            run(batches)
            batches.clear()

    with VideoReader(source, opts.fps, opts.max_frames, opts.start, opts.end) as reader:
        if not reader.fps > 0:
            raise VideoError(f"{source}: the video does not state its frame rate; pass fps")
        fps, size_hw = reader.fps, reader.info.size_hw
        n = 0
        bar = tqdm(total=reader.frames_estimate or None, desc=f"windows of {window} frames", unit="frame",
                   disable=not progress)
        with bar:
            for frame in reader:
                pixels, _, geo = preprocess(Image.fromarray(frame), model.preprocess, model.patch_size)
                if geometry is None:
                    if geo.input_hw != model.input_hw:
                        raise ValueError(f"{source}: frames preprocess to {geo.input_hw}, the model takes "
                                         f"{model.input_hw}")
                    geometry = ClipGeometry(geo.original_hw, geo.crop_box, geo.input_hw)
                    params = _query_patch(model, opts, geometry)
                buffer.append((n, pixels))
                n += 1
                if n >= window and (n - window) % stride == 0:
                    take(n - window)
                bar.update(1)
        if n == 0:
            raise VideoError(f"{source}: the video has no frames")
        try:
            expected = window_starts(n, window, stride)
        except ValueError as err:
            raise VideoError(f"{source}: {err}") from None
        if expected[-1] not in starts:
            take(expected[-1])
        if batches:
            run(batches)
    window_maps = np.concatenate(done_maps)  # (windows, t, H, W)
    maps, coverage = spread_over_frames(window_maps, starts, n, model.clip.tubelet)
    lo, hi = float(maps.min()), float(maps.max())
    top = float(np.percentile(maps, opts.style.clip)) if opts.normalize == "video" else None
    bounds = (lo, top) if opts.normalize == "video" else (None, None)
    paths = [Path(p) for p in outputs]
    strip_at = np.linspace(0, n - 1, min(strip_frames, n)).round().astype(int).tolist()
    pictures = overlay_video(source, (opts.fps, opts.start, opts.end), n, fps, size_hw, paths,
                             lambda i, frame: _draw(frame, maps[i], geometry, opts, bounds), keep=set(strip_at),
                             progress=progress)
    strip = [(f"frame {i}", pictures[i]) for i in sorted(pictures)]
    layout = model.layout()
    if strip_path is not None:
        title = (f"{model.name}: {opts.method}, windows of {window} frames every {stride} "
                 f"({layout.n_steps} steps of {layout.tubelet} frame{'s' if layout.tubelet > 1 else ''})")
        render.save_figure(frame_strip(strip, title), strip_path)
        paths.append(Path(strip_path))
    if maps_path is not None:
        meta = {"model": model.name, "method": opts.method, "params": {k: jsonable(v) for k, v in params.items()},
                "layout": layout.to_dict(), "window": window, "stride": stride, "fps": fps,
                "geometry": geometry.to_dict()}

        def write(f: io.BufferedWriter) -> None:
            np.savez_compressed(f, maps=maps, windows=window_maps.astype(np.float32), starts=np.asarray(starts),
                                coverage=coverage, meta=np.asarray(json.dumps(meta)))

        atomic_write(maps_path, write, "the maps")
        paths.append(Path(maps_path))
    grid = (layout.n_steps, *layout.grid_hw)
    return ClipVideoResult(n, fps, size_hw, window, stride, len(starts), grid, (lo, hi), model_seconds,
                           time.perf_counter() - start_time, paths)
