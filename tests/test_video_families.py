"""Video transformers loaded from local directories: VideoMAE, ViViT, V-JEPA 2 and TimeSformer. The token
layout is read from each config; the captured attention (under the fused SDPA kernel where the family has
one) equals the family's own eager attention; maps have a time axis; clips come from files or arrays."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

import vitprobe as vp
from vitprobe.cli import family_lines
from vitprobe.models.hf import family_of
from vitprobe.models.huggingface.spec import eager_attention
from vitprobe.models.video import ClipGeometry, VideoModel, sample_indices
from vitprobe.render.video import VideoError, VideoReader

from .video_models import FRAMES, PATCH, SIDE, VIDEO_FAMILIES, make_tiny_video, moving_square, write_clip

GRID = SIDE // PATCH


@pytest.fixture(scope="module")
def video_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("video-families")
    return {kind: make_tiny_video(kind, root / kind, seed=i) for i, kind in enumerate(VIDEO_FAMILIES)}


@pytest.fixture(scope="module")
def video_models(video_dirs):
    return {kind: vp.load(path) for kind, path in video_dirs.items()}


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return moving_square(frames=8)


def _eager(model: VideoModel, pixels: torch.Tensor) -> list[torch.Tensor]:
    """The family's own eager attention of every layer, as transformers returns it."""
    family = family_of(model.module.config.model_type)
    with eager_attention(model.module), torch.no_grad():
        return list(family.run(model.module, pixels, output_attentions=True).attentions)


@pytest.mark.parametrize("kind", sorted(VIDEO_FAMILIES))
def test_layout_read_from_the_config(video_models, kind):
    model = video_models[kind]
    _, prefix, tubelet, time_last, _ = VIDEO_FAMILIES[kind]
    layout = model.layout()
    assert isinstance(model, VideoModel)
    assert layout.prefix_names == prefix
    assert (layout.time_steps, layout.tubelet, layout.time_last) == (FRAMES // tubelet, tubelet, time_last)
    assert layout.grid_hw == (GRID, GRID) and layout.map_shape == (FRAMES // tubelet, GRID, GRID)
    assert layout.n_tokens == len(prefix) + FRAMES // tubelet * GRID * GRID
    title = family_of(model.module.config.model_type).title
    assert any(line.strip().startswith(title + " (") for line in family_lines())


@pytest.mark.parametrize("kind", ["videomae", "vivit", "vjepa2"])
def test_joint_attention_equals_the_family_eager_attention(video_models, clip, kind):
    model = video_models[kind]
    cap = model.capture(clip, full_layers=list(range(model.num_layers)))
    eager = _eager(model, cap.pixels)
    assert len(eager) == model.num_layers
    for layer, reference in enumerate(eager):
        assert cap.full[layer].shape == reference.shape == (1, 4, cap.layout.n_tokens, cap.layout.n_tokens)
        assert torch.allclose(cap.full[layer], reference, atol=1e-5, rtol=0), (kind, layer)
    if kind == "vjepa2":  # the rotation matters: q·kᵀ of the projections alone is another attention
        assert model.sites[0].in_kernel
        assert cap.kernels  # answered from the SDPA call


def test_timesformer_spatial_and_temporal_attention_equal_its_own(video_models, clip):
    model = video_models["timesformer"]
    cap = model.capture(clip, full_layers=[0, 1])
    n, frames = GRID * GRID, FRAMES
    spatial = _eager(model, cap.pixels)  # (F, heads, 1 + n, 1 + n) per layer: frames in the batch
    temporal: list[torch.Tensor] = []  # (n, heads, F, F) per layer, from the module's own forward

    def own(module, inputs, _output):
        if not getattr(module, "_again", False):
            module._again = True
            temporal.append(module(inputs[0], output_attentions=True)[1].detach())
            module._again = False

    handles = [layer.temporal_attention.attention.register_forward_hook(own)
               for layer in model.module.timesformer.encoder.layer]
    with torch.no_grad():
        model.module(pixel_values=cap.pixels)
    for handle in handles:
        handle.remove()
    assert len(temporal) == 2 and cap.temporal is not None and cap.temporal.cls is None

    def token(p: int, f: int) -> int:  # TimeSformer's order: CLS, then (row, col, frame)
        return 1 + p * frames + f

    for layer in range(2):
        joint, spat, temp = cap.full[layer][0], spatial[layer], temporal[layer]
        assert torch.allclose(joint.sum(-1), torch.ones(4, 1 + n * frames), atol=1e-5)
        for f in range(frames):
            rows = [token(p, f) for p in range(n)]
            assert torch.allclose(joint[:, rows][:, :, rows], spat[f, :, 1:, 1:], atol=1e-5, rtol=0)
            assert torch.allclose(joint[:, rows, 0], spat[f, :, 1:, 0], atol=1e-5, rtol=0)
            assert torch.allclose(joint[:, 0, rows] * frames, spat[f, :, 0, 1:], atol=1e-5, rtol=0)
        assert torch.allclose(joint[:, 0, 0], spat[:, :, 0, 0].mean(0), atol=1e-5, rtol=0)
        other = joint[:, token(0, 0), token(1, 1)]  # another frame's patch: no spatial attention there
        assert float(other.abs().max()) == 0.0
        tj = cap.temporal.full[layer][0]
        for p in range(n):
            rows = [token(p, f) for f in range(frames)]
            assert torch.allclose(tj[:, rows][:, :, rows], temp[p], atol=1e-5, rtol=0)
        assert torch.allclose(tj[:, 0, 0], torch.ones(4)) and float(tj[:, 1:, 0].abs().max()) == 0.0
        assert torch.allclose(tj.sum(-1), torch.ones(4, 1 + n * frames), atol=1e-5)
    # the CLS rows the capture keeps are those of the spatial attention, and their maps are (t, H, W)
    res = vp.attribute(model, clip, method="cls", layer=-1, head=2)
    expected = torch.stack([spatial[1][f, 2, 0, 1:] / frames for f in range(frames)]).reshape(1, frames, GRID, GRID)
    assert res.maps.shape == (1, frames, GRID, GRID)
    assert torch.allclose(res.maps, expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["vivit", "timesformer"])
def test_cls_layers_rollout_with_a_time_axis(video_models, clip, kind):
    model = video_models[kind]
    layout = model.layout()
    cls, layers, rollout = vp.attribute(model, clip, method=["cls", "layers", "rollout"])
    for res in (cls, layers, rollout):
        assert res.maps.shape == (1, *layout.map_shape)
    cap = model.capture(clip, full_layers=[-1])
    row = cap.full[model.num_layers - 1][0, :, layout.cls_index]  # (heads, T) over the model's token order
    grid = torch.zeros(4, *layout.map_shape)
    for i, (s, r, c) in enumerate(layout.patch_positions()):
        grid[:, s, r, c] = row[:, layout.n_prefix + i]
    assert torch.allclose(cls.maps[0], grid.mean(0), atol=1e-6)
    assert torch.allclose(cls.detail["heads"][0], grid, atol=1e-6)


@pytest.mark.parametrize("kind", ["videomae", "vjepa2"])
def test_models_without_cls_refuse_cls_maps_in_one_line(video_models, clip, kind):
    with pytest.raises(ValueError, match="no CLS token") as err:
        vp.attribute(video_models[kind], clip, method="rollout")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", sorted(VIDEO_FAMILIES))
def test_query_takes_a_step_row_col_or_a_point_and_a_frame(video_models, clip, kind):
    model = video_models[kind]
    layout = model.layout()
    cap = model.capture(clip, full_layers=[-1])
    full = cap.full[model.num_layers - 1][0]  # (heads, T, T)
    step = layout.n_steps - 1
    res = vp.attribute(model, clip, method="query", patch=(step, 1, 2), head=1)
    index = layout.patch_index(1, 2, step)
    expected = torch.zeros(layout.map_shape)
    for i, (s, r, c) in enumerate(layout.patch_positions()):
        expected[s, r, c] = full[1, index, layout.n_prefix + i]
    assert res.maps.shape == (1, *layout.map_shape)
    assert torch.allclose(res.maps[0], expected, atol=1e-6)
    assert int(res.detail["steps"][0]) == step
    # the same tubelet by a pixel of the source frames and a frame of the clip: clip frame 7 is the last
    # sampled frame (8 frames sampled to 4: 0, 2, 4, 6), which lies in the last step
    geometry = cap.geometry[0]
    assert isinstance(geometry, ClipGeometry) and geometry.frame_indices == (0, 2, 4, 6)
    y, x = geometry.input_to_original((1 + 0.5) * PATCH, (2 + 0.5) * PATCH)
    by_point = vp.attribute(model, clip, method="query", query_xy=(x, y), frame=7, head=1)
    assert torch.equal(by_point.maps, res.maps)
    middle = vp.attribute(model, clip, method="query", patch=(1, 2), head=1)
    assert int(middle.detail["steps"][0]) == layout.n_steps // 2
    with pytest.raises(ValueError, match="outside the clip's 8 frames"):
        vp.attribute(model, clip, method="query", patch=(1, 2), frame=8)


def test_an_image_model_refuses_a_step(tiny_dirs):
    from PIL import Image

    model = vp.load(tiny_dirs["vit"])
    with pytest.raises(ValueError, match="apply to video models"):
        vp.attribute(model, Image.new("RGB", (32, 32)), method="query", patch=(0, 1, 1))


def test_a_file_and_its_decoded_frames_give_the_same_maps(video_models, tmp_path):
    model = video_models["vivit"]
    path = write_clip(tmp_path / "square.mp4", moving_square(frames=10))
    with VideoReader(path) as reader:
        decoded = np.stack(list(reader))
    from_file = vp.attribute(model, path, method="cls")
    from_array = vp.attribute(model, decoded, method="cls")
    assert torch.equal(from_file.maps, from_array.maps)
    assert from_file.geometry[0].frame_indices == tuple(sample_indices(10, FRAMES)) == (0, 2, 5, 7)
    assert from_file.geometry[0].source_frames == 10 and from_file.geometry[0].fps == pytest.approx(8.0)
    two = vp.attribute(model, [path, decoded[::-1]], method="cls")
    assert two.maps.shape == (2, FRAMES // 2, GRID, GRID) and torch.equal(two.maps[:1], from_file.maps)


def test_bad_clips_give_one_line(video_models, tmp_path):
    model = video_models["videomae"]
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n" * 50)
    short = write_clip(tmp_path / "short.mp4", moving_square(frames=3))
    cases = {tmp_path / "missing.mp4": "no such file", tmp_path / "empty.mp4": "empty file",
             tmp_path / "text.mp4": "not a readable video", short: "the clip has 3 frames and the model takes 4"}
    for path, reason in cases.items():
        with pytest.raises(VideoError) as err:
            vp.attribute(model, path, method="query")
        assert str(err.value).startswith(str(path)) and reason in str(err.value) and "\n" not in str(err.value)
    for bad, reason in ((np.zeros((4, 32, 32)), "expected (F, H, W, 3)"), (np.full((4, 8, 8, 3), 2.0), "[0, 1]")):
        with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            vp.attribute(model, bad, method="query")
    with pytest.raises(ValueError, match=r"takes model input \(B, 4, 3, 32, 32\)"):
        model.capture_pixels(torch.zeros(1, 3, 3, 32, 32))


def test_copies_and_pickles_stay_video_models(video_models, clip):
    model = video_models["timesformer"]
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(other, VideoModel) and other.clip == model.clip and other.temporal_sites
        assert other.module is not model.module
        assert torch.equal(vp.attribute(other, clip, method="cls").maps, vp.attribute(model, clip, method="cls").maps)


def test_the_processor_settings_are_used(video_dirs, tmp_path):
    """ViViT rescales to [-1, 1] before its mean and std: the pixels of a grey clip show it."""
    model = vp.load(video_dirs["vivit"])
    grey = np.full((FRAMES, SIDE, SIDE, 3), 51, dtype=np.uint8)
    pixels, _, _ = model.prepare(grey)
    expected = ((51 / 127.5 - 1) - 0.5) / 0.5
    assert torch.allclose(pixels, torch.full_like(pixels, expected), atol=1e-5)
    mae = vp.load(video_dirs["videomae"])
    pixels, _, _ = mae.prepare(grey)
    assert torch.allclose(pixels[0, 0, 0], torch.full((SIDE, SIDE), (51 / 255 - 0.485) / 0.229), atol=1e-5)


@pytest.mark.parametrize("method", ["gradrollout", "flow", "positions", "gradcam"])
def test_image_methods_refuse_video_models_in_one_line(video_models, clip, method):
    with pytest.raises(ValueError, match=f"method '{method}' draws image maps; video models take cls, query") as err:
        vp.attribute(video_models["vivit"], clip, method=method)
    assert "\n" not in str(err.value)


def test_maps_on_the_clip_frames(video_models):
    wide = moving_square(frames=8, size=(40, 60))
    res = vp.attribute(video_models["vivit"], wide, method="cls")
    on = res.on_image(0)
    steps = res.maps.shape[1]
    assert on.shape == (steps, 40, 60)
    _, left, _, width = res.geometry[0].crop_box  # short side 32 -> 48x32, centre crop 32x32
    assert (round(left), round(width)) == (10, 40)
    assert torch.isnan(on[:, :, :10]).all() and torch.isnan(on[:, :, 50:]).all()
    assert not torch.isnan(on[:, :, 10:50]).any()
    # each step's frame map is its (H, W) map upsampled: the means agree
    assert torch.allclose(on[:, :, 10:50].mean(dim=(-1, -2)), res.maps[0].mean(dim=(-1, -2)), rtol=1e-4)


def test_a_damaged_video_processor_is_one_line(video_dirs, tmp_path):
    import json
    import shutil

    from vitprobe.models.files import DamagedModel

    folder = shutil.copytree(video_dirs["vjepa2"], tmp_path / "vjepa2")
    processor = folder / "video_preprocessor_config.json"
    settings = json.loads(processor.read_text())
    for change, reason in (({"image_std": [0.2, 0.0, 0.2]}, "holds a zero"), ({"crop_size": -3}, "not a positive"),
                           ({"image_mean": [0.5, 0.5]}, "one number for each")):
        processor.write_text(json.dumps({**settings, **change}))
        with pytest.raises(DamagedModel, match=reason) as err:
            vp.load(folder)
        assert str(err.value).startswith(str(processor)) and "\n" not in str(err.value)
    processor.write_text(json.dumps({**settings, "crop_size": SIDE}))  # V-JEPA 2's processors write one number
    assert vp.load(folder).preprocess.crop_hw == (SIDE, SIDE)


def test_timesformer_temporal_query_maps_stay_at_their_position(video_models, clip):
    """The temporal attention as a capture of its own: a patch's query map is nonzero only at its own
    (row, col), over every frame, and sums to one there."""
    model = video_models["timesformer"]
    cap = model.capture(clip, full_layers=[-1])
    res = vp.attribute(cap.temporal, method="query", patch=(1, 2, 3), head=0)
    assert res.maps.shape == (1, FRAMES, GRID, GRID)
    assert float(res.maps[0, :, 2, 3].sum()) == pytest.approx(1.0, abs=1e-5)
    res.maps[0, :, 2, 3] = 0
    assert float(res.maps.abs().max()) == 0.0
    spatial = vp.attribute(cap, method="query", patch=(1, 2, 3), head=0).maps[0]
    assert float(spatial[[0, 2, 3]].abs().max()) == 0.0 and float(spatial[1].sum()) > 0.5  # its own frame only
