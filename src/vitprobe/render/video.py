"""Stream video frames in and out through the ffmpeg binary that ``imageio-ffmpeg`` ships.

Frames are (H, W, 3) uint8 RGB arrays, read and written one at a time, so memory does not grow
with the length of the video. A video with rotation metadata is read upright (ffmpeg applies the
rotation) and written upright; one with a variable frame rate is read at its average rate (ffmpeg
repeats or drops frames to it), so the output plays as long as the input. ``imageio-ffmpeg`` (the
optional ``video`` extra) is imported lazily; without it every entry point raises ``VideoError``
naming the extra.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from ..extras import missing_message
from ..io.files import TMP_PREFIX, share

OUTPUT_SUFFIXES = (".mp4", ".gif")

# One palette per GIF frame: ffmpeg's palettegen then needs no look-ahead, so nothing is buffered.
_GIF_FILTER = "split[a][b];[a]palettegen=stats_mode=single[p];[b][p]paletteuse=new=1"


# ffmpeg log phrases that name the problem, most telling first
_PROBLEMS = ("partial file", "moov atom not found", "Invalid data found", "does not contain any stream",
             "No such file", "Permission denied", "No space left", "corrupt", "Error", "error")


class VideoError(ValueError):
    """A video that cannot be read or written; ``str()`` is one line."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says: ``fps``, frame size ``size_hw`` (H, W), ``duration`` in seconds
    (0 when unknown) and ``frames_estimate`` = round(fps · duration), which can be off by a few."""

    fps: float
    size_hw: tuple[int, int]
    duration: float

    @property
    def frames_estimate(self) -> int:
        return round(self.fps * self.duration)


def _ffmpeg() -> ModuleType:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise VideoError(missing_message("video", "imageio-ffmpeg", "video")) from None
    # it warns when a rotated video's frames come out upright (their size then differs from the stream's):
    # that is what we want, and no line for the user
    logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)
    return imageio_ffmpeg


def _reason(text: object) -> str:
    """The line of an ffmpeg log that names the problem, without its "[demuxer @ 0x...]" prefix."""
    lines = [re.sub(r"^(\[[^]]*\]\s*)+", "", line).strip() for line in str(text).splitlines()]
    lines = [line for line in lines if line and not line.startswith("===")]
    for phrase in _PROBLEMS:
        for line in lines:
            if phrase in line:
                return line
    return lines[-1] if lines else "unknown error"


class VideoReader:
    """Iterate over the frames of a video file as (H, W, 3) uint8 arrays, decoded one at a time.

    ``fps`` (optional) resamples the stream to that frame rate (ffmpeg's ``fps`` filter, which
    drops or repeats frames); ``start`` / ``end`` (seconds) read only that part; ``max_frames``
    stops early. ``info`` describes the source. Use as a context manager (or call ``close``) so the
    ffmpeg process ends when reading stops early.
    """

    def __init__(self, path: str | Path, fps: float | None = None, max_frames: int | None = None,
                 start: float = 0.0, end: float | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise VideoError(f"{self.path}: no such file")
        if self.path.stat().st_size == 0:
            raise VideoError(f"{self.path}: empty file")
        if fps is not None and not fps > 0:
            raise VideoError(f"fps must be positive, got {fps}")
        if start < 0 or (end is not None and end <= start):
            raise VideoError(f"the time range must have 0 <= start < end, got start {start:g}, end {end}")
        meta = self._open(fps, start, end)
        if fps is None and meta.get("fps"):  # decode at the rate the container states, as it will be written
            self.close()
            meta = self._open(float(meta["fps"]), start, end)
        width, height = meta["size"]
        self.info = VideoInfo(float(meta.get("fps") or 0.0), (int(height), int(width)),
                              float(meta.get("duration") or 0.0))
        self.fps = float(fps) if fps is not None else self.info.fps
        self.max_frames = max_frames
        self.seconds = max(0.0, (self.info.duration if end is None else min(end, self.info.duration)) - start)

    def _open(self, fps: float | None, start: float, end: float | None) -> dict:
        """Start ffmpeg decoding at ``fps`` (None: as stored) over [start, end); returns its metadata."""
        output = ["-vf", f"fps={fps}"] if fps is not None else []
        if end is not None:
            output += ["-t", f"{end - start:.6f}"]
        seek = ["-ss", f"{start:.6f}"] if start else []
        self._gen = _ffmpeg().read_frames(str(self.path), input_params=seek, output_params=output)
        try:
            meta = next(self._gen)
            meta["size"] = tuple(meta["size"])
        except (OSError, RuntimeError, KeyError, ValueError, TypeError, StopIteration) as err:
            self.close()
            raise VideoError(f"{self.path}: not a readable video ({_reason(err)})") from None
        return meta

    @property
    def frames_estimate(self) -> int:
        """Frames this reader will probably yield (after resampling, the time range and ``max_frames``)."""
        n = round(self.fps * self.seconds)
        return n if self.max_frames is None else min(n, self.max_frames)

    def __iter__(self) -> Iterator[np.ndarray]:
        h, w = self.info.size_hw
        count = 0
        while self.max_frames is None or count < self.max_frames:
            try:
                raw = next(self._gen)
            except StopIteration:
                return
            except (OSError, RuntimeError) as err:
                raise VideoError(f"{self.path}: frame {count} cannot be decoded ({_reason(err)})") from None
            count += 1
            yield np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)

    def close(self) -> None:
        self._gen.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def batched(frames: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """Group frames into lists of ``size`` (the last one may be shorter)."""
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class VideoWriter:
    """Write (H, W, 3) uint8 frames to an ``.mp4`` (H.264) or ``.gif`` file as they come.

    The size is kept exactly: even sizes are stored as yuv420p (plays everywhere), odd ones as
    yuv444p (H.264 cannot subsample an odd size; some players, browsers among them, refuse
    4:4:4). GIFs get one palette per frame. Frames go to a temporary file beside ``path`` that is
    renamed onto it only when the video is finished, so a failure (a full disk) leaves no half a
    video under the final name. Use as a context manager: leaving it finishes the file (or, on an
    exception, discards it), and an ffmpeg failure raises ``VideoError``.
    """

    def __init__(self, path: str | Path, fps: float, size_hw: tuple[int, int]) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in OUTPUT_SUFFIXES:
            raise VideoError(f"{self.path}: output must end in {' or '.join(OUTPUT_SUFFIXES)}")
        if not fps > 0:
            raise VideoError(f"{self.path}: frame rate must be positive, got {fps}")
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        h, w = self.size_hw
        if suffix == ".gif":
            kwargs = {"codec": "gif", "pix_fmt_out": "pal8", "quality": None,
                      "output_params": ["-filter_complex", _GIF_FILTER, "-loop", "0"]}
        else:
            even = h % 2 == 0 and w % 2 == 0
            kwargs = {"codec": "libx264", "pix_fmt_out": "yuv420p" if even else "yuv444p", "quality": 8,
                      "output_params": ["-movflags", "+faststart"]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.frames = 0
        self._partial = self.path.with_name(f"{TMP_PREFIX}{self.path.stem}-{uuid.uuid4().hex[:8]}{suffix}")
        self._gen = _ffmpeg().write_frames(str(self._partial), (w, h), fps=fps, macro_block_size=1,
                                           ffmpeg_log_level="error", **kwargs)
        self._gen.send(None)

    def write(self, frame: np.ndarray) -> None:
        """Append one frame (H, W, 3) uint8 of the writer's size."""
        if frame.shape != (*self.size_hw, 3) or frame.dtype != np.uint8:
            raise VideoError(f"frame of shape {frame.shape} {frame.dtype}, expected {(*self.size_hw, 3)} uint8")
        try:
            self._gen.send(np.ascontiguousarray(frame))
        except OSError as err:
            raise VideoError(f"{self.path}: ffmpeg stopped writing ({_reason(err)})") from None
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        """Finish the file (ffmpeg flushes and exits) and put it in place; with ``keep`` False (a failed run)
        remove what was written. Raises ``VideoError`` when ffmpeg left no file."""
        try:
            self._gen.close()
        finally:
            written = self._partial.is_file() and self._partial.stat().st_size > 0
            if keep and written:
                share(self._partial)
                os.replace(self._partial, self.path)
            else:
                self._partial.unlink(missing_ok=True)
        if keep and self.frames and not written:
            raise VideoError(f"{self.path}: ffmpeg wrote no file")

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, *exc) -> None:
        self.close(keep=kind is None)



def overlay_video(source: str | Path, reading: tuple[float | None, float, float | None], n_frames: int, fps: float,
                  size_hw: tuple[int, int], outputs: Sequence[str | Path],
                  draw: Callable[[int, np.ndarray], Image.Image], *, keep: Collection[int] = (),
                  progress: bool = True) -> dict[int, Image.Image]:
    """Decode ``source`` a second time (``reading``: its fps, start and end, as the maps were made), write
    ``draw(i, frame)`` of each frame to every one of ``outputs`` and return the pictures of the frames in
    ``keep``. The outputs are put in place only when all ``n_frames`` were written; a stream that decodes
    to another count is a ``VideoError``."""
    from tqdm.auto import tqdm

    written, kept = 0, {}
    with VideoReader(source, reading[0], n_frames, reading[1], reading[2]) as reader:
        writers, finished = [VideoWriter(p, fps, size_hw) for p in outputs], False
        try:
            for frame in tqdm(reader, total=n_frames, desc="overlay", unit="frame", disable=not progress):
                picture = draw(written, frame)
                for writer in writers:
                    writer.write(np.asarray(picture))
                if written in keep:
                    kept[written] = picture
                written += 1
            finished = written == n_frames
        finally:
            for writer in writers:
                writer.close(keep=finished)
    if written != n_frames:
        raise VideoError(f"{source}: decoded {n_frames} frames the first time and {written} the second")
    return kept
