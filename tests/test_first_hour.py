"""What a newcomer meets first: the version, a fast --help that imports no torch, short reprs, figures that
notebooks show by themselves, public names never shadowed by modules."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import types
from importlib import metadata

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vitprobe as vp
from vitprobe.cli import app

COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def imported_modules(*args: str) -> set[str]:
    """Top-level names of every module ``python -X importtime -m vitprobe ARGS`` imports."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "vitprobe", *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    return {name.split(".")[0] for name in rows}


def test_version_from_the_package_metadata():
    assert vp.__version__ == metadata.version("vitprobe")
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"vitprobe {vp.__version__}"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_imports_neither_torch_nor_matplotlib(command):
    modules = imported_modules(*([command] if command else []), "--help")
    assert "typer" in modules and not {"torch", "transformers", "matplotlib"} & modules


def test_every_command_is_checked():
    assert {"explain", "methods", "models", "samples", "keypoints", "evaluate", "video", "serve", "analyze",
            "bench"} <= set(COMMANDS)


def test_public_names_are_not_shadowed_by_modules():
    """A lazily imported name equal to a submodule's would turn into that module once anything imports it."""
    for package, skip in ((vp, {"render"}), (vp.render, set())):
        for name in sorted(set(package.__all__) - skip):
            if importlib.util.find_spec(f"{package.__name__}.{name}") is not None:
                importlib.import_module(f"{package.__name__}.{name}")
            assert not isinstance(getattr(package, name), types.ModuleType), f"{package.__name__}.{name}"


def test_reprs_are_short_and_say_what_matters(tiny_dirs):
    model = vp.load(str(tiny_dirs["deit"]))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    cap = vp.capture_for(model, [image, image], method=["cls", "rollout", "query"])
    result = vp.attribute(cap, method="query", head=1)
    texts = {"model": repr(model), "capture": repr(cap), "attribution": repr(result)}
    for what, text in texts.items():
        assert len(text) < 1000 and "\n" not in text, (what, len(text))
    listing = repr(vp.methods()).splitlines()
    assert len(listing) == len(vp.method_names()) and all(len(line) < 200 for line in listing)
    assert listing[0].startswith("cls(layer=-1, head_fusion='mean', head=None, artifacts='keep'): CLS token's")
    assert "layers=3, heads=4, patch=8, prefix=('cls', 'distillation')" in texts["model"]
    assert "classes=5" in texts["model"] and "device=cpu, dtype=float32" in texts["model"]
    assert "images=2, layers=0..2, grid=(4, 4)" in texts["capture"]
    assert "fused['mean']=(3, 2, 18, 18)" in texts["capture"]
    assert "full=[2]: (2, 4, 18, 18)" in texts["capture"] and "logits=(2, 5)" in texts["capture"]
    assert texts["attribution"].startswith(
        "Attribution(query(layer=-1, patch=None, query_xy=None, frame=None, head_fusion='mean'")
    assert "maps=(2, 4, 4) on a 4x4 grid, images=2, detail: heads=(2, 4, 4, 4)" in texts["attribution"]


def test_figures_show_themselves_in_a_notebook(tiny_dirs):
    model = vp.load(str(tiny_dirs["vit"]))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    figure = vp.render.attribution_figure(vp.attribute(model, image, method="cls"))
    png = figure._repr_png_()
    assert isinstance(figure, vp.render.NotebookFigure) and png.startswith(b"\x89PNG\r\n\x1a\n")
    assert Image.open(__import__("io").BytesIO(png)).width > 300
    from vitprobe.render.plots import entropy_plot

    assert entropy_plot({"a": np.ones((3, 2))}, [0, 1, 2])._repr_png_().startswith(b"\x89PNG")


@pytest.mark.parametrize(("spec", "words"), [
    ("./models/my-vit", "./models/my-vit: no such directory"),
    ("/no/such/model", "/no/such/model: no such directory"),
    ("acme/not-cached-vit", "acme/not-cached-vit: not in the Hugging Face cache"),
])
def test_a_model_that_cannot_be_found_is_answered_before_torch_loads(tmp_path, spec, words):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "vitprobe", "explain", str(tmp_path / "x.png"),
                           "--model", spec], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and words in errors[0], errors
    if "cache" in words:
        assert "HF_HUB_OFFLINE is set" in errors[0] and str(tmp_path / "hf") in errors[0]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" not in imported


def test_a_directory_without_config_is_named(tmp_path):
    result = CliRunner().invoke(app, ["explain", str(tmp_path / "x.png"), "--model", str(tmp_path)])
    assert result.exit_code == 2 and f"{tmp_path}: no config.json here" in result.stderr
