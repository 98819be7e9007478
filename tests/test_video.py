"""``vitprobe video`` and the streaming reader/writer: frame count, size, fps, colour scale, bad videos,
bounded memory, and a panning video whose heat map must follow the object (offline model)."""

from __future__ import annotations

import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vitprobe import render
from vitprobe.cli import app

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

from vitprobe.render.video import VideoError, VideoReader, VideoWriter  # noqa: E402
from vitprobe.video import VideoOptions, attention_video  # noqa: E402

runner = CliRunner()

PAN_HW = (224, 384)
PAN_FRAMES = 8
PAN_FPS = 10.0


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VITPROBE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def probe(path: Path) -> tuple[dict, list[np.ndarray]]:
    """Metadata and frames of a video read with imageio-ffmpeg directly (not through vitprobe)."""
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return meta, [np.frombuffer(raw, np.uint8).reshape(h, w, 3) for raw in gen]


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    with VideoWriter(path, fps, frames[0].shape[:2]) as writer:
        for frame in frames:
            writer.write(frame)
    return path


@pytest.fixture(scope="module")
def panning(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A sample photo (chelsea, 100 px tall) on a grey canvas, seen through a 224x384 window that pans
    right: the cat moves left through the frame and stays whole in it. Returns the video and the
    x of the cat's centre in each frame."""
    skimage_data = pytest.importorskip("skimage.data")
    photo = Image.fromarray(skimage_data.chelsea())
    photo = photo.resize((round(photo.width * 100 / photo.height), 100), Image.Resampling.LANCZOS)
    h, w = PAN_HW
    first, last = w - photo.width / 2 - 16, photo.width / 2 + 16  # cat centre in the first and last frame
    canvas = Image.new("RGB", (int(w + first - last) + 1, h), (128, 128, 128))
    left = int(first - photo.width / 2)
    canvas.paste(photo, (left, (h - photo.height) // 2))
    pixels = np.asarray(canvas)
    offsets = np.round(np.linspace(0, first - last, PAN_FRAMES)).astype(int)
    frames = [np.ascontiguousarray(pixels[:, o : o + w]) for o in offsets]
    path = write_video(tmp_path_factory.mktemp("pan") / "pan.mp4", frames, PAN_FPS)
    return path, left + photo.width / 2 - offsets


def moving_noise(n: int, hw: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Smooth random frames (blocky noise, upscaled) that change from frame to frame."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, hw[0] // 8 + 1, hw[1] // 8 + 1, 3), dtype=np.uint8)
    return [np.ascontiguousarray(np.kron(s, np.ones((8, 8, 1), np.uint8))[: hw[0], : hw[1]]) for s in small]


def test_heatmap_follows_the_object_across_a_pan(panning, tmp_path):
    pytest.importorskip("onnx")
    video, centre_x = panning
    out, maps_path = tmp_path / "out.mp4", tmp_path / "maps.npy"
    result = runner.invoke(app, ["video", str(video), "--out", str(out), "--gif", "--maps", str(maps_path),
                                 "--short-side", "224"])
    assert result.exit_code == 0, result.output
    assert f"{PAN_FRAMES} frames of {PAN_HW[1]}x{PAN_HW[0]} at 10 fps" in result.stdout
    meta, frames = probe(out)
    assert len(frames) == PAN_FRAMES and frames[0].shape == (*PAN_HW, 3) and meta["fps"] == PAN_FPS
    with Image.open(out.with_suffix(".gif")) as gif:
        assert gif.n_frames == PAN_FRAMES and gif.size == (PAN_HW[1], PAN_HW[0])
    maps = np.load(maps_path)
    assert maps.shape == (PAN_FRAMES, 16, 27)  # 224x384 input snapped to 14-px patches: 224x378
    # centroid of the attention above each frame's median, in frame pixels
    above = np.clip(maps - np.median(maps, axis=(1, 2), keepdims=True), 0, None)
    cols = (np.arange(maps.shape[2]) + 0.5) / maps.shape[2] * PAN_HW[1]
    found_x = (above.sum(axis=1) * cols).sum(axis=1) / above.sum(axis=(1, 2))
    patch_px = PAN_HW[0] / 16
    assert np.all(np.abs(found_x - centre_x) < 1.5 * patch_px), (found_x.round(), centre_x.round())
    assert np.all(np.diff(found_x) < 0)  # moves left every frame, as the cat does


@pytest.mark.parametrize("hw", [(48, 64), (45, 61)])  # even: yuv420p; odd: size kept with yuv444p
def test_frame_count_size_and_fps_are_kept(tiny_dirs, tmp_path, hw):
    video = write_video(tmp_path / "in.mp4", moving_noise(12, hw), 12.0)
    out = tmp_path / "out.mp4"
    result = runner.invoke(app, ["video", str(video), "--out", str(out), "--model", str(tiny_dirs["vit"])])
    assert result.exit_code == 0, result.output
    meta, frames = probe(out)
    assert len(frames) == 12 and frames[0].shape == (*hw, 3) and meta["fps"] == 12.0


def test_fps_resampling_gif_and_max_frames(tiny_dirs, tmp_path):
    video = write_video(tmp_path / "in.mp4", moving_noise(12, (48, 64)), 12.0)
    half = tmp_path / "half.mp4"
    result = runner.invoke(app, ["video", str(video), "--out", str(half), "--model", str(tiny_dirs["vit"]),
                                 "--fps", "6", "--method", "rollout", "--gif"])
    assert result.exit_code == 0, result.output
    meta, frames = probe(half)
    assert len(frames) == 6 and frames[0].shape == (48, 64, 3) and meta["fps"] == 6.0
    with Image.open(half.with_suffix(".gif")) as gif:  # GIF delays are whole centiseconds: 17 cs for 6 fps
        assert gif.n_frames == 6 and gif.size == (64, 48) and gif.info["duration"] in (160, 170)
    out = tmp_path / "out.mp4"
    result = runner.invoke(app, ["video", str(video), "--out", str(out), "--model", str(tiny_dirs["vit"]),
                                 "--max-frames", "5", "--method", "layers", "--layer-fusion", "max"])
    assert result.exit_code == 0, result.output
    assert len(probe(out)[1]) == 5


@pytest.mark.parametrize("normalize", ["video", "frame"])
def test_colour_scale_is_the_documented_one(tiny_dirs, tmp_path, normalize):
    import vitprobe as vp

    model = vp.load(str(tiny_dirs["vit"]))
    video = write_video(tmp_path / "in.mp4", moving_noise(6, (64, 96), seed=1), 8.0)
    out, maps_path = tmp_path / "out.mp4", tmp_path / "maps.npy"
    style = render.Style(alpha=0.8)
    opts = VideoOptions(normalize=normalize, style=style, batch_size=4, short_side=None)  # the model's own 32 px
    result = attention_video(model, video, [out], opts, maps_path=maps_path, progress=False)
    maps = np.load(maps_path)
    assert result.value_range == (float(maps.min()), float(maps.max()))
    with VideoReader(video) as reader:
        inputs = list(reader)
    written = probe(out)[1]
    lo, hi = result.value_range[0], float(np.percentile(maps, 99))  # the images' colour scale, over all frames
    telling = 0
    for frame, heat, got in zip(inputs, maps, written, strict=True):
        shared = np.asarray(render.overlay(Image.fromarray(frame), heat, style, vmin=lo, vmax=hi), np.float32)
        own = np.asarray(render.overlay(Image.fromarray(frame), heat, style), np.float32)
        expected, other = (shared, own) if normalize == "video" else (own, shared)
        assert np.abs(got - expected).mean() < 3.0  # what the near-lossless encoder leaves
        if np.abs(shared - own).mean() > 10:  # frames whose own range is far from the video's
            telling += 1
            assert np.abs(got - other).mean() > 8
    assert telling >= 2


def test_frames_are_streamed_in_batches_with_bounded_memory(tiny_dirs, tmp_path, monkeypatch):
    import vitprobe as vp
    import vitprobe.video as video_mod

    model = vp.load(str(tiny_dirs["vit"]))
    seen: list[int] = []
    original = video_mod.frame_maps

    def counting(model, frames, opts):
        seen.append(len(frames))
        return original(model, frames, opts)

    monkeypatch.setattr(video_mod, "frame_maps", counting)
    peaks = {}
    for n in (8, 40):  # 240x320 frames: 230 KB each, 9 MB for 40 frames held at once
        video = write_video(tmp_path / f"in{n}.mp4", moving_noise(n, (240, 320)), 10.0)
        seen.clear()
        tracemalloc.start()
        result = attention_video(model, video, [tmp_path / f"out{n}.mp4"], VideoOptions(batch_size=4), progress=False)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert result.frames == n and seen == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    assert peaks[40] < peaks[8] + 2e6, peaks  # measured: +0.01 MB streamed, +3.4 MB if pass 1 kept the frames


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.mp4", b"", "empty file"),
        ("garbage.mp4", b"not a video at all " * 50, "not a readable video"),
        ("notes.txt", b"hello\n", "not a readable video"),
    ],
)
def test_bad_videos_fail_with_one_line(tiny_dirs, tmp_path, name, content, reason):
    bad = tmp_path / name
    bad.write_bytes(content)
    result = runner.invoke(app, ["video", str(bad), "--out", str(tmp_path / "out.mp4"), "--model",
                                 str(tiny_dirs["vit"])])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitprobe: error:") and reason in lines[0], result.stderr
    assert not (tmp_path / "out.mp4").exists()


def test_truncated_video_keeps_what_decodes_and_warns(tiny_dirs, tmp_path, caplog):
    good = write_video(tmp_path / "good.mp4", moving_noise(20, (48, 64)), 10.0).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good[: len(good) // 2])  # header (faststart) kept, half the frame data gone
    out = tmp_path / "out.mp4"
    result = runner.invoke(app, ["video", str(cut), "--out", str(out), "--model", str(tiny_dirs["vit"])])
    assert result.exit_code == 0, result.output
    decoded = len(probe(out)[1])
    assert 0 < decoded < 18
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"decoded {decoded} frames where the container promises 20" in warnings[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "out.avi"], "--out must end in .mp4 or .gif"),
        (["--method", "bogus"], "--method: unknown method 'bogus'"),
        (["--method", "rollout", "--layer", "1"], "--layer: no chosen method (rollout) takes this option"),
        (["--normalize", "global"], "normalize must be one of video, frame"),
        (["--fps", "0"], "fps must be positive"),
        (["--layer", "7"], "layer 7 does not exist"),
    ],
)
def test_bad_options_fail_with_one_line(tiny_dirs, tmp_path, args, message):
    video = write_video(tmp_path / "in.mp4", moving_noise(3, (32, 32)), 5.0)
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "out.mp4")]
    result = runner.invoke(app, ["video", str(video), "--model", str(tiny_dirs["vit"]), *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_writer_rejects_frames_of_another_size(tmp_path):
    with VideoWriter(tmp_path / "x.mp4", 5.0, (32, 48)) as writer:
        writer.write(np.zeros((32, 48, 3), np.uint8))
        with pytest.raises(VideoError, match="expected"):
            writer.write(np.zeros((48, 32, 3), np.uint8))
    with pytest.raises(VideoError, match="must end in"):
        VideoWriter(tmp_path / "x.avi", 5.0, (32, 48))


def test_time_range_and_the_default_speed_first_size(tiny_dirs, tmp_path):
    video = write_video(tmp_path / "in.mp4", moving_noise(12, (48, 64)), 12.0)
    out, maps = tmp_path / "part.mp4", tmp_path / "maps.npy"
    result = runner.invoke(app, ["video", str(video), "--out", str(out), "--model", str(tiny_dirs["vit"]),
                                 "--start", "0.25", "--end", "0.75", "--maps", str(maps)])
    assert result.exit_code == 0, result.output
    meta, frames = probe(out)
    assert len(frames) == 6 and meta["fps"] == 12.0
    whole = np.load(maps)
    runner.invoke(app, ["video", str(video), "--out", str(tmp_path / "all.mp4"), "--model", str(tiny_dirs["vit"]),
                        "--maps", str(tmp_path / "all.npy")])
    np.testing.assert_allclose(whole, np.load(tmp_path / "all.npy")[3:9], atol=1e-6)  # frames 3..8 of 0..11
    assert whole.shape[1:] == (28, 37)  # the whole 48x64 frame at short side 224 (224x296): 8-px patches
    bad = runner.invoke(app, ["video", str(video), "--out", str(out), "--model", str(tiny_dirs["vit"]),
                              "--start", "2", "--end", "1"])
    assert bad.exit_code == 2 and "0 <= start < end" in bad.stderr


def ffmpeg(*args: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True, timeout=60)


def test_a_video_without_video_frames_is_one_line(tiny_dirs, tmp_path):
    audio = tmp_path / "audio_only.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", str(audio))
    result = runner.invoke(app, ["video", str(audio), "--out", str(tmp_path / "o.mp4"), "--model",
                                 str(tiny_dirs["vit"])])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "audio_only.mp4: not a readable video" in lines[0]


def test_rotated_and_variable_rate_videos_are_read_upright_and_in_time(tiny_dirs, tmp_path):
    plain = tmp_path / "plain.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=1", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           str(plain))
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(plain), "-c", "copy", str(rotated))
    out = tmp_path / "upright.mp4"
    result = runner.invoke(app, ["video", str(rotated), "--out", str(out), "--model", str(tiny_dirs["vit"])])
    assert result.exit_code == 0 and "frame size" not in result.stderr, result.output  # only the progress bars
    meta, frames = probe(out)
    assert len(frames) == 10 and frames[0].shape == (64, 48, 3)  # portrait: the rotation was applied
    vfr = tmp_path / "vfr.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=2", "-vf",
           "setpts='if(lt(N,10),N/10/TB,(2*N-10)/10/TB)'", "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt",
           "yuv420p", str(vfr))
    result = runner.invoke(app, ["video", str(vfr), "--out", str(tmp_path / "vfr_out.mp4"), "--model",
                                 str(tiny_dirs["vit"])])
    assert result.exit_code == 0, result.output
    in_meta = imageio_ffmpeg.count_frames_and_secs(str(vfr))
    out_meta = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "vfr_out.mp4"))
    assert abs(out_meta[1] - in_meta[1]) < 0.3  # plays as long as the input (2.9 s: 10 frames at 10/s, 10 at 5/s)
