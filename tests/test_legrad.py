"""LeGrad against a float64 reference written from its definition with the test's own hooks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vitprobe as vp
from tests import timm_models as tm
from vitprobe.models import timm as timm_adapter

needs_timm = pytest.mark.skipif(tm.TORCHVISION is None, reason=tm.SKIP_REASON)


def reference_legrad(module: torch.nn.Module, pixels: torch.Tensor, target, start: int) -> np.ndarray:
    """float64 LeGrad of a timm model: for each block l ≥ start, its output tokens through the model's
    final norm and head give score_l (a logit, or for target 'self' the projection on the unit final
    embedding minus a blank image's); ReLU(∂score_l/∂A_l), mean over heads and query rows, patch
    columns; summed over layers; min-max."""
    model = copy.deepcopy(module).double()
    with torch.no_grad():
        blank = model.forward_head(model.forward_features(torch.zeros_like(pixels).double()), pre_logits=True)
    probs, outs = [], []
    for block in model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda _m, _i, out: probs.append(out))
        block.register_forward_hook(lambda _m, _i, out: outs.append(out))
    model(pixels.double().requires_grad_(True))
    final = F.normalize(model.forward_head(model.norm(outs[-1]), pre_logits=True).detach() - blank, dim=-1)
    total = 0.0
    for layer in range(start, len(model.blocks)):
        x = model.norm(outs[layer])
        score = (model.forward_head(x)[0, target] if target != "self"
                 else (model.forward_head(x, pre_logits=True) * final).sum())
        (grad,) = torch.autograd.grad(score, probs[layer], retain_graph=True)
        total = total + grad[0].clamp_min(0).mean(0).mean(0)[module.num_prefix_tokens:].numpy()
    return (total - total.min()) / (total.max() - total.min())


@needs_timm
@pytest.mark.parametrize(("family", "target"), [("vit", 2), ("deit_distilled", 0), ("dinov2_reg4", "self"),
                                                 ("siglip_map", "self")])
@pytest.mark.parametrize("start", [0, -2])
def test_legrad_equals_float64_reference(family, target, start):
    module = tm.tiny(tm.FAMILIES[family], seed=3, std=0.3, depth=3)
    if target == "self":
        module.reset_classifier(0)
    for gamma in (p for name, p in module.named_parameters() if name.endswith("gamma")):
        gamma.data.fill_(1.0)  # timm's LayerScale starts at 1e-5: blocks that barely touch the tokens
    model = timm_adapter.wrap(module, family)
    pixels = torch.randn(1, 3, 32, 40, generator=torch.Generator().manual_seed(1))
    res = vp.attribute(model, pixels, method="legrad", target=target, start_layer=start)
    ref = reference_legrad(module, pixels, target, start % 3).reshape(4, 5)
    assert res.maps.shape == (1, 4, 5) and res.detail["layers"].shape == (1, 3 - start % 3, 4, 5)
    np.testing.assert_allclose(res.maps[0].double().numpy(), ref, atol=2e-5, rtol=0)
    assert res.maps.min() == 0 and abs(float(res.maps.max()) - 1) < 1e-6
    assert res.targets == ([target] if target != "self" else None)


def test_legrad_on_a_hugging_face_backbone_explains_its_embedding(tiny_dirs, tmp_path):
    model = vp.load(str(tiny_dirs["dinov2"]))
    rng = np.random.default_rng(0)
    image, other = (Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(2))
    other.save(tmp_path / "other.png")
    own = vp.attribute(model, image, method="legrad", size=(28, 28))
    assert own.targets is None and "its own embedding" in own.title and own.maps.std() > 0.1
    torch.testing.assert_close(vp.attribute(model, image, method="legrad", size=(28, 28), target="self").maps,
                               own.maps)
    elsewhere = vp.attribute(model, image, method="legrad", size=(28, 28), target=f"image:{tmp_path / 'other.png'}")
    assert (elsewhere.maps - own.maps).abs().max() > 0.05 and "other.png" in elsewhere.title
