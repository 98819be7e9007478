"""AttnLRP: equal to LXT's own relevance where LXT's patch functions cover the model (Hugging Face ViT and
DINOv2 with LXT's attention, LayerNorm and GELU patches; an OpenCLIP tower with LXT's ViT map, CP-LRP), and
conservative on the other families: with every additive source of relevance but the pixels set to zero
(biases, CLS / register / distillation tokens, position tables), the input relevance plus what each softmax
keeps (its Taylor bias, measured here from its own inputs and outputs) is the target's score."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from torch.overrides import TorchFunctionMode

import vitprobe as vp
from tests import timm_models as tm
from tests.test_families import FAMILIES, save_tokenizer
from tests.torchvision_stub import import_with_stub
from vitprobe.models import timm as timm_adapter
from vitprobe.models.hf import wrap as hf_wrap

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # LXT warns when zennit is imported after it
    LXT = import_with_stub("lxt.efficient")
OPEN_CLIP = import_with_stub("open_clip")
needs_lxt = pytest.mark.skipif(LXT is None, reason="lxt is not installed: pip install -e '.[attnlrp]'")
needs_open_clip = pytest.mark.skipif(OPEN_CLIP is None, reason="open_clip is not installed")
needs_timm = pytest.mark.skipif(tm.TORCHVISION is None, reason=tm.SKIP_REASON)

SOURCES = ("cls_token", "class_embedding", "pos_embed", "position_embedding", "positional_embedding",
           "register_tokens", "reg_token", "dist_token", "distillation_token", "mask_token")
"""Parameters a ViT adds to its tokens (with every bias): where relevance goes that is not the pixels'."""


@contextmanager
def restored(*owners: object) -> Iterator[None]:
    """Whatever is set on these classes and modules inside is undone on exit (LXT patches classes for good)."""
    saved = [(owner, dict(vars(owner))) for owner in owners]
    try:
        yield
    finally:
        for owner, before in saved:
            for key in set(vars(owner)) - set(before):
                delattr(owner, key)
            for key, value in before.items():
                if vars(owner).get(key) is not value:
                    setattr(owner, key, value)


def pixels_relevance(pixels: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """x ⊙ ∂score/∂x summed over colour channels: (B, H_in, W_in)."""
    (grad,) = torch.autograd.grad(score, pixels)
    return (pixels * grad).sum(dim=1).detach()


def per_patch(values: torch.Tensor, patch: int) -> torch.Tensor:
    b, h, w = values.shape
    return values.reshape(b, h // patch, patch, w // patch, patch).sum(dim=(2, 4))


def zero_sources(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias") or any(source in name for source in SOURCES):
                param.zero_()
    return module


class SoftmaxLedger(TorchFunctionMode):
    """The relevance every softmax keeps in gradient × input: Σ s ⊙ ∂s − Σ x ⊙ ∂x over its output s and
    input x, summed over every call in gradient mode (read after the backward pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (F.softmax, torch.softmax, torch.Tensor.softmax) and torch.is_grad_enabled() and out.requires_grad:
            x = args[0]
            out.register_hook(lambda g, s=out: self.parts.append((s.detach() * g).sum().double()))
            x.register_hook(lambda g, x=x: self.parts.append(-(x.detach() * g).sum().double()))
        return out

    @property
    def kept(self) -> float:
        return float(sum(self.parts)) if self.parts else 0.0


def assert_conserved(model, pixels, target, variant: str) -> vp.Attribution:
    with SoftmaxLedger() as ledger:
        res = vp.attribute(model, pixels, method="attnlrp", target=target, variant=variant)
    score = float(res.detail["score"].double().sum())
    total = float(res.maps.double().sum())
    torch.testing.assert_close(res.detail["pixels"].sum(dim=(1, 2)), res.maps.sum(dim=(1, 2)), atol=1e-5, rtol=1e-5)
    if variant == "cp":
        assert ledger.kept == 0.0
    else:
        assert abs(ledger.kept) > 1e-4 * abs(score)  # the softmax rule keeps some: the bookkeeping is not empty
    assert abs(total + ledger.kept - score) <= 1e-4 * max(1.0, abs(score)), (total, ledger.kept, score)
    assert res.maps.abs().max() > 1e-3 * abs(score)
    return res


# ---------------------------------------------------------------- against LXT


def lxt_hf_relevance(module, family_module, pixels: torch.Tensor, score_of, variant: str, **run) -> torch.Tensor:
    """LXT's efficient rules on a transformers ViT-family model: its attention wrapper around the family's
    eager attention function (LXT's ``patch_attention`` replaces transformers 5's attention registry by a
    plain dict, so the function alone is wrapped), its LayerNorm forward and its identity rule on GELU."""
    import lxt.efficient.patches as lp
    from transformers import activations

    with restored(family_module, torch.nn.LayerNorm, activations.GELUActivation):
        wrapper = lp.wrap_attention_forward if variant == "attnlrp" else lp.cp_wrap_attention_forward
        family_module.eager_attention_forward = wrapper(family_module.eager_attention_forward)
        assert lp.patch_method(lp.layer_norm_forward, torch.nn.LayerNorm)
        assert lp.patch_method(lp.non_linear_forward, activations.GELUActivation, keep_original=True)
        module.set_attn_implementation("eager")
        try:
            pixels = pixels.clone().requires_grad_(True)
            return pixels_relevance(pixels, score_of(module(pixel_values=pixels, **run)).sum())
        finally:
            module.set_attn_implementation("sdpa")


@needs_lxt
@pytest.mark.parametrize("variant", ["attnlrp", "cp"])
@pytest.mark.parametrize("kind", ["vit", "dinov2_with_registers"])
def test_equals_lxt_on_hugging_face_vits(tiny_dirs, kind, variant):
    family_module = {"vit": transformers.models.vit.modeling_vit,
                     "dinov2_with_registers": transformers.models.dinov2_with_registers.modeling_dinov2_with_registers
                     }[kind]
    model = vp.load(str(tiny_dirs[kind]))
    module = model.module
    run = {"interpolate_pos_encoding": True} if kind == "vit" else {}
    pixels = torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(3))
    if kind == "vit":
        target, score_of = 3, lambda out: out.logits[:, 3]
    else:  # target self: the pooled embedding projected on its difference from a blank image's
        def pooled(out):
            return out.pooler_output

        with torch.no_grad():
            reference = F.normalize(pooled(module(pixel_values=pixels)) - pooled(module(pixel_values=pixels * 0)),
                                    dim=-1)
        target, score_of = "self", lambda out: (pooled(out) * reference).sum(-1)
    res = vp.attribute(model, pixels, method="attnlrp", target=target, variant=variant)
    theirs = lxt_hf_relevance(module, family_module, pixels, score_of, variant, **run)
    assert res.maps.shape == (2, 4, 5) and res.detail["pixels"].shape == (2, 32, 40)
    torch.testing.assert_close(res.detail["pixels"], theirs, atol=1e-4, rtol=0)
    torch.testing.assert_close(res.maps, per_patch(theirs, 8), atol=1e-4, rtol=0)
    with torch.enable_grad():  # not the plain gradient × input: the rules change the map
        plain = pixels.clone().requires_grad_(True)
        module.set_attn_implementation("eager")
        try:
            naive = per_patch(pixels_relevance(plain, score_of(module(pixel_values=plain, **run)).sum()), 8)
        finally:
            module.set_attn_implementation("sdpa")
    assert (naive - res.maps).abs().max() > 0.1 * res.maps.abs().max()
    assert res.targets == ([3, 3] if kind == "vit" else None)
    assert torch.nn.LayerNorm.forward is torch.nn.modules.normalization.LayerNorm.forward  # LXT's patch undone


@pytest.fixture(scope="module")
def openclip_arch(tmp_path_factory):
    import open_clip

    root = tmp_path_factory.mktemp("openclip_lrp")
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 8, "patch_size": 8},
              "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}
    (root / "vp-lrp-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(root)
    return "vp-lrp-clip"


def tiny_openclip(name: str, seed: int = 0):
    import open_clip

    torch.manual_seed(seed)
    module = open_clip.create_model(name, pretrained=None)
    with torch.no_grad():
        for param in module.visual.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.3)
    return module.eval()


@needs_lxt
@needs_open_clip
def test_cp_lrp_equals_lxts_vit_map_on_an_openclip_tower(openclip_arch):
    """LXT's map for torchvision's ViT (CP-LRP in nn.MultiheadAttention, its LayerNorm and GELU rules) plus its
    LayerNorm forward on open_clip's LayerNorm subclass (which overrides torch's forward)."""
    import lxt.efficient as le
    import lxt.efficient.models.vit_torch as vit_torch
    import lxt.efficient.patches as lp
    import open_clip

    from vitprobe.models.openclip import wrap

    module = tiny_openclip(openclip_arch)
    model = wrap(module, openclip_arch, openclip_arch)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    res = vp.attribute(model, pixels, method="attnlrp", target="self", variant="cp")
    with torch.no_grad():
        reference = F.normalize(module.visual(pixels) - module.visual(pixels * 0), dim=-1)
    with restored(torch.nn.GELU, torch.nn.LayerNorm, torch.nn.MultiheadAttention, open_clip.transformer.LayerNorm):
        le.monkey_patch(vit_torch, vit_torch.cp_LRP)
        assert lp.patch_method(lp.layer_norm_forward, open_clip.transformer.LayerNorm)
        plain = pixels.clone().requires_grad_(True)
        theirs = pixels_relevance(plain, (module.visual(plain) * reference).sum())
    assert "original_forward" not in vars(torch.nn.MultiheadAttention)
    torch.testing.assert_close(res.detail["pixels"], theirs, atol=1e-4, rtol=0)
    torch.testing.assert_close(res.maps, per_patch(theirs, 8), atol=1e-4, rtol=0)
    torch.testing.assert_close(res.detail["score"], (module.visual(pixels) * reference).sum(-1).detach(),
                               atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- conservation on the other families


@pytest.mark.parametrize("variant", ["attnlrp", "cp"])
@pytest.mark.parametrize("kind", ["deit", "dinov2_with_registers"])
def test_relevance_is_conserved_on_hugging_face_backbones(tiny_dirs, kind, variant):
    model = vp.load(str(tiny_dirs[kind]))
    zero_sources(model.module)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    res = assert_conserved(model, pixels, 1 if kind == "deit" else "self", variant)
    assert res.maps.shape == (2, 4, 4)


@pytest.fixture(scope="module")
def dual_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lrp_dual")
    for i, name in enumerate(("clip", "siglip")):
        torch.manual_seed(10 + i)
        module = FAMILIES[name][0]()
        with torch.no_grad():
            for param in module.vision_model.parameters():
                if param.dim() > 1:
                    param.normal_(0.0, 0.3)
        module.save_pretrained(root / name)
        save_tokenizer(root / name)
    return root


@pytest.mark.parametrize("variant", ["attnlrp", "cp"])
@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_relevance_of_a_prompt_is_conserved_on_clip_and_siglip(dual_dirs, name, variant):
    """CLIP (QuickGELU, the projection), SigLIP (the attention-pooling head's nn.MultiheadAttention, its
    logit bias); the prompt's cosine divides by the embedding's norm held constant."""
    model = vp.load(str(dual_dirs / name))
    zero_sources(model.module)
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    res = assert_conserved(model, pixels, "a photo of a cat", variant)
    assert 'the prompt "a photo of a cat"' in res.title
    other = vp.attribute(model, pixels, method="attnlrp", target="the car", variant=variant)
    assert (other.maps - res.maps).abs().max() > 1e-4 * res.maps.abs().max()


@needs_timm
@pytest.mark.parametrize("variant", ["attnlrp", "cp"])
@pytest.mark.parametrize(("family", "target"), [("deit_distilled", 2), ("dinov2_reg4", "self"), ("eva02", 1),
                                                ("siglip_map", "self")])
def test_relevance_is_conserved_on_timm_models(family, target, variant):
    """timm's distilled DeiT, registers, EVA-02 (rotary embedding, SwiGLU: the gate's product takes the
    uniform rule) and the SigLIP attention pool (fused attention: scaled_dot_product_attention written out)."""
    module = tm.tiny(tm.FAMILIES[family], seed=2, std=0.3)
    if target == "self":
        module.reset_classifier(0)
    for gamma in (p for name, p in module.named_parameters() if name.endswith("gamma")):
        gamma.data.fill_(1.0)
    model = timm_adapter.wrap(zero_sources(module), family)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    assert_conserved(model, pixels, target, variant)


@needs_open_clip
def test_relevance_is_conserved_on_an_openclip_tower(openclip_arch):
    module = zero_sources(tiny_openclip(openclip_arch, seed=4))
    from vitprobe.models.openclip import wrap

    model = wrap(module, openclip_arch, openclip_arch)
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    assert_conserved(model, pixels, "a photo of a cat", "attnlrp")
    assert "forward" not in vars(module.visual.transformer.resblocks[0].attn)


# ---------------------------------------------------------------- the method in the toolkit


def test_attnlrp_leaves_the_model_as_it_was(tiny_dirs):
    model = vp.load(str(tiny_dirs["vit"]))
    flags = {name: p.requires_grad for name, p in model.module.named_parameters()}
    model.module.classifier.weight.requires_grad_(False)
    flags["classifier.weight"] = False
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = vp.attribute(model, pixels, method="chefer", target=0).maps
    hooks = {name: len(m._forward_hooks) for name, m in model.module.named_modules()}
    lrp = vp.attribute(model, pixels, method="attnlrp", target=0)
    assert {name: p.requires_grad for name, p in model.module.named_parameters()} == flags
    assert all(p.grad is None for p in model.module.parameters())
    assert {name: len(m._forward_hooks) for name, m in model.module.named_modules()} == hooks
    torch.testing.assert_close(vp.attribute(model, pixels, method="chefer", target=0).maps, before)
    with torch.no_grad():
        logits = model.module(pixel_values=pixels).logits
    torch.testing.assert_close(lrp.detail["score"], logits[:, 0], atol=1e-5, rtol=1e-5)
    assert lrp.title == "AttnLRP relevance of the class" and lrp.targets == [0]


def test_attnlrp_is_listed_with_its_variant():
    from typer.testing import CliRunner

    from vitprobe.cli import app

    info = next(m for m in vp.methods() if m.name == "attnlrp")
    assert [p.name for p in info.params] == ["target", "variant"] and "gradients" in info.requires
    out = CliRunner().invoke(app, ["methods"]).stdout
    assert "--variant attnlrp|cp = 'attnlrp'" in out
    with pytest.raises(ValueError, match="--variant takes attnlrp|cp"):
        vp.check(_tiny_model(), "attnlrp", variant="lrp")


def _tiny_model():
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    image_size=32, patch_size=8, num_labels=3)
    return hf_wrap(transformers.ViTForImageClassification(config), "tiny-vit")


def test_attnlrp_from_the_command_line(tiny_dirs, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from vitprobe.cli import app

    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8")).save(tmp_path / "p.png")
    result = CliRunner().invoke(app, ["explain", str(tmp_path / "p.png"), "--model", str(tiny_dirs["vit"]),
                                      "--method", "attnlrp", "--variant", "cp", "--target", "2",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    maps = np.load(tmp_path / "out" / "p" / "maps.npz")
    assert any(key.startswith("attnlrp") for key in maps.files)
