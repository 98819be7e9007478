"""Gradient methods through ``vitprobe explain`` on tiny classifiers: figure with the top predictions, targets,
one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests import timm_models as tm
from vitprobe.cli import app

runner = CliRunner()


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("method", ["chefer", "gradrollout"])
def test_explain_draws_the_map_of_a_label_with_the_predictions(tiny_dirs, photo, tmp_path, method):
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(photo), "--model", str(tiny_dirs["vit"]), "--method", method,
                                 "--target", "LABEL_3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "photo" / "summary.json").read_text())
    assert summary["methods"][0]["target"] == {"index": 3, "label": "LABEL_3"}
    assert len(summary["top5"]) == 5
    with Image.open(out / "photo" / f"{method}.png") as fig:
        assert fig.width > 2 * fig.height > 300  # image, map and the predictions side by side


@pytest.mark.skipif(tm.TORCHVISION is None, reason=tm.SKIP_REASON)
def test_explain_with_a_timm_model_and_an_imagenet_label(photo, tmp_path):
    result = runner.invoke(app, ["explain", str(photo), "--model", "timm:vit_tiny_patch16_224:random",
                                 "--method", "chefer", "--target", "tabby cat", "--size", "64", "64",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "photo" / "summary.json").read_text())
    assert summary["methods"][0]["target"] == {"index": 281, "label": "tabby, tabby cat"}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "DINOV2", "--method", "chefer", "--target", "3"], "no classification head"),
        (["--model", "VIT", "--method", "chefer", "--target", "zebra"], "no class is labelled 'zebra'"),
        (["--model", "VIT", "--method", "chefer", "--target", "9"], "outside the head's 5 classes"),
        (["--model", "VIT", "--method", "gradcams"], "unknown method 'gradcams'"),
        (["--model", "VIT", "--method", "chefer", "--discard-ratio", "0.5"], "no chosen method (chefer) takes"),
    ],
)
def test_gradient_errors_in_one_line(tiny_dirs, photo, tmp_path, args, words):
    args = [str(tiny_dirs[a.lower()]) if a in ("VIT", "DINOV2") else a for a in args]
    result = runner.invoke(app, ["explain", str(photo), *args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
