"""``vitprobe video --model <video model>``: sliding windows of the model's clip length, overlaps averaged,
each tubelet's map on its frames; the output keeps the input's frames and rate; strip and maps written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vitprobe as vp
from vitprobe.cli import app
from vitprobe.clip_video import spread_over_frames, window_starts

from .video_models import FRAMES, make_tiny_video, moving_square, write_clip

pytest.importorskip("imageio_ffmpeg")
from vitprobe.render.video import VideoReader  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clip-video")
    return {kind: make_tiny_video(kind, root / kind) for kind in ("vivit", "videomae", "timesformer")}


@pytest.fixture(scope="module")
def square(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clips") / "square.mp4", moving_square(frames=11, size=(40, 56)),
                      fps=12.0)


def test_window_starts_cover_every_frame_and_end_on_the_last():
    assert window_starts(11, 4, 2) == [0, 2, 4, 6, 7]
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(4, 4, 3) == [0]
    assert window_starts(9, 4, 4) == [0, 4, 5]
    with pytest.raises(ValueError, match="3 frames and the model takes clips of 4"):
        window_starts(3, 4, 2)


def test_overlapping_windows_are_averaged_per_frame():
    rng = np.random.default_rng(0)
    windows = rng.random((3, 2, 3, 4))  # 3 windows of 2 steps of 2 frames each
    starts = [0, 2, 3]
    maps, coverage = spread_over_frames(windows, starts, 7, tubelet=2)
    expected = np.zeros((7, 3, 4))
    count = np.zeros(7)
    for w, s in zip(windows, starts, strict=True):
        for i in range(4):  # frame s + i lies in step i // 2
            expected[s + i] += w[i // 2]
            count[s + i] += 1
    assert coverage.tolist() == count.tolist() == [1, 1, 2, 3, 2, 2, 1]
    assert np.allclose(maps, expected / count[:, None, None], atol=1e-6)


@pytest.mark.parametrize("kind", ["vivit", "timesformer"])
def test_video_command_draws_every_frame_from_the_windows(dirs, square, tmp_path, kind):
    out = tmp_path / "out.mp4"
    result = runner.invoke(app, ["video", str(square), "--model", str(dirs[kind]), "-o", str(out), "--stride", "2",
                                 "--gif"])
    assert result.exit_code == 0, result.output
    assert "11 frames of 56x40 at 12 fps" in result.output
    for video in (out, out.with_suffix(".gif")):
        with VideoReader(video) as reader:
            frames = list(reader)
            assert len(frames) == 11 and frames[0].shape == (40, 56, 3)
            assert reader.fps == pytest.approx(12.0, rel=0.05)  # a GIF stores delays in 1/100 s: 12.5
    saved = np.load(tmp_path / "out_maps.npz")
    meta = json.loads(str(saved["meta"]))
    assert meta["window"] == FRAMES and meta["stride"] == 2 and meta["layout"]["time_steps"]
    assert saved["starts"].tolist() == [0, 2, 4, 6, 7]
    # each window's maps are the model's maps of those frames, drawn through the Python API
    model = vp.load(dirs[kind])
    with VideoReader(square) as reader:
        decoded = np.stack(list(reader))
    for i, start in enumerate(saved["starts"]):
        expected = vp.attribute(model, decoded[start : start + FRAMES], method="cls").maps[0].numpy()
        assert np.allclose(saved["windows"][i], expected, atol=1e-6)
    maps, coverage = spread_over_frames(saved["windows"], saved["starts"], 11, model.clip.tubelet)
    assert np.allclose(saved["maps"], maps) and saved["coverage"].tolist() == coverage.tolist()
    strip = Image.open(tmp_path / "out_strip.png")
    assert strip.width > 4 * strip.height


def test_query_tubelets_in_each_window(dirs, square, tmp_path):
    out = tmp_path / "q.mp4"
    result = runner.invoke(app, ["video", str(square), "--model", str(dirs["videomae"]), "-o", str(out),
                                 "--method", "query", "--patch", "1,2,1", "--head", "3"])
    assert result.exit_code == 0, result.output
    saved = np.load(tmp_path / "q_maps.npz")
    model = vp.load(dirs["videomae"])
    with VideoReader(square) as reader:
        decoded = np.stack(list(reader))
    start = int(saved["starts"][1])
    expected = vp.attribute(model, decoded[start : start + FRAMES], method="query", patch=(1, 2, 1), head=3).maps[0]
    assert np.allclose(saved["windows"][1], expected.numpy(), atol=1e-6)
    refused = runner.invoke(app, ["video", str(square), "--model", str(dirs["videomae"]), "-o", str(out),
                                  "--method", "query", "--frame", "3"])
    assert refused.exit_code == 2 and "--frame does not apply to vitprobe video" in refused.output


def test_bad_videos_and_options_give_one_line(dirs, tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n" * 50)
    short = write_clip(tmp_path / "short.mp4", moving_square(frames=3))
    cases = {tmp_path / "missing.mp4": "no such file", tmp_path / "empty.mp4": "empty file",
             tmp_path / "text.mp4": "not a readable video", short: "3 frames and the model takes clips of 4"}
    for path, reason in cases.items():
        result = runner.invoke(app, ["video", str(path), "--model", str(dirs["vivit"]), "-o", str(tmp_path / "o.mp4")])
        lines = [line for line in result.output.splitlines() if line.startswith("vitprobe: error")]
        assert result.exit_code == 1 and len(lines) == 1 and str(path) in lines[0] and reason in lines[0], result.output
        assert "Traceback" not in result.output
    good = write_clip(tmp_path / "good.mp4", moving_square(frames=6))
    for options, reason in ((["--stride", "5"], "stride must lie in [1, 4]"),
                            (["--method", "rollout", "--maps", str(tmp_path / "m.npy")], "must end in .npz"),
                            (["--method", "gradcam"], "draws image maps")):
        result = runner.invoke(app, ["video", str(good), "--model", str(dirs["vivit"]), "-o", str(tmp_path / "o.mp4"),
                                     *options])
        assert result.exit_code == 2 and reason in result.output and "Traceback" not in result.output, result.output


def test_the_docs_strip_example_draws_its_figure(tmp_path):
    """examples/video_strip.py, which draws the frame strip of docs/web-and-video.md with ``vitprobe video --model``."""
    pytest.importorskip("skimage")
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "examples" / "video_strip.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "strip.png")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "24 frames of 112x112 at 12 fps, cls maps of 5 windows of 8 frames every 4" in done.stdout
    strip = Image.open(tmp_path / "strip.png")
    assert strip.width > 5 * strip.height
