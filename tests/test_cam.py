"""The Grad-CAM family on token activations: float64 references of each definition, and equality with
pytorch-grad-cam's own classes run with a reshape that drops the model's own prefix tokens."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import vitprobe as vp
from tests import timm_models as tm
from tests.torchvision_stub import import_with_stub
from vitprobe.activations import block_input_norm
from vitprobe.analysis import cam as cam_maths
from vitprobe.input_scores import input_scores
from vitprobe.models import timm as timm_adapter

needs_timm = pytest.mark.skipif(tm.TORCHVISION is None, reason=tm.SKIP_REASON)
if import_with_stub("pytorch_grad_cam") is None:
    pytest.skip("pytorch-grad-cam is not installed (make setup-dev installs it)", allow_module_level=True)
gradcam_lib = importlib.import_module("pytorch_grad_cam")

CAMS = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "scorecam": "ScoreCAM", "eigencam": "EigenCAM"}


def random_channels(seed: int, b: int = 2, d: int = 6, h: int = 3, w: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, h, w, generator=g, dtype=torch.float64), torch.randn(b, d, h, w, generator=g,
                                                                                  dtype=torch.float64)


def test_channel_maps_drop_the_prefix_and_keep_the_grid():
    layout = vp.TokenLayout(("cls", "reg0", "reg1"), (2, 3), 8)
    tokens = torch.arange(1 * 9 * 2, dtype=torch.float64).reshape(1, 9, 2)
    channels = cam_maths.channel_maps(tokens, layout)
    assert channels.shape == (1, 2, 2, 3)
    for r in range(2):
        for c in range(3):
            assert torch.equal(channels[0, :, r, c], tokens[0, 3 + r * 3 + c])
    with pytest.raises(ValueError, match="tokens"):
        cam_maths.channel_maps(tokens[:, 1:], layout)


def test_gradcam_and_gradcampp_equal_float64_loops():
    acts, grads = random_channels(0)
    b, d, h, w = acts.shape
    want, want_pp = np.zeros((b, h, w)), np.zeros((b, h, w))
    a, g = acts.numpy(), grads.numpy()
    for i in range(b):
        for k in range(d):
            want[i] += g[i, k].mean() * a[i, k]
            alpha = np.zeros((h, w))
            for r in range(h):
                for c in range(w):
                    if g[i, k, r, c] != 0:
                        alpha[r, c] = g[i, k, r, c] ** 2 / (2 * g[i, k, r, c] ** 2
                                                            + a[i, k].sum() * g[i, k, r, c] ** 3 + 1e-6)
            want_pp[i] += (alpha * np.maximum(g[i, k], 0)).sum() * a[i, k]
    assert np.allclose(cam_maths.gradcam(acts, grads).numpy(), np.maximum(want, 0), atol=1e-12)
    assert np.allclose(cam_maths.gradcampp(acts, grads).numpy(), np.maximum(want_pp, 0), atol=1e-12)


def test_scorecam_weights_are_a_softmax_over_channels():
    acts, _ = random_channels(1)
    scores = torch.tensor([[0.0, 1.0, 2.0, 0.5, -1.0, 3.0], [1.0] * 6], dtype=torch.float64)
    maps = cam_maths.scorecam(acts, scores)
    weights = np.exp(scores.numpy()) / np.exp(scores.numpy()).sum(1, keepdims=True)
    want = np.maximum(np.einsum("bd,bdhw->bhw", weights, acts.numpy()), 0)
    assert np.allclose(maps.numpy(), want, atol=1e-6)
    masks = cam_maths.score_masks(acts, (6, 8))
    assert masks.shape == (2, 6, 6, 8)
    assert torch.allclose(masks.flatten(2).amin(-1), torch.zeros(2, 6, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(masks.flatten(2).amax(-1), torch.ones(2, 6, dtype=torch.float64), atol=1e-6)


def test_eigencam_is_the_first_principal_component():
    acts, _ = random_channels(2, b=1, d=5, h=4, w=4)
    rows = acts[0].reshape(5, -1).T.numpy()
    rows = rows - rows.mean(0)
    _, vectors = np.linalg.eigh(rows.T @ rows)  # independent: eigenvectors of the scatter matrix
    projection = rows @ vectors[:, -1]
    for orient in ("svd", "peak"):
        got = cam_maths.eigencam(acts, orient)[0].double().numpy().ravel()
        # the sign is arbitrary: the map is the ReLU of ± the projection
        assert min(np.abs(got - np.maximum(projection, 0)).max(), np.abs(got - np.maximum(-projection, 0)).max()) < 1e-5
    peak = cam_maths.eigencam(acts, "peak")[0].double().numpy().ravel()
    kept = projection if abs(projection.min()) <= abs(projection.max()) else -projection
    assert np.allclose(peak, np.maximum(kept, 0), atol=1e-5)
    with pytest.raises(ValueError, match="orient"):
        cam_maths.eigencam(acts, "up")


class ScoreModule(torch.nn.Module):
    """The model as pytorch-grad-cam sees it: pixels -> the target-score matrix (N, K)."""

    def __init__(self, model: vp.VitModel, pixels: torch.Tensor, target) -> None:
        super().__init__()
        self.inner = model.module
        self.scores = input_scores(model, pixels, target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores.scores(x)


def library_cam(name: str, model: vp.VitModel, pixels: torch.Tensor, layer: int, target=None):
    """pytorch-grad-cam's class ``name`` with a reshape by the model's own layout: (its scaled output
    (B, H_in, W_in), its grid-level map (B, H, W) before scaling, ReLU applied as the library does)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layout = model.layout(tuple(pixels.shape[-2:]))

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        return cam_maths.channel_maps(tokens, layout)

    wrapper = ScoreModule(model, pixels, target)
    cls = getattr(gradcam_lib, CAMS[name])
    cam = cls(model=wrapper, target_layers=[block_input_norm(model.blocks[layer])], reshape_transform=reshape)
    targets = [ClassifierOutputTarget(int(i)) for i in wrapper.scores.index]
    scaled = cam(input_tensor=pixels, targets=targets)
    acts = cam.activations_and_grads.activations[0].numpy()
    grads = cam.activations_and_grads.gradients[0].numpy() if cam.activations_and_grads.gradients else None
    grid = cam.get_cam_image(pixels, None, targets, acts, grads, False)
    cam.activations_and_grads.release()
    return scaled, np.maximum(grid, 0)


def scaled_like_library(maps: torch.Tensor, size_hw: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image``: min–max per map, then OpenCV's bilinear resize."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    return scale_cam_image(maps.numpy(), (size_hw[1], size_hw[0]))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def timm_model(family: str) -> vp.VitModel:
    return timm_adapter.wrap(tm.tiny(tm.FAMILIES[family], seed=3, std=0.3), f"tiny-{family}")


@needs_timm
@pytest.mark.parametrize("family", ["vit", "deit_distilled", "dinov2_reg4"])
@pytest.mark.parametrize("name", sorted(CAMS))
def test_cams_equal_pytorch_grad_cam(family, name):
    """On a plain ViT, a distilled one (2 prefix tokens) and one with 4 registers, at a non-square
    4×6 grid: 1e-5 on the grid, correlation ≥ 0.99 after the library's scaling."""
    model = timm_model(family)
    pixels = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(5))
    params = {"orient": "svd"} if name == "eigencam" else {}
    ours = vp.attribute(model, pixels, method=name, layer=-1, **params)
    assert ours.maps.shape == (2, 4, 6)
    scaled, grid = library_cam(name, model, pixels, -1)
    assert np.abs(ours.maps.numpy() - grid).max() <= 1e-5 * max(1.0, float(np.abs(grid).max()))
    mine = scaled_like_library(ours.maps, (32, 48))
    for i in range(2):
        if scaled[i].std() > 0:
            assert correlation(mine[i], scaled[i]) >= 0.99


@needs_timm
def test_cam_layer_parameter_and_embedding_targets():
    """``layer`` picks another block's input norm; a model without head explains its embedding, and the
    library run on the same score matrix agrees."""
    model = timm_adapter.wrap(tm.tiny(tm.FAMILIES["dino"], seed=4, std=0.3, num_classes=0), "tiny-dino")
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    first = vp.attribute(model, pixels, method="gradcam", layer=0)
    last = vp.attribute(model, pixels, method="gradcam")
    assert "block 0" in first.title and "block 1" in last.title and "embedding" in last.title
    assert not torch.allclose(first.maps, last.maps)
    _, grid = library_cam("gradcam", model, pixels, 0, target="self")
    assert np.allclose(first.maps.numpy(), grid, atol=1e-5)
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        vp.attribute(model, pixels, method="gradcam", layer=5)


def test_hf_distilled_and_registers(tiny_dirs):
    """Transformers' DeiT with teacher (cls + distillation) and DINOv2 with registers (5 prefix tokens):
    each map equals pytorch-grad-cam's on the grid."""
    for kind in ("deit", "dinov2_with_registers"):
        model = vp.load(tiny_dirs[kind])
        pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
        for name in ("gradcam", "gradcampp"):
            ours = vp.attribute(model, pixels, method=name)
            _, grid = library_cam(name, model, pixels, -1, target=None)
            assert np.abs(ours.maps.numpy() - grid).max() <= 1e-5 * max(1.0, float(np.abs(grid).max())), (kind, name)


def test_block_input_norm_names():
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = torch.nn.Linear(2, 2)
            self.pre = torch.nn.LayerNorm(2)

    block = Block()
    assert block_input_norm(block) is block.pre
    with pytest.raises(ValueError, match="no input norm"):
        block_input_norm(torch.nn.Linear(2, 2))


def test_cams_refuse_a_capture(tiny_dirs):
    model = vp.load(tiny_dirs["vit"])
    cap = model.capture_pixels(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="runs the model"):
        vp.attribute(cap, method="eigencam")
