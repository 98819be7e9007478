"""The five-line Python API of the README, and the query-patch method end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vitprobe as vp
from vitprobe.cli import app


def test_five_lines_on_a_tiny_model(tiny_dirs, tmp_path):
    model = vp.load(str(tiny_dirs["dinov2_with_registers"]))
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    cap = model.capture([photo, np.asarray(photo)], size=(32, 48))
    heat = vp.rollout(cap, discard_ratio=0.9)
    assert heat.shape == (2, 4, 6) and torch.allclose(heat[0], heat[1], atol=1e-6)
    vp.render.overlay(cap.images[0], heat[0]).save(tmp_path / "o.png")
    assert Image.open(tmp_path / "o.png").size == (60, 40)
    maps = vp.cls_attention(cap, layers=[-1])
    assert maps.shape == (1, 2, 4, 4, 6)
    assert cap.layout.prefix_names == ("cls", "reg0", "reg1", "reg2", "reg3")
    patch = vp.query_attention(cap, (1, 2))
    assert patch.shape == (2, 4, 4, 6)
    assert torch.allclose(patch[0, 0].flatten(), cap.full[2][0, 0, cap.layout.patch_index(1, 2), 5:], atol=0)
    with pytest.raises(ValueError, match="fuse"):
        vp.rollout(cap, head_fusion="max")


def test_images_of_different_sizes_need_a_size(tiny_dirs):
    model = vp.load(str(tiny_dirs["vit"]))
    model.preprocess = model.preprocess.__class__(shortest_edge=32, resize_hw=None)
    a, b = Image.new("RGB", (64, 32)), Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="different sizes"):
        model.capture([a, b])
    assert model.capture([a, b], size=(32, 32)).cls.shape[1] == 2


def test_explain_query_patch(tiny_dirs, tmp_path):
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    args = ["explain", str(photo), "--model", str(tiny_dirs["vit"]), "--methods", "query", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--query", "1,3", "--upsample", "nearest"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "p" / "summary.json").read_text())
    assert summary["query_patch_rc"] == [1, 3] and summary["figures"] == ["query_r1_c3_layer02.png"]
    bad = CliRunner().invoke(app, [*args, "--query", "9,0"])
    assert bad.exit_code == 2 and "outside the 4x4 grid" in bad.output
