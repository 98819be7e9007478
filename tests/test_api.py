"""The five-line Python API of the README: load, attribute, overlay; several methods in one pass; a capture
attributed later; the query-patch method end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vitprobe as vp
from vitprobe.cli import app


def photo(seed: int = 0, hw: tuple[int, int] = (40, 60)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*hw, 3), dtype=np.uint8))


def test_five_lines_on_a_tiny_model(tiny_dirs, tmp_path):
    model = vp.load(str(tiny_dirs["dinov2_with_registers"]))
    image = photo()
    res = vp.attribute(model, [image, np.asarray(image)], method="rollout", size=(32, 48), discard_ratio=0.9)
    assert res.maps.shape == (2, 4, 6) and torch.allclose(res.maps[0], res.maps[1], atol=1e-6)
    assert res.method == "rollout" and res.params == {"head_fusion": "mean", "discard_ratio": 0.9, "artifacts": "keep"}
    vp.render.overlay(res.images[0], res.maps[0]).save(tmp_path / "o.png")
    assert Image.open(tmp_path / "o.png").size == (60, 40)
    assert res.layout.prefix_names == ("cls", "reg0", "reg1", "reg2", "reg3")
    names = [m.name for m in vp.methods()]
    assert names[:8] == ["cls", "query", "layers", "rollout", "flow", "gradrollout", "chefer", "legrad"]


def test_several_methods_share_one_forward_pass(tiny_dirs, monkeypatch):
    model = vp.load(str(tiny_dirs["vit"]))
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda pixels: calls.append(1) or forward(pixels))
    cls, rolled, layers, query = vp.attribute(model, photo(), method=["cls", "rollout", "layers", "query"],
                                              layer=1, patch=(1, 2))
    assert len(calls) == 1
    cap = model.capture(photo(), layers=None, fuse=("mean",), full_layers=[1])
    assert torch.equal(cls.maps, vp.fuse_heads(cls.detail["heads"], "mean"))
    torch.testing.assert_close(cls.detail["heads"][0].flatten(-2), cap.cls[1, 0, :, 1:], rtol=0, atol=0)
    torch.testing.assert_close(query.detail["heads"][0, :, :, :].flatten(-2),
                               cap.full[1][0, :, cap.layout.patch_index(1, 2), 1:], rtol=0, atol=0)
    assert query.marks == [[(1, 2)]] and cls.params["layer"] == 1 and layers.detail["layers"].shape == (1, 3, 4, 4)
    assert rolled.maps.shape == (1, 4, 4)


def test_attribute_a_capture_without_running_the_model(tiny_dirs):
    model = vp.load(str(tiny_dirs["vit"]))
    cap = vp.capture_for(model, photo(), method=["cls", "rollout"], layer=0)
    assert cap.layers == [0, 1, 2] and list(cap.fused) == ["mean"] and cap.full == {}
    direct = vp.attribute(model, photo(), method="rollout")
    torch.testing.assert_close(vp.attribute(cap, method="rollout").maps, direct.maps, rtol=0, atol=0)
    with pytest.raises(vp.MissingCapture, match=r"full_layers=\[2\]"):
        vp.attribute(cap, method="query")
    with pytest.raises(vp.MissingCapture, match=r"fuse=\('max',\)"):
        vp.attribute(cap, method="rollout", head_fusion="max")
    with pytest.raises(ValueError, match="runs the model"):
        vp.attribute(cap, method="chefer")


def test_parameters_are_checked_by_name_and_value(tiny_dirs):
    model = vp.load(str(tiny_dirs["vit"]))
    for kwargs, message in [
        ({"method": "bogus"}, "unknown method 'bogus'; use one of cls, query"),
        ({"method": "cls", "discard_ratio": 0.5}, r"no chosen method \(cls\) takes the parameter .discard_ratio."),
        ({"method": "rollout", "discard_ratio": 1.0}, r"--discard-ratio takes \[0, 1\)"),
        ({"method": "cls", "head_fusion": "median"}, r"--head-fusion takes mean\|max\|min"),
        ({"method": "cls", "layer": 3}, "layer 3 does not exist: .* has 3 layers"),
        ({"method": "cls", "head": 4}, "head 4 does not exist: the model has 4 heads"),
        ({"method": "query", "patch": (4, 0)}, "outside the 4x4 grid"),
    ]:
        with pytest.raises((ValueError, IndexError), match=message):
            vp.attribute(model, photo(), **kwargs)
    dino = vp.load(str(tiny_dirs["dinov2"]))
    with pytest.raises(ValueError, match="no classification head"):
        vp.attribute(dino, photo(), method="chefer", target=3)


def test_on_image_puts_the_map_on_the_original_photo(tiny_dirs):
    model = vp.load(str(tiny_dirs["vit"]))
    model.preprocess = model.preprocess.__class__(shortest_edge=32, resize_hw=None, crop_hw=(32, 32))
    res = vp.attribute(model, photo(hw=(40, 80)), method="cls")  # resized to 32x64, centre crop 32x32
    full = res.on_image(0, mode="nearest")
    assert full.shape == (40, 80)
    assert torch.isnan(full[:, :19]).all() and torch.isnan(full[:, 61:]).all()  # outside the crop
    inside = full[:, 20:60]
    assert not torch.isnan(inside).any()
    assert float(inside[0, 0]) == pytest.approx(float(res.maps[0, 0, 0])) and inside.max() == res.maps[0].max()


def test_images_of_different_sizes_need_a_size(tiny_dirs):
    model = vp.load(str(tiny_dirs["vit"]))
    model.preprocess = model.preprocess.__class__(shortest_edge=32, resize_hw=None)
    a, b = Image.new("RGB", (64, 32)), Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="different sizes"):
        vp.attribute(model, [a, b], method="cls")
    assert vp.attribute(model, [a, b], method="cls", size=(32, 32)).maps.shape == (2, 4, 4)


def test_explain_query_patch(tiny_dirs, tmp_path):
    path = tmp_path / "p.png"
    photo(1, (32, 32)).save(path)
    out = tmp_path / "out"
    args = ["explain", str(path), "--model", str(tiny_dirs["vit"]), "--method", "query", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--patch", "1,3", "--upsample", "nearest"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "p" / "summary.json").read_text())
    assert summary["methods"][0]["params"]["patch"] == [1, 3] and summary["figures"] == ["query.png"]
    assert summary["methods"][0]["title"] == "attention of patch (row 1, col 3), layer 2, heads fused by mean"
    bad = CliRunner().invoke(app, [*args, "--patch", "9,0"])
    assert bad.exit_code == 2 and "outside the 4x4 grid" in bad.output


def test_query_point_in_original_pixels_follows_the_crop(tiny_dirs):
    """A 40x80 photo, short side to 32 then centre crop 32x32: original columns 20..60 are seen, 1.25 px per
    input pixel; (x 52, y 10) is input (x 25.6, y 8), the patch (row 1, col 3) of 8-px patches."""
    model = vp.load(str(tiny_dirs["vit"]))
    model.preprocess = model.preprocess.__class__(shortest_edge=32, resize_hw=None, crop_hw=(32, 32))
    image = photo(hw=(40, 80))
    by_point = vp.attribute(model, image, method="query", query_xy=(52, 10))
    by_patch = vp.attribute(model, image, method="query", patch=(1, 3))
    torch.testing.assert_close(by_point.maps, by_patch.maps, rtol=0, atol=0)
    assert by_point.marks == [[pytest.approx((0.5, 2.7))]]  # the cross sits on the point, not the patch centre
    assert "point (x 52, y 10)" in by_point.title
    with pytest.raises(ValueError, match="outside the part of the image the model saw"):
        vp.attribute(model, image, method="query", query_xy=(10, 10))
