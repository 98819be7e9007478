"""``vitprobe classmap`` end to end on tiny models: figure written, targets, one-line errors."""

from __future__ import annotations

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
def test_classmap_writes_the_figure_for_a_label(tiny_dirs, photo, tmp_path, method):
    out = tmp_path / "out"
    result = runner.invoke(app, ["classmap", str(photo), "--model", str(tiny_dirs["vit"]), "--method", method,
                                 "--target", "LABEL_3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{method} map of class 3 (LABEL_3)" in result.stdout and "top 5: LABEL_" in result.stdout
    with Image.open(out / f"photo_{method}.png") as fig:
        assert fig.width > 2 * fig.height > 300


@pytest.mark.skipif(tm.TORCHVISION is None, reason=tm.SKIP_REASON)
def test_classmap_with_a_timm_model_and_an_imagenet_label(photo, tmp_path):
    result = runner.invoke(app, ["classmap", str(photo), "--model", "timm:vit_tiny_patch16_224:random",
                                 "--target", "tabby cat", "--size", "64", "64", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "chefer map of class 281 (tabby, tabby cat)" in result.stdout
    assert (tmp_path / "photo_chefer.png").is_file()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "DINOV2"], "no classification head"),
        (["--model", "VIT", "--target", "zebra"], "no class is labelled 'zebra'"),
        (["--model", "VIT", "--target", "9"], "outside the head's 5 classes"),
        (["--model", "VIT", "--method", "gradcam"], "--method takes one of gradrollout, chefer"),
        (["--model", "VIT", "--discard-ratio", "0.5"], "gradrollout only"),
    ],
)
def test_classmap_errors_in_one_line(tiny_dirs, photo, tmp_path, args, words):
    args = [str(tiny_dirs[a.lower()]) if a in ("VIT", "DINOV2") else a for a in args]
    result = runner.invoke(app, ["classmap", str(photo), *args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
