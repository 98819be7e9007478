"""Space-time statistics of video models: equal to float64 references written from their definitions, a
hand-made tracking attention on a clip of a moving square, and ``vitprobe analyze`` over clips."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vitprobe as vp
from vitprobe.analysis.distance import (
    MeanDistance,
    TemporalProfile,
    mean_attention_distance,
    temporal_profile,
)
from vitprobe.cli import app
from vitprobe.kernels.base import LayerRequest
from vitprobe.kernels.torch_ops import attend, from_probs
from vitprobe.layout import TokenLayout
from vitprobe.video_analysis import list_clips, probe_clips, uniform_frames

from .video_models import PATCH, make_tiny_video, moving_square, write_clip

pytest.importorskip("imageio_ffmpeg")
runner = CliRunner()

LAYOUTS = {  # (prefix, grid, patch, steps, tubelet, time last)
    "cls, (t, row, col)": TokenLayout(("cls",), (2, 3), 16, 3, 2),
    "cls, (row, col, t)": TokenLayout(("cls",), (2, 3), 16, 3, 1, time_last=True),
    "none, tubelet 2": TokenLayout((), (3, 2), 8, 4, 2),
}


def _position(layout: TokenLayout, token: int) -> tuple[int, int, int]:
    """(step, row, col) of a patch token, from the token-order definition itself."""
    h, w = layout.grid_hw
    i = token - layout.n_prefix
    if layout.time_last:
        return i % layout.n_steps, (i // layout.n_steps) // w, (i // layout.n_steps) % w
    return i // (h * w), (i % (h * w)) // w, i % w


def _references(attn: np.ndarray, layout: TokenLayout) -> dict[str, np.ndarray]:
    """float64 loops over queries and keys: distances in pixels and frames, same / earlier / later shares."""
    b, heads, t, _ = attn.shape
    p = layout.n_prefix
    out = {name: np.zeros((b, heads)) for name in ("space", "time", "same", "earlier", "later")}
    for q in range(p, t):
        sq, rq, cq = _position(layout, q)
        for k in range(p, t):
            sk, rk, ck = _position(layout, k)
            a = attn[:, :, q, k]
            out["space"] += a * layout.patch_size * math.hypot(rq - rk, cq - ck)
            out["time"] += a * abs(sq - sk) * layout.tubelet
            out["same" if sk == sq else "earlier" if sk < sq else "later"] += a
    return {name: value / (t - p) for name, value in out.items()}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_time_statistics_equal_float64_references(name):
    layout = LAYOUTS[name]
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, layout.n_tokens, 8) * 2, torch.randn(2, 3, layout.n_tokens, 8) * 2
    attn64 = torch.softmax(q.double() @ k.double().transpose(-1, -2) * 0.5, dim=-1)
    ref = _references(attn64.numpy(), layout)
    attn = attn64.float()
    got = {"space": mean_attention_distance(attn, layout), "time": mean_attention_distance(attn, layout, axis="time")}
    profile = temporal_profile(attn, layout)
    got.update(same=profile[..., 0], earlier=profile[..., 1], later=profile[..., 2])
    for key, value in got.items():
        assert np.allclose(value.double().numpy(), ref[key], rtol=1e-5, atol=1e-6), key
    # the streamed reducers, on the kernel from q and k and on probabilities given as they are
    for result_of in (lambda req: attend(q, k, 0.5, req), lambda req: from_probs(attn, req)):
        reducers = {"space": MeanDistance(), "time": MeanDistance(axis="time"), "profile": TemporalProfile()}
        request = LayerRequest()
        for reducer in reducers.values():
            reducer.ask(request, layout, torch.device("cpu"))
        result = result_of(request)
        assert np.allclose(reducers["space"].reduce(result, layout).numpy(), ref["space"], rtol=1e-5)
        assert np.allclose(reducers["time"].reduce(result, layout).numpy(), ref["time"], rtol=1e-5)
        shares = reducers["profile"].reduce(result, layout).numpy()
        assert np.allclose(shares, np.stack([ref["same"], ref["earlier"], ref["later"]], -1), rtol=1e-5, atol=1e-7)
    # without a prefix the shares sum to one; with a CLS they leave out its mass
    total = profile.sum(-1)
    mass = attn[:, :, layout.n_prefix :, layout.n_prefix :].sum(-1).mean(-1)
    assert torch.allclose(total, mass, atol=1e-6)


def test_uniform_attention_references():
    layout = LAYOUTS["none, tubelet 2"]
    uniform = torch.full((1, 1, layout.n_tokens, layout.n_tokens), 1 / layout.n_tokens)
    assert float(mean_attention_distance(uniform, layout, axis="time")) == pytest.approx(uniform_frames(layout))
    assert uniform_frames(layout) == pytest.approx(2 * (16 - 1) / 12)  # t = 4, tubelet 2
    identity = torch.eye(layout.n_tokens)[None, None]
    assert float(mean_attention_distance(identity, layout, axis="time")) == 0.0
    assert temporal_profile(identity, layout)[0, 0].tolist() == [1.0, 0.0, 0.0]


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """VideoMAE taking 8 frames of 64 px: 4 tubelet steps of 2 frames on an 8x8 grid of 8-px patches."""
    return vp.load(make_tiny_video("videomae", tmp_path_factory.mktemp("long") / "m", frames=8, side=64))


@pytest.mark.parametrize("speed", [4, 8])
def test_a_tracking_attention_on_a_moving_square_gives_its_speed(long_model, speed):
    """A one-patch square moving right ``speed`` px a frame (a whole number of patches a tubelet step). The
    hand-made attention tracks it: at each step the patch the square covers attends wholly to the patch it
    covers one step later (the last step: one earlier),
    every other patch to itself. The square is found in the clip's own pixels after the model's
    preprocessing; each tracked row is one step (tubelet frames) and speed × tubelet pixels away."""
    model = long_model
    layout = model.layout()
    tubelet, steps, n = layout.tubelet, layout.n_steps, layout.n_patches
    clip = moving_square(frames=8, size=(64, 64), side=PATCH, speed=(0, speed), start=(16, 0))
    pixels, _, _ = model.prepare(clip)
    first = pixels[0, ::tubelet, 0]  # each step's first frame (steps, H, W), red channel
    per_patch = first.reshape(steps, layout.grid_hw[0], PATCH, layout.grid_hw[1], PATCH).mean(dim=(2, 4))
    where = [divmod(int(per_patch[s].argmax()), layout.grid_hw[1]) for s in range(steps)]
    assert where == [(2, s * speed * tubelet // PATCH) for s in range(steps)]
    attn = torch.eye(layout.n_tokens)[None, None].clone()
    for s, (r, c) in enumerate(where):
        target = s + 1 if s + 1 < steps else s - 1
        q = layout.patch_index(r, c, s)
        attn[0, 0, q] = 0
        attn[0, 0, q, layout.patch_index(*where[target], target)] = 1
    frames = float(mean_attention_distance(attn, layout, axis="time"))
    space = float(mean_attention_distance(attn, layout))
    assert frames == pytest.approx(steps * tubelet / n)  # steps rows one step away, the rest at distance 0
    assert space == pytest.approx(steps * speed * tubelet / n)
    assert space / frames == pytest.approx(speed)  # pixels per frame: the square's speed
    shares = temporal_profile(attn, layout)[0, 0]
    assert shares.tolist() == pytest.approx([(n - steps) / n, 1 / n, (steps - 1) / n])


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    (root / "sub").mkdir()
    paths = [write_clip(root / "a.mp4", moving_square(frames=6)),
             write_clip(root / "sub" / "b.mp4", moving_square(frames=9, speed=(2, 1)))]
    (root / "broken.mp4").write_text("not a video\n" * 10)
    return root, paths


@pytest.mark.parametrize("kind", ["videomae", "timesformer"])
def test_analyze_over_clips(tmp_path, clips, kind):
    root, paths = clips
    model_dir = make_tiny_video(kind, tmp_path / kind)
    out = tmp_path / "run"
    result = runner.invoke(app, ["analyze", str(root), "--model", str(model_dir), "-o", str(out), "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "2 of 3 clips analysed" in result.output
    import pyarrow.parquet as pq

    records = pq.read_table(out / "records.parquet").to_pylist()
    model = vp.load(model_dir)
    metrics = {r["metric"] for r in records}
    expected_metrics = {"mean_attention_distance", "mean_attention_distance_frames", "entropy_rows", "temporal_same",
                        "temporal_earlier", "temporal_later"}
    expected_metrics |= {"entropy_cls", "entropy_rows_temporal"} if kind == "timesformer" else set()
    assert metrics == expected_metrics
    assert len(records) == 2 * model.num_layers * model.num_heads * len(metrics)
    # each clip's values equal float64 references on the attention captured in full
    for path in paths:
        cap = model.capture(path, full_layers=list(range(model.num_layers)))
        timed = cap.temporal or cap
        for layer in range(model.num_layers):
            space = _references(cap.full[layer].double().numpy(), cap.layout)["space"][0]
            time_ref = _references(timed.full[layer].double().numpy(), cap.layout)
            got = {(r["metric"], r["head"]): r["value"] for r in records if r["image"] == str(path) and
                   r["layer"] == layer}
            for head in range(model.num_heads):
                assert got["mean_attention_distance", head] == pytest.approx(space[head], rel=1e-5)
                assert got["mean_attention_distance_frames", head] == pytest.approx(time_ref["time"][0, head], rel=1e-5)
                assert got["temporal_later", head] == pytest.approx(time_ref["later"][0, head], rel=1e-5, abs=1e-7)
    with open(out / "failures.csv") as f:
        failures = list(csv.DictReader(f))
    assert [row["file"] for row in failures] == [str(root / "broken.mp4")]
    assert "not a readable video" in failures[0]["reason"]
    aggregates = json.loads((out / "aggregates.json").read_text())
    assert aggregates["clips"] == {"listed": 3, "analysed": 2, "failed": 1}
    assert aggregates["layout"]["time_steps"] == model.layout().n_steps
    assert (out / "report.html").read_text().count("report_files/") == 2
    assert (out / "report_files" / "space_time.png").stat().st_size > 1000


def test_analyze_clips_from_a_list_and_nothing_readable(tmp_path, clips):
    root, paths = clips
    listing = tmp_path / "clips.txt"
    listing.write_text(f"# two clips\n{paths[0]}\n\n{root / 'broken.mp4'}\n")
    assert list_clips(listing) == [paths[0], root / "broken.mp4"]
    assert list_clips(root) == sorted([*paths, root / "broken.mp4"])
    model_dir = make_tiny_video("vivit", tmp_path / "vivit")
    only_bad = tmp_path / "bad.txt"
    only_bad.write_text(f"{root / 'broken.mp4'}\n{tmp_path / 'missing.mp4'}\n")
    result = runner.invoke(app, ["analyze", str(only_bad), "--model", str(model_dir), "-o", str(tmp_path / "r")])
    assert result.exit_code == 1 and "none of the 2 clips could be analysed" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["analyze", str(tmp_path / "nowhere"), "--model", str(model_dir)])
    assert result.exit_code == 2 and "no such file or directory" in result.output
    result = runner.invoke(app, ["analyze", str(listing), "--model", str(model_dir), "--size", "32", "32"])
    assert result.exit_code == 2 and "apply to images" in result.output


def test_probe_clips_shapes(tmp_path):
    model = vp.load(make_tiny_video("vjepa2", tmp_path / "v"))
    pixels, _, _ = model.prepare([moving_square(frames=4), moving_square(frames=5)])
    metrics, layout = probe_clips(model, pixels)
    assert layout.has_time and "entropy_cls" not in metrics
    for value in metrics.values():
        assert value.shape == (model.num_layers, 2, model.num_heads) and value.dtype == torch.float64
    total = metrics["temporal_same"] + metrics["temporal_earlier"] + metrics["temporal_later"]
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)  # no prefix token: the shares sum to one
