"""Class-specific maps: gradient rollout and Chefer et al. 2021b against float64 references,
gradients paired with their own layer, targets, and the randomisation sanity checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import vitprobe
from tests import timm_models as tm
from vitprobe.analysis import gradients
from vitprobe.layout import TokenLayout
from vitprobe.models import timm as timm_adapter
from vitprobe.models.hf import load_hf
from vitprobe.targets import attention_gradients, resolve_target

needs_timm = pytest.mark.skipif(tm.TORCHVISION is None, reason=tm.SKIP_REASON)


def random_layers(n_layers: int, batch: int, heads: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 softmax attention with peaked rows, and signed gradients: each (L, B, heads, T, T)."""
    g = torch.Generator().manual_seed(seed)
    attn = (3 * torch.randn(n_layers, batch, heads, t, t, generator=g, dtype=torch.float64)).softmax(-1)
    grads = torch.randn(n_layers, batch, heads, t, t, generator=g, dtype=torch.float64)
    return attn, grads


def reference_map(attn: np.ndarray, grads: np.ndarray, n_prefix: int, method: str, discard: float = 0.0) -> np.ndarray:
    """Float64, full T×T matrices, layers multiplied in forward order; attn, grads (L, heads, T, T) of one image."""
    t = attn.shape[-1]
    eye = np.eye(t)
    joint = eye.copy()
    for a, g in zip(attn, grads, strict=True):
        if method == "chefer":
            fused = np.maximum(a * g, 0).mean(axis=0)
            joint = joint + fused @ joint
        else:
            fused = np.maximum((a * g).mean(axis=0), 0)
            if discard:
                candidates = np.delete(fused, 0, axis=1).ravel()  # the CLS column is never dropped
                threshold = np.sort(candidates)[int(discard * (t * t - t)) - 1]
                drop = fused <= threshold
                drop[:, 0] = False
                fused = np.where(drop, 0.0, fused)
            step = 0.5 * fused + 0.5 * eye
            joint = (step / step.sum(axis=1, keepdims=True)) @ joint
    return joint[0, n_prefix:]


@pytest.mark.parametrize("method", gradients.KINDS)
@pytest.mark.parametrize("n_prefix", [1, 2])
def test_maps_equal_float64_reference(method, n_prefix):
    layout = TokenLayout(("cls", "distillation")[:n_prefix], (3, 4), 16)
    attn, grads = random_layers(4, 2, 3, layout.n_tokens, seed=n_prefix)
    ours = gradients.class_map(attn.float(), grads.float(), layout, method)
    assert ours.shape == (2, 3, 4) and ours.dtype == torch.float32
    for b in range(2):
        ref = reference_map(attn[:, b].numpy(), grads[:, b].numpy(), n_prefix, method).reshape(3, 4)
        np.testing.assert_allclose(ours[b].numpy(), ref, rtol=1e-5, atol=1e-7)


def test_gradrollout_discard_ratio_equals_reference():
    layout = TokenLayout(("cls",), (4, 4), 16)
    attn, grads = random_layers(3, 1, 2, layout.n_tokens, seed=7)
    ours = gradients.class_map(attn.float(), grads.float(), layout, "gradrollout", discard_ratio=0.6)
    ref = reference_map(attn[:, 0].numpy(), grads[:, 0].numpy(), 1, "gradrollout", discard=0.6)
    np.testing.assert_allclose(ours[0].flatten().numpy(), ref, rtol=1e-5, atol=1e-7)
    assert not np.allclose(ref, reference_map(attn[:, 0].numpy(), grads[:, 0].numpy(), 1, "gradrollout"))


def test_reversed_layer_pairing_gives_another_map():
    """vit-explain pairs layer l's attention with layer L−1−l's gradient; that is a different map."""
    layout = TokenLayout(("cls",), (4, 4), 16)
    attn, grads = random_layers(4, 1, 2, layout.n_tokens, seed=3)
    ours = gradients.class_map(attn, grads, layout, "gradrollout")
    reversed_pairs = gradients.class_map(attn, grads.flip(0), layout, "gradrollout")
    assert (ours - reversed_pairs).abs().max() > 0.1 * ours.abs().max()


def test_method_and_shape_errors():
    layout = TokenLayout(("cls",), (2, 2), 16)
    attn, grads = random_layers(2, 1, 2, layout.n_tokens, seed=0)
    with pytest.raises(ValueError, match="unknown class-map method"):
        gradients.class_map(attn, grads, layout, "gradcam")
    with pytest.raises(ValueError, match="gradrollout only"):
        gradients.class_map(attn, grads, layout, "chefer", discard_ratio=0.5)
    with pytest.raises(ValueError, match="differ in shape"):
        gradients.class_map(attn, grads[:, :, :1], layout, "chefer")
    with pytest.raises(ValueError, match="no CLS token"):
        gradients.class_map(attn, grads, TokenLayout((), (1, 5), 16), "chefer")


def class_maps_pixels(model, pixels: torch.Tensor, method: str = "chefer", target=None) -> vitprobe.Attribution:
    """A gradient method's maps of model-input pixels (B, 3, H, W) through the public verb."""
    return vitprobe.attribute(model, pixels, method=method, target=target)


def tiny_vit(seed: int = 0, **overrides) -> vitprobe.VitModel:
    return timm_adapter.wrap(tm.tiny(tm.FAMILIES["vit"], seed=seed, std=0.3, **overrides), "tiny-vit")


@needs_timm
def test_gradients_are_paired_with_their_own_layer():
    """∂y/∂A of layer l equals a central finite difference of the target logit when only layer l's
    attention is perturbed (float64 model)."""
    model = tiny_vit(depth=3)
    model.module.double()
    pixels = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    result = attention_gradients(model, pixels, target=3)
    grads = result.grads
    assert result.targets == [3]
    eps = 1e-6
    for layer, (h, i, j) in [(0, (1, 0, 5)), (1, (2, 7, 0)), (2, (0, 0, 9)), (2, (3, 4, 4))]:
        def logit_with(delta: float, layer=layer, h=h, i=i, j=j) -> float:
            def bump(_m, _inp, out):
                out = out.clone()
                out[0, h, i, j] += delta
                return out

            handle = model.module.blocks[layer].attn.attn_drop.register_forward_hook(bump)
            try:
                with torch.no_grad():
                    return float(model.attention_forward(pixels)[0][0, 3])
            finally:
                handle.remove()

        numeric = (logit_with(eps) - logit_with(-eps)) / (2 * eps)
        assert abs(float(grads[layer][0, h, i, j]) - numeric) < 1e-5 * max(1.0, abs(numeric))
    assert all(p.grad is None for p in model.module.parameters())


def reference_chefer(module: torch.nn.Module, pixels: torch.Tensor, target: int) -> np.ndarray:
    """Chefer map of a float64 copy of a timm model: the test's own hooks, autograd and T×T products."""
    import copy

    model = copy.deepcopy(module).double()
    probs = []
    for block in model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda _m, _i, out: probs.append(out))
    x = pixels.double().requires_grad_(True)
    logit = model(x)[0, target]
    grads = torch.autograd.grad(logit, probs)
    attn = np.stack([p[0].detach().numpy() for p in probs])
    return reference_map(attn, np.stack([g[0].numpy() for g in grads]), module.num_prefix_tokens, "chefer")


@needs_timm
@pytest.mark.parametrize("family", ["vit", "deit_distilled", "eva02"])
def test_model_maps_equal_float64_reference(family):
    module = tm.tiny(tm.FAMILIES[family], seed=2, std=0.3)
    model = timm_adapter.wrap(module, family)
    pixels = torch.randn(1, 3, 32, 40, generator=torch.Generator().manual_seed(4))
    result = class_maps_pixels(model, pixels, method="chefer", target=1)
    ref = reference_chefer(module, pixels, target=1)
    assert result.maps.shape == (1, 4, 5) and result.targets == [1]
    np.testing.assert_allclose(result.maps[0].flatten().numpy(), ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())


@needs_timm
def test_targets_by_prediction_index_and_label():
    model = tiny_vit()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    predicted = class_maps_pixels(model, pixels)
    assert predicted.targets == predicted.logits.argmax(-1).tolist()
    first = predicted.targets[0]
    same = class_maps_pixels(model, pixels[:1], target=first)
    torch.testing.assert_close(same.maps[0], predicted.maps[0], atol=1e-6, rtol=1e-5)
    other = class_maps_pixels(model, pixels[:1], target=(first + 1) % 5)
    assert not torch.allclose(other.maps[0], predicted.maps[0], atol=1e-4)
    model.labels = {i: f"thing{i}, alias{i}" for i in range(5)}
    by_label = class_maps_pixels(model, pixels[:1], target=f"ALIAS{first}")
    torch.testing.assert_close(by_label.maps, same.maps)
    top = by_label.top(0, k=3)
    assert [i for i, _, _ in top] == by_label.logits[0].argsort(descending=True)[:3].tolist()
    assert top[0][1] == model.labels[top[0][0]] and abs(sum(p for *_, p in by_label.top(0, 5)) - 1) < 1e-5


def test_resolve_target():
    labels = {0: "tabby, tabby cat", 1: "crane", 2: "crane", 3: "tiger cat"}
    assert resolve_target("Tabby Cat", labels, 4) == 0
    assert resolve_target("tabby", labels, 4) == 0
    assert resolve_target("3", labels, 4) == 3 and resolve_target(2, labels, 4) == 2
    with pytest.raises(ValueError, match="several classes"):
        resolve_target("crane", labels, 4)
    with pytest.raises(ValueError, match="close: tiger cat"):
        resolve_target("tiger cta", labels, 4)
    with pytest.raises(ValueError, match="outside"):
        resolve_target(4, labels, 4)
    with pytest.raises(ValueError, match="no class names"):
        resolve_target("cat", {}, 4)


@needs_timm
def test_models_without_head_or_cls_are_refused():
    headless = timm_adapter.wrap(tm.tiny(tm.FAMILIES["dino"], num_classes=0), "dino")
    with pytest.raises(ValueError, match="no classification head"):
        class_maps_pixels(headless, torch.randn(1, 3, 32, 32), target=0)
    no_cls = timm_adapter.wrap(tm.tiny(tm.FAMILIES["siglip_map"]), "siglip")
    with pytest.raises(ValueError, match="no CLS token"):
        class_maps_pixels(no_cls, torch.randn(1, 3, 32, 32))


def test_hf_classifier_maps_and_sdpa_restored(tiny_dirs):
    model = load_hf(str(tiny_dirs["vit"]))
    result = class_maps_pixels(model, torch.randn(2, 3, 32, 32), method="gradrollout")
    assert result.maps.shape == (2, 4, 4) and torch.isfinite(result.maps).all() and (result.maps >= 0).all()
    assert model.module.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="no classification head"):
        class_maps_pixels(load_hf(str(tiny_dirs["dinov2"])), torch.randn(1, 3, 32, 32), target="tabby")


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.mean([spearmanr(x.flatten(), y.flatten()).statistic for x, y in zip(a, b, strict=True)]))


@needs_timm
@pytest.mark.parametrize("method", gradients.KINDS)
def test_model_parameter_randomisation_changes_the_maps(method):
    """Adebayo et al.'s sanity check: re-initialising the weights must change the maps."""
    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    model = tiny_vit(seed=0)
    maps = class_maps_pixels(model, pixels, method=method, target=0).maps
    reinit = class_maps_pixels(tiny_vit(seed=1), pixels, method=method, target=0).maps
    last_block = tiny_vit(seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in last_block.module.blocks[-1].parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.3)
    top_reinit = class_maps_pixels(last_block, pixels, method=method, target=0).maps
    full, top = _spearman(maps, reinit), _spearman(maps, top_reinit)
    assert full < 0.5 and top < 0.8, (full, top)


@needs_timm
def test_head_randomisation_leaves_raw_attention_and_rollout_identical():
    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    model = tiny_vit(seed=0)
    other_head = tiny_vit(seed=0)
    torch.manual_seed(3)
    with torch.no_grad():
        other_head.module.head.weight.normal_(0.0, 0.3)
        other_head.module.head.bias.normal_(0.0, 0.3)
    cap, cap_other = model.capture_pixels(pixels), other_head.capture_pixels(pixels)
    assert not torch.allclose(cap.logits, cap_other.logits)
    for method in ("cls", "layers", "rollout"):
        ours, theirs = (vitprobe.attribute(c, method=method).maps for c in (cap, cap_other))
        assert torch.equal(ours, theirs)
    assert torch.equal(cap.cls, cap_other.cls)
    for method in gradients.KINDS:
        a = class_maps_pixels(model, pixels, method=method, target=0).maps
        b = class_maps_pixels(other_head, pixels, method=method, target=0).maps
        assert _spearman(a, b) < 0.9
