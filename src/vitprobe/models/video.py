"""Video transformers as ``VideoModel``: clips in, attention over tubelets (step, row, col) out.

A clip is a video file (anything the ffmpeg of ``imageio-ffmpeg`` reads) or an array of frames
(F, H, W, 3). The model takes a fixed number of input frames F (its config's clip length); a longer
clip is sampled down to F frames spread evenly over it, as the Hugging Face video processors' default
sampling does (frame i·N // F of N, i = 0 … F − 1), and every frame is resized, centre-cropped and
normalised by the model's own processor settings (``video_preprocessor_config.json``, else
``preprocessor_config.json``). Model input is (B, F, 3, H, W); the token layout has a time axis of
t = F / tubelet steps (``TokenLayout.time_steps``) and maps are (B, t, H, W).

The processors of transformers need torchvision, which is not used here: vitprobe reproduces their
settings with Pillow (bilinear resize of the short side, centre crop, rescale with ViViT's offset,
mean and std), so pixels agree with theirs to resampling differences, as for the image families.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..capture import Capture
from ..io.preprocess import Geometry, PreprocessSpec, preprocess
from ..layout import TokenLayout
from ..render.video import VideoError, VideoReader
from .base import Rebuild, UnsupportedModelError, VitModel
from .huggingface.spec import HfFamily, VideoFamily

log = logging.getLogger(__name__)

VIDEO_SUFFIXES: frozenset[str] = frozenset({".mp4", ".mov", ".webm", ".avi", ".mkv", ".m4v", ".mpg", ".mpeg", ".gif"})
"""Lower-case suffixes that folders of clips are searched for."""

ClipInput = str | Path | np.ndarray
"""A video file, or frames (F, H, W, 3) uint8 (or float in [0, 1])."""


@dataclass(frozen=True)
class ClipSpec:
    """What one model input is: ``frames`` input frames, ``tubelet`` frames per tubelet step, patch tokens in
    (row, col, step) order where ``time_last`` (else (step, row, col))."""

    frames: int
    tubelet: int
    time_last: bool = False

    @property
    def steps(self) -> int:
        """Tubelet steps t = frames // tubelet."""
        return self.frames // self.tubelet

    def step_of(self, frame: int) -> int:
        """The tubelet step that input frame ``frame`` (0 … F − 1) belongs to."""
        if not 0 <= frame < self.frames:
            raise ValueError(f"frame {frame} is outside the model's {self.frames} input frames")
        return frame // self.tubelet


@dataclass(frozen=True)
class ClipGeometry(Geometry):
    """``Geometry`` of every frame of a clip (all frames share it), plus which frames the model saw:
    ``frame_indices`` the source frames sampled, in order (input frame i is source frame
    ``frame_indices[i]``), of ``source_frames`` frames at ``fps`` (0 where unknown)."""

    frame_indices: tuple[int, ...] = ()
    source_frames: int = 0
    fps: float = 0.0

    def input_frame(self, frame: int) -> int:
        """The input frame (0 … F − 1) nearest to source frame ``frame``; ``ValueError`` outside the clip."""
        if not 0 <= frame < self.source_frames:
            raise ValueError(f"frame {frame} is outside the clip's {self.source_frames} frames")
        gaps = [abs(i - frame) for i in self.frame_indices]
        return gaps.index(min(gaps))

    def to_dict(self) -> dict:
        return {**super().to_dict(), "frame_indices": list(self.frame_indices), "source_frames": self.source_frames,
                "fps": self.fps}


def sample_indices(total: int, frames: int) -> np.ndarray:
    """Frames spread evenly over a clip of ``total`` frames: i·total // frames for i < frames (the Hugging Face
    video processors' default sampling); ``ValueError`` when the clip is shorter than ``frames``."""
    if total < frames:
        raise ValueError(f"the clip has {total} frames and the model takes {frames}")
    return np.arange(frames, dtype=np.int64) * total // frames


def as_frames(array: np.ndarray, label: str = "<array>") -> np.ndarray:
    """Frames (F, H, W, 3) as uint8: uint8 as is, float in [0, 1] times 255 (rounded); ``ValueError`` (one
    line naming ``label``) for any other shape or range."""
    array = np.asarray(array)
    if array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise ValueError(f"{label}: frames of shape {array.shape}, expected (F, H, W, 3)")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{label}: float frames must lie in [0, 1]")
        return np.round(array * 255).astype(np.uint8)
    raise ValueError(f"{label}: frames of dtype {array.dtype}, expected uint8 or float in [0, 1]")


def count_frames(path: str | Path) -> tuple[int, float]:
    """(frames, fps) of a video file, every frame decoded; ``VideoError`` (one line) when it cannot be read or
    has no frames."""
    with VideoReader(path) as reader:
        fps = reader.fps
        n = sum(1 for _ in reader)
    if n == 0:
        raise VideoError(f"{path}: the video has no frames")
    return n, fps


def read_frames(path: str | Path, indices: Sequence[int]) -> np.ndarray:
    """The frames at ``indices`` (sorted) of a video file, (len(indices), H, W, 3) uint8, decoding the
    file once and keeping only those."""
    wanted = {int(i): n for n, i in enumerate(indices)}
    out: list[np.ndarray | None] = [None] * len(indices)
    with VideoReader(path, max_frames=max(wanted) + 1) as reader:
        for i, frame in enumerate(reader):
            if i in wanted:
                out[wanted[i]] = frame.copy()
    missing = [i for i, frame in zip(indices, out, strict=True) if frame is None]
    if missing:
        raise VideoError(f"{path}: frame {missing[0]} could not be decoded the second time")
    return np.stack(out)


def clip_preprocess(proc: dict | None, config, video: VideoFamily) -> PreprocessSpec:
    """The model's own video-processor settings as a ``PreprocessSpec`` giving exactly the model's input size:
    the short side resized (bilinear unless stated) and a centre crop of the native (H, W); the rescale
    factor and offset folded into mean and std (value·r + o − mean) / std = (x/255 − mean′) / std′ with
    mean′ = (mean − o) / (255·r), std′ = std / (255·r)."""
    h, w = (g * video.patch(config) for g in video.grid(config))
    proc = proc or {}
    if not proc:
        log.warning("no video processor config: short side to %d, centre crop %dx%d, mean/std 0.5", max(h, w), h, w)
    factor = float(proc.get("rescale_factor", 1 / 255)) if proc.get("do_rescale", True) else 1.0
    offset = video.rescale_offset(proc) if proc.get("do_rescale", True) else 0.0
    normalize = proc.get("do_normalize", True)
    mean = np.asarray(proc.get("image_mean", (0.5,) * 3) if normalize else (0.0,) * 3, dtype=np.float64)
    std = np.asarray(proc.get("image_std", (0.5,) * 3) if normalize else (1.0,) * 3, dtype=np.float64)
    size = proc.get("size") or {}
    crop = proc.get("crop_size")
    crop_hw = (crop, crop) if isinstance(crop, int) else (crop["height"], crop["width"]) if crop else None
    short = size.get("shortest_edge") if isinstance(size, dict) else None
    if crop_hw != (h, w) or not proc.get("do_center_crop", True):
        if proc:
            log.warning("the video processor crops %s, the model takes %dx%d: cropping %dx%d", crop_hw, h, w, h, w)
        crop_hw = (h, w)
    if isinstance(size, dict) and "height" in size and not short:
        resize_hw, short = (max(size["height"], h), max(size["width"], w)), None
    else:
        resize_hw, short = None, max(int(short or 0), h, w)
    return PreprocessSpec(
        mean=tuple(float(v) for v in (mean - offset) / (255 * factor)),
        std=tuple(float(v) for v in std / (255 * factor)),
        shortest_edge=short, resize_hw=resize_hw, crop_hw=crop_hw,
        resample=int(proc.get("resample", Image.Resampling.BILINEAR)),
    )


def processor_shape(config, video: VideoFamily) -> SimpleNamespace:
    """What ``hf.check_processor`` reads of a config (channels, patch size), for a video config."""
    return SimpleNamespace(num_channels=getattr(config, "num_channels", getattr(config, "in_chans", 3)),
                           patch_size=video.patch(config))


@dataclass(repr=False)
class VideoModel(VitModel):
    """A video transformer ready for capture (see the module docstring). ``clip``: its input frames and
    tubelet size; ``grid_hw``: its patch grid (H, W), fixed by its config.

    ``prepare``/``capture``/``vp.attribute`` take clips (a file path or frames (F, H, W, 3), one or a list);
    ``capture_pixels`` takes model input (B, F, 3, H, W). ``Capture.full[i]`` is (B, heads, T, T) in the
    model's own token order (``layout.time_last`` says which), maps (B, t, H, W).
    """

    clip: ClipSpec | None = None
    grid_hw: tuple[int, int] = (0, 0)

    def __repr__(self) -> str:
        base = super().__repr__().removeprefix("VitModel")[:-1]
        return (f"VideoModel{base}, frames={self.clip.frames}, tubelet={self.clip.tubelet}, "
                f"grid={self.clip.steps}x{self.grid_hw[0]}x{self.grid_hw[1]})")

    def layout(self, input_hw: tuple[int, int] | None = None) -> TokenLayout:
        """Token layout of the model's clip: t = frames / tubelet steps of its (H, W) grid (the grid of
        ``input_hw`` when given)."""
        grid = self.grid_hw if input_hw is None else (input_hw[0] // self.patch_size, input_hw[1] // self.patch_size)
        return TokenLayout(self.prefix_names, grid, self.patch_size, self.clip.steps, self.clip.tubelet,
                           self.clip.time_last)

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.grid_hw[0] * self.patch_size, self.grid_hw[1] * self.patch_size

    def prepare_frames(self, frames: np.ndarray, indices: Sequence[int] | None = None, total: int | None = None,
                       fps: float = 0.0) -> tuple[torch.Tensor, Image.Image, ClipGeometry]:
        """Exactly ``clip.frames`` frames (F, H, W, 3) uint8 -> (model input (F, 3, H, W), the view of the
        middle frame the model saw, the clip's geometry); ``indices``: which source frames they are."""
        if len(frames) != self.clip.frames:
            raise ValueError(f"{len(frames)} frames given, the model takes {self.clip.frames}")
        prepared = [preprocess(Image.fromarray(np.ascontiguousarray(f)), self.preprocess, self.patch_size)
                    for f in frames]
        pixels = torch.stack([p for p, _, _ in prepared])
        geometry = prepared[0][2]
        if geometry.input_hw != self.input_hw:
            raise ValueError(f"frames of {frames.shape[2]}x{frames.shape[1]} preprocess to {geometry.input_hw}, the "
                             f"model takes {self.input_hw}")
        indices = list(range(len(frames))) if indices is None else [int(i) for i in indices]
        clip_geometry = ClipGeometry(geometry.original_hw, geometry.crop_box, geometry.input_hw, tuple(indices),
                                     total if total is not None else len(frames), fps)
        return pixels, prepared[len(prepared) // 2][1], clip_geometry

    def load_clip(self, clip: ClipInput) -> tuple[torch.Tensor, Image.Image, ClipGeometry]:
        """One clip (a file or frames (N, H, W, 3)) sampled to the model's frames and preprocessed:
        (model input (F, 3, H, W), view, geometry). Bad input raises ``ValueError`` (``VideoError`` for
        files) in one line naming it."""
        if isinstance(clip, (str, Path)):
            total, fps = count_frames(clip)
            try:
                indices = sample_indices(total, self.clip.frames)
            except ValueError as err:
                raise VideoError(f"{clip}: {err}") from None
            return self.prepare_frames(read_frames(clip, indices), indices, total, fps)
        frames = as_frames(clip)
        indices = sample_indices(len(frames), self.clip.frames)
        return self.prepare_frames(frames[indices], indices, len(frames))

    def prepare(self, images, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, list[Image.Image], list]:
        """Clips (one or a list: file paths or frames (N, H, W, 3)) -> (model input (B, F, 3, H, W), a view per
        clip (its middle input frame), a ``ClipGeometry`` per clip). A 5-D tensor is taken as model input."""
        if size is not None and tuple(size) != self.input_hw:
            raise ValueError(f"{self.name} takes clips of {self.input_hw[0]}x{self.input_hw[1]} pixels (fixed by its "
                             f"config), not {size[0]}x{size[1]}")
        if isinstance(images, torch.Tensor) and images.dim() == 5:
            return images, [], []
        if isinstance(images, (str, Path, np.ndarray)):
            images = [images]
        if not isinstance(images, Sequence) or isinstance(images, (str, Path)) or not len(images):
            raise ValueError("give a clip (a video file or frames (F, H, W, 3)) or a list of them")
        loaded = [self.load_clip(clip) for clip in images]
        return torch.stack([p for p, _, _ in loaded]), [v for _, v, _ in loaded], [g for _, _, g in loaded]

    def capture_pixels(self, pixels: torch.Tensor, **kwargs) -> Capture:
        """Capture from model input (B, F, 3, H, W); see ``VitModel.capture``."""
        want = (self.clip.frames, 3, *self.input_hw)
        if pixels.dim() != 5 or tuple(pixels.shape[1:]) != want:
            raise ValueError(f"{self.name} takes model input (B, {', '.join(map(str, want))}), got "
                             f"{tuple(pixels.shape)}")
        return super().capture_pixels(pixels, **kwargs)

    def describe(self) -> dict:
        return {**super().describe(), "frames": self.clip.frames, "tubelet": self.clip.tubelet,
                "layout": self.layout().to_dict()}


def wrap_video(module: nn.Module, name: str, preprocess: PreprocessSpec | None = None,
               source: str | None = None) -> VideoModel:
    """Wrap a loaded transformers video model of a described family (put in eval mode) as a VideoModel."""
    from .hf import attention_sites, blocks, family_of, pack, unpack

    family: HfFamily = family_of(module.config.model_type)
    video = family.video
    config = module.config
    why = video.why_not(config)
    if why:
        raise UnsupportedModelError(f"{name}: {family.title} with {why} is not supported")
    module.eval()
    family.prepare(module)
    vision = family.vision(module)
    sites = video.sites(vision, config) if video.sites else attention_sites(vision, config, family.in_kernel)
    temporal = video.temporal_sites(vision, config) if video.temporal_sites else None
    frames, tubelet = video.frames(config), video.tubelet(config)
    if frames % tubelet:
        raise UnsupportedModelError(f"{name}: {frames} frames are no whole number of tubelets of {tubelet}")

    def forward(pixels: torch.Tensor) -> torch.Tensor | None:
        return getattr(family.run(module, pixels), "logits", None)

    has_head = isinstance(getattr(module, "classifier", None), nn.Linear)
    spec = preprocess or clip_preprocess(None, config, video)
    return VideoModel(
        name=name, family=f"hf-{config.model_type}", module=module, sites=sites, blocks=blocks(vision, sites),
        prefix_names=family.prefix_names(config), patch_size=video.patch(config),
        preprocess=spec, forward=forward,
        labels={int(k): v for k, v in config.id2label.items()} if has_head else {},
        rebuild=Rebuild(wrap_video, {"name": name, "preprocess": spec, "source": source}, pack, unpack),
        temporal_sites=temporal, clip=ClipSpec(frames, tubelet, video.time_last), grid_hw=video.grid(config),
    )


def is_video_spec(spec: str) -> bool:
    """Whether ``spec`` names a Hugging Face model of a video family, read from its config.json alone (a local
    directory, or a hub id in the cache); False where that cannot be told without loading it."""
    from ..hub import hf_name, locate
    from .files import read_json
    from .hf import _cached, hf_families

    name = hf_name(spec)
    if name is None:
        return False
    try:
        path = _cached(name, "config.json", locate(name))
        model_type = read_json(path).get("model_type") if path is not None else None
    except Exception:  # noqa: BLE001 - anything unreadable is for the loader to report
        return False
    family = hf_families().get(model_type) if isinstance(model_type, str) else None
    return family is not None and family.video is not None
