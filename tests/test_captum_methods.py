"""Captum's attributions as methods: equal to Captum run directly on the module, to float64 references
written from each definition, pooled over each patch; the baselines; the missing-extra line."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vitprobe as vp
from tests import timm_models as tm
from vitprobe.analysis.maps import pixels_to_grid
from vitprobe.cli import app
from vitprobe.models import timm as timm_adapter

captum_attr = pytest.importorskip("captum.attr")
needs_timm = pytest.mark.skipif(tm.TORCHVISION is None, reason=tm.SKIP_REASON)
P = tm.PATCH


def timm_model(family: str, double: bool = False) -> vp.VitModel:
    module = tm.tiny(tm.FAMILIES[family], seed=2, std=0.3)
    if double:
        module.double()
    return timm_adapter.wrap(module, f"tiny-{family}")


def pixels_of(seed: int, h: int = 32, w: int = 48, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def pooled(values: np.ndarray) -> np.ndarray:
    """Loops: the sum over channels and each P×P patch of (B, 3, H, W) -> (B, H/P, W/P)."""
    b, _, h, w = values.shape
    out = np.zeros((b, h // P, w // P))
    for i in range(b):
        for r in range(h // P):
            for c in range(w // P):
                out[i, r, c] = values[i, :, r * P:(r + 1) * P, c * P:(c + 1) * P].sum()
    return out


def class_logit(module: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return module(x).gather(1, classes[:, None])[:, 0]


def close(got: torch.Tensor, want: np.ndarray, rel: float) -> bool:
    return float(np.abs(got.double().numpy() - want).max()) <= rel * max(1.0, float(np.abs(want).max()))


@needs_timm
@pytest.mark.parametrize("family", ["vit", "deit_distilled", "dinov2_reg4"])
def test_equal_captum_on_the_module_itself(family):
    """Each method equals Captum's own class run on the timm module's logits with the same settings
    (1e-5 after the same pooling), on a plain, a distilled and a register model at a 4×6 grid."""
    model = timm_model(family)
    x = pixels_of(1)
    top = model.module(x).argmax(-1)
    runs = {
        "integrated_gradients": lambda m: captum_attr.IntegratedGradients(m).attribute(
            x, baselines=torch.zeros_like(x), target=top, n_steps=32),
        "input_x_gradient": lambda m: captum_attr.InputXGradient(m).attribute(x.clone().requires_grad_(), target=top),
        "occlusion": lambda m: captum_attr.Occlusion(m).attribute(
            x, sliding_window_shapes=(3, P, P), strides=(3, P, P), baselines=0.0, target=top),
    }
    for name, run in runs.items():
        ours = vp.attribute(model, x, method=name)
        want = run(model.module).detach().double().numpy()
        assert ours.targets == top.tolist()
        assert ours.maps.shape == (2, 4, 6) and ours.detail["pixels"].shape == (2, 32, 48)
        assert close(ours.maps, pooled(want), 1e-5), name
        assert close(ours.detail["pixels"], want.sum(1), 1e-5), name


@needs_timm
def test_input_x_gradient_equals_float64_autograd():
    model = timm_model("vit", double=True)
    x = pixels_of(2, dtype=torch.float64).requires_grad_(True)
    classes = torch.tensor([1, 3])
    (grad,) = torch.autograd.grad(class_logit(model.module, x, classes).sum(), x)
    ours = vp.attribute(model, x.detach(), method="input_x_gradient", target=None)
    ours_fixed = [vp.attribute(model, x.detach()[i:i + 1], method="input_x_gradient", target=int(c))
                  for i, c in enumerate(classes)]
    want = pooled((x * grad).detach().numpy())
    assert close(torch.cat([a.maps for a in ours_fixed]), want, 1e-5)
    assert ours.maps.shape == (2, 4, 6)


@needs_timm
@pytest.mark.parametrize("baseline", ["mean", "black", "blur"])
def test_integrated_gradients_equals_a_float64_riemann_sum(baseline):
    """IG with 64 Gauss–Legendre points against a 2000-point midpoint sum in float64; its completeness
    (the attributions' sum is y(x) − y(x′)) within the convergence delta Captum reports."""
    model = timm_model("vit", double=True)
    x = pixels_of(3, dtype=torch.float64)[:1]
    ours = vp.attribute(model, x, method="integrated_gradients", target=2, baseline=baseline, n_steps=64)
    mean, std = (torch.tensor(v, dtype=torch.float64)[:, None, None] for v in (model.preprocess.mean,
                                                                                model.preprocess.std))
    if baseline == "mean":
        base = torch.zeros_like(x)
    elif baseline == "black":
        base = (-mean / std).expand_as(x[0])[None].clone()
    else:
        from scipy.ndimage import gaussian_filter

        base = torch.from_numpy(gaussian_filter(x.numpy(), sigma=(0, 0, 5, 5), truncate=1.0, mode="reflect"))
    steps = 2000
    alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    total = torch.zeros_like(x)
    for chunk in alphas.split(250):
        path = (base + chunk[:, None, None, None] * (x - base)).requires_grad_(True)
        (grad,) = torch.autograd.grad(class_logit(model.module, path, torch.full((len(chunk),), 2)).sum(), path)
        total += grad.sum(0, keepdim=True)
    want = ((x - base) * total / steps).numpy()
    assert close(ours.maps, pooled(want), 1e-3)
    with torch.no_grad():
        two = torch.tensor([2])
        gap = float(class_logit(model.module, x, two) - class_logit(model.module, base, two))
    assert abs(float(ours.maps.sum()) - gap) <= abs(float(ours.detail["delta"][0])) + 1e-6


@needs_timm
def test_occlusion_equals_the_score_drop_of_each_patch():
    """Occlusion with the black baseline: 3·P² × (y(x) − y(x with patch (r, c) black)) per patch."""
    model = timm_model("dinov2_reg4", double=True)
    x = pixels_of(4, dtype=torch.float64)[:1]
    ours = vp.attribute(model, x, method="occlusion", target=4, baseline="black", window_batch=5)
    mean, std = (torch.tensor(v, dtype=torch.float64)[:, None, None] for v in (model.preprocess.mean,
                                                                                model.preprocess.std))
    black = -mean / std
    with torch.no_grad():
        full = float(model.module(x)[0, 4])
        want = np.zeros((1, 4, 6))
        for r in range(4):
            for c in range(6):
                hidden = x.clone()
                hidden[0, :, r * P:(r + 1) * P, c * P:(c + 1) * P] = black
                want[0, r, c] = 3 * P * P * (full - float(model.module(hidden)[0, 4]))
    assert close(ours.maps, want, 1e-5)


@needs_timm
def test_embedding_target_on_a_model_without_head():
    """Without a head the maps explain the image's own embedding (its projection on its direction from a
    blank image): input × gradient equals float64 autograd of that projection."""
    module = tm.tiny(tm.FAMILIES["dino"], seed=5, std=0.3, num_classes=0).double()
    model = timm_adapter.wrap(module, "tiny-dino")
    x = pixels_of(6, dtype=torch.float64)[:1]
    ours = vp.attribute(model, x, method="input_x_gradient")
    assert "embedding" in ours.title and ours.targets is None
    with torch.no_grad():
        direction = module(x) - module(torch.zeros_like(x))
    direction = direction / direction.norm()
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((module(xg) * direction).sum(), xg)
    assert close(ours.maps, pooled((x * grad).numpy()), 1e-5)


def test_missing_captum_is_one_line(tiny_dirs, tmp_path, monkeypatch):
    real = importlib.import_module

    def without_captum(name, *args, **kwargs):
        if name.startswith("captum"):
            raise ImportError("No module named 'captum'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_captum)
    model = vp.load(tiny_dirs["vit"])
    with pytest.raises(vp.MissingExtra, match=r"pip install 'vitprobe\[captum\]'"):
        vp.attribute(model, torch.zeros(1, 3, 32, 32), method="occlusion")
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "grey.png")
    result = CliRunner().invoke(app, ["explain", str(tmp_path / "grey.png"), "--model", str(tiny_dirs["vit"]),
                                      "--method", "integrated_gradients", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "vitprobe[captum]" in lines[0] and "Traceback" not in result.output


def test_pixels_to_grid_sums_each_patch():
    values = torch.randn(2, 3, 17, 25, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = pixels_to_grid(values, (2, 3))
    for r in range(2):
        for c in range(3):
            assert torch.isclose(grid[1, r, c], values[1, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].sum())
