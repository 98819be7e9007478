"""timm adapter: capture under timm's fused attention equals its non-fused attention, layouts,
RoPE, models without CLS, preprocessing from pretrained_cfg, and loading by spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vitprobe
from tests import timm_models as tm
from vitprobe import UnsupportedModelError
from vitprobe.analysis.distance import MeanDistance
from vitprobe.capture import AttentionSite
from vitprobe.io.preprocess import PreprocessSpec
from vitprobe.models import timm as timm_adapter

pytestmark = pytest.mark.skipif(tm.TORCHVISION is None, reason=tm.SKIP_REASON)


@pytest.fixture(params=sorted(tm.FAMILIES))
def family(request) -> str:
    return request.param


def wrapped(family: str, **overrides) -> vitprobe.VitModel:
    seed = sorted(tm.FAMILIES).index(family)
    return timm_adapter.wrap(tm.tiny(tm.FAMILIES[family], seed=seed, **overrides), family)


@pytest.mark.parametrize("hw", [(32, 32), (32, 48)])
def test_fused_capture_equals_timm_non_fused(family, hw, monkeypatch):
    model = wrapped(family)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    pixels = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    cap = model.capture_pixels(pixels, full_layers=[0, 1])
    pooled = getattr(model.module, "attn_pool", None) is not None  # attention pooling ('map') runs it once more
    assert len(calls) == 2 + pooled, "every layer calls the fused kernel (answered by the recorder)"
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    logits, reference = tm.non_fused_attentions(model.module, pixels)
    for layer, ref in enumerate(reference):
        assert ref.amax(-1).mean() > 0.3  # peaked attention: a wrong capture could not pass by accident
        assert cap.full[layer].shape == ref.shape
        torch.testing.assert_close(cap.full[layer], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(cap.logits, logits, atol=1e-4, rtol=1e-4)
    assert cap.layout.prefix_names == tm.PREFIX[family]
    assert cap.layout.grid_hw == (hw[0] // tm.PATCH, hw[1] // tm.PATCH)


def test_rope_is_applied_to_q_and_k():
    """EVA-02 rotates q and k before the softmax: CLS rows recomputed from the hooked q and k (the
    fused kernel keeps running) are right with the rotation and wrong without it."""
    model = wrapped("eva02")
    assert all(site.qk_transform is not None for site in model.sites)
    pixels = torch.randn(1, 3, 32, 48)
    cap = model.capture_pixels(pixels, fuse=(), full_layers=())
    _, reference = tm.non_fused_attentions(model.module, pixels)
    for layer, ref in enumerate(reference):
        torch.testing.assert_close(cap.cls[layer], ref[:, :, cap.layout.cls_index], atol=1e-5, rtol=0)
    plain = [AttentionSite(s.query, s.key, s.num_heads, s.head_dim, s.scale) for s in model.sites]
    without = vitprobe.VitModel(**{**model.__dict__, "sites": plain}).capture_pixels(pixels, fuse=(), full_layers=())
    assert (cap.cls - without.cls).abs().max() > 1e-2


def test_grouped_query_attention_with_rope():
    model = timm_adapter.wrap(
        tm.tiny("eva02_tiny_patch14_224", attn_type="rope", num_kv_heads=2, qkv_fused=False), "gqa"
    )
    pixels = torch.randn(2, 3, 32, 40)
    cap = model.capture_pixels(pixels, full_layers=[0, 1])
    _, reference = tm.non_fused_attentions(model.module, pixels)
    for layer, ref in enumerate(reference):
        torch.testing.assert_close(cap.full[layer], ref, atol=1e-5, rtol=0)


def test_hooks_are_removed_after_capture():
    model = wrapped("eva02")
    model.capture_pixels(torch.randn(1, 3, 32, 32))
    for block in model.module.blocks:
        attn = block.attn
        assert not attn._forward_pre_hooks and not attn.q_norm._forward_hooks and not attn.k_norm._forward_hooks
        assert attn.fused_attn


def test_model_without_cls_rejects_cls_maps_but_not_the_rest():
    model = wrapped("siglip_map")
    assert model.module.global_pool == "map" and model.prefix_names == ()
    cap = model.capture_pixels(torch.randn(2, 3, 32, 32), full_layers=[1], reducers={"distance": MeanDistance()})
    assert cap.cls is None
    for method in ("cls", "layers", "rollout"):
        with pytest.raises(ValueError, match="no CLS token"):
            vitprobe.attribute(cap, method=method)
    query = vitprobe.attribute(cap, method="query", patch=(1, 2)).detail["heads"]
    torch.testing.assert_close(query, cap.full[1][:, :, 6].reshape(2, 4, 4, 4))
    assert cap.reduced["distance"].shape == (2, 2, 4) and (cap.reduced["distance"] > 0).all()


def test_embedding_tables(family):
    """The position grid is what the model adds to a zero patch token at (row, col)."""
    model = wrapped(family)
    module = model.module
    assert model.patch_weight.shape == (32, 3, tm.PATCH, tm.PATCH)
    with torch.no_grad():
        embedded = module._pos_embed(torch.zeros(1, 4, 4, 32))
    tokens = embedded[0] if isinstance(embedded, tuple) else embedded
    assert model.position_grid.shape == (4, 4, 32)
    torch.testing.assert_close(model.position_grid.reshape(16, 32), tokens[0, module.num_prefix_tokens :])


def _spec(**cfg) -> PreprocessSpec:
    module = torch.nn.Module()
    module.pretrained_cfg = cfg
    return timm_adapter.preprocess_from_cfg(module)


def test_preprocess_from_pretrained_cfg():
    centre = _spec(input_size=(3, 224, 224), crop_pct=0.9, crop_mode="center", interpolation="bicubic",
                   mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert (centre.shortest_edge, centre.resize_hw, centre.crop_hw) == (248, None, (224, 224))
    assert centre.mean == (0.5, 0.5, 0.5) and centre.resample == Image.Resampling.BICUBIC
    squash = _spec(input_size=(3, 384, 384), crop_pct=0.95, crop_mode="squash", interpolation="bilinear")
    assert (squash.shortest_edge, squash.resize_hw, squash.crop_hw) == (None, (404, 404), (384, 384))
    assert squash.resample == Image.Resampling.BILINEAR
    full = _spec(input_size=(3, 518, 518), crop_pct=1.0)
    assert (full.shortest_edge, full.crop_hw) == (518, (518, 518))


def test_preprocess_follows_the_models_own_input_size():
    model = wrapped("deit_distilled")
    assert model.module.pretrained_cfg["input_size"][-1] == 224
    assert model.preprocess.crop_hw == (32, 32) and model.preprocess.shortest_edge == 35
    assert model.preprocess.mean == (0.485, 0.456, 0.406)


@pytest.mark.skipif(tm.TORCHVISION != "real", reason="compares with timm.data, which needs the real torchvision")
def test_preprocess_matches_timm_data_transform():
    from timm.data import create_transform, resolve_data_config

    module = tm.tiny(tm.FAMILIES["vit"])
    module.pretrained_cfg = {**module.pretrained_cfg, "input_size": (3, 32, 32), "crop_pct": 0.8}
    model = timm_adapter.wrap(module, "vit")  # resize the short side to 40, crop 32: whole-pixel offsets
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (45, 30, 3), dtype=np.uint8))
    ours, _, _ = model.prepare(image)
    theirs = create_transform(**resolve_data_config(model=model.module))(image)
    torch.testing.assert_close(ours[0], theirs, atol=1e-5, rtol=0)


def test_load_by_spec_with_random_weights(tmp_path):
    model = vitprobe.load("timm:vit_tiny_patch16_224:random")
    assert model.family == "timm" and model.num_layers == 12 and model.prefix_names == ("cls",)
    assert (model.preprocess.shortest_edge, model.preprocess.crop_hw) == (248, (224, 224))
    assert "tabby" in model.labels[281]  # ImageNet class names shipped with timm
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    cap = model.capture(image, layers=[-1])
    assert cap.layout.grid_hw == (14, 14) and cap.logits.shape == (1, 1000)

    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.module.state_dict().items()}, str(path))
    again = vitprobe.load(f"timm:vit_tiny_patch16_224:{path}")
    torch.testing.assert_close(again.capture(image, layers=[-1]).logits, cap.logits)
    with pytest.raises(ValueError, match="safetensors"):
        vitprobe.load(f"timm:vit_tiny_patch16_224:{tmp_path / 'weights.pth'}")


@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [
        ("timm:swin_tiny_patch4_window7_224", UnsupportedModelError, "windowed attention"),
        ("timm:vit_base_r50_s16_384", UnsupportedModelError, "convolutional stem"),
        ("timm:no_such_model_anywhere", ValueError, "unknown timm model"),
        ("timm:vit_small_patch16_224.no_such_tag:random", ValueError, "Invalid pretrained tag"),
    ],
)
def test_unsupported_specs_fail_in_one_line(spec, error, words):
    with pytest.raises(error) as err:
        vitprobe.load(spec)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_wrap_rejects_non_vit_modules_and_other_attention():
    with pytest.raises(UnsupportedModelError, match="not supported"):
        timm_adapter.wrap(torch.nn.Linear(3, 3), "linear")
    differential = tm.tiny(tm.FAMILIES["vit"], attn_layer="diff")  # softmax(q1·k1ᵀ) − λ·softmax(q2·k2ᵀ)
    with pytest.raises(UnsupportedModelError, match="DiffAttention is not one vitprobe can recompute"):
        timm_adapter.wrap(differential, "vit-diff")


def test_missing_timm_gives_a_one_line_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm":
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ImportError, match=r"pip install 'vitprobe\[timm\]'"):
        timm_adapter.load_timm("vit_tiny_patch16_224:random")


@pytest.mark.skipif(tm.TORCHVISION is None, reason=tm.SKIP_REASON)
def test_the_torchvision_stand_in_stays_inside_timms_import():
    """The stand-in is on sys.path only while timm imports; it never shadows a real torchvision and never
    reaches transformers, whose image processors would then be routed through placeholders."""
    import importlib.util
    import sys

    from transformers.utils import is_torchvision_available

    from tests.torchvision_stub import HERE

    assert HERE not in sys.path
    real = tm.TORCHVISION == "real"
    if not real:
        assert not [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]
    assert (importlib.util.find_spec("torchvision") is not None) == real
    assert is_torchvision_available() == real


def test_map_pooling_head_gives_the_pool_map():
    """SigLIP-style ``attn_pool``: the latent's attention, against float64 from the head's own weights."""
    model = wrapped("siglip_map")
    pixels = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    cap = model.capture_pixels(pixels, layers=[], fuse=(), full_layers=(), pool=True)
    pool = model.module.attn_pool
    seen = {}
    handle = pool.register_forward_pre_hook(lambda _m, args: seen.update(x=args[0].detach().double()))
    with torch.no_grad():
        model.forward(pixels)
    handle.remove()
    x, d, heads = seen["x"], pool.latent.shape[-1], pool.num_heads
    if pool.pos_embed is not None:
        x = x + pool.pos_embed.double()
    q = pool.latent.double()[:, :1] @ pool.q.weight.double().T + pool.q.bias.double()
    k = x @ pool.kv.weight.double()[:d].T + pool.kv.bias.double()[:d]
    q = q.view(1, 1, heads, d // heads).transpose(1, 2)
    k = k.view(2, -1, heads, d // heads).transpose(1, 2)
    reference = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1)[:, :, 0]
    assert cap.pool.shape == (2, heads, 24)
    torch.testing.assert_close(cap.pool.double(), reference, atol=1e-6, rtol=0)
    result = vitprobe.attribute(model, torch.rand(32, 48, 3).numpy(), method="pool", size=(32, 48))
    assert result.maps.shape == (1, 4, 6)
