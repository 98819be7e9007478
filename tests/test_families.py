"""Modern ViT families loaded from local directories: layouts read from the model, captured attention
equal to each family's own eager attention (under the fused kernel), SigLIP's pooling map, MAE
unmasked, and text prompts as gradient targets scored by the model's own image–text logit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers

import vitprobe as vp
from vitprobe import CaptureError
from vitprobe.analysis.entropy import RowEntropy
from vitprobe.capture import AttentionRecorder, probe_attention
from vitprobe.models.hf import load_hf
from vitprobe.targets import attention_gradients, gradient_pass

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
              patch_size=8, initializer_range=0.3)
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=16,
            max_position_embeddings=8, pad_token_id=0, eos_token_id=9, bos_token_id=1)
NAFLEX = {k: v for k, v in VISION.items() if k != "image_size"} | {"num_patches": 16}
WORDS = ["[PAD]", "[UNK]", "a", "photo", "of", "cat", "dog", "the", "car", "[EOS]"]

FAMILIES = {  # name: (builder, prefix tokens)
    "clip": (lambda: transformers.CLIPModel(transformers.CLIPConfig(
        vision_config=VISION, text_config=TEXT, projection_dim=16)), ("cls",)),
    "clip_vision": (lambda: transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)), ("cls",)),
    "metaclip_2": (lambda: transformers.MetaClip2Model(transformers.MetaClip2Config(
        vision_config=VISION, text_config=TEXT, projection_dim=16)), ("cls",)),
    "siglip": (lambda: transformers.SiglipModel(transformers.SiglipConfig(
        vision_config=VISION, text_config=TEXT)), ()),
    "siglip2": (lambda: transformers.Siglip2Model(transformers.Siglip2Config(
        vision_config=NAFLEX, text_config=TEXT)), ()),
    "beit": (lambda: transformers.BeitForImageClassification(transformers.BeitConfig(
        **VISION, use_relative_position_bias=True, num_labels=3)), ("cls",)),
    "beit_shared": (lambda: transformers.BeitModel(transformers.BeitConfig(
        **VISION, use_shared_relative_position_bias=True)), ("cls",)),
    "data2vec": (lambda: transformers.Data2VecVisionModel(transformers.Data2VecVisionConfig(
        **VISION, use_relative_position_bias=True)), ("cls",)),
    "mae": (lambda: transformers.ViTMAEModel(transformers.ViTMAEConfig(**VISION)), ("cls",)),
    "ijepa": (lambda: transformers.IJepaModel(transformers.IJepaConfig(**VISION)), ()),
    "dinov3": (lambda: transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(
        **VISION, num_register_tokens=4)), ("cls", "reg0", "reg1", "reg2", "reg3")),
}
IN_KERNEL = ("beit", "beit_shared", "data2vec", "dinov3")


def save_tokenizer(directory: Path) -> None:
    """A word-level tokenizer of ten words, saved as the checkpoint's own."""
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                         eos_token="[EOS]").save_pretrained(directory)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    dirs = {}
    for i, (name, (build, _)) in enumerate(FAMILIES.items()):
        torch.manual_seed(i)
        module = build()
        with torch.no_grad():  # relative position tables start at zero: give them values that matter
            for sub in module.modules():
                if hasattr(sub, "relative_position_bias_table"):
                    sub.relative_position_bias_table.normal_(0, 1.0)
        module.save_pretrained(root / name)
        if hasattr(module, "text_model"):
            save_tokenizer(root / name)
        dirs[name] = root / name
    return dirs


def photo(seed: int = 0, hw: tuple[int, int] = (40, 56)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((*hw, 3)) * 255).astype("uint8"))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_capture_equals_the_familys_eager_attention(family_dirs, name):
    """Square and non-square inputs; every layer in full, CLS rows alone, and the layout from the model."""
    model = load_hf(str(family_dirs[name]))
    assert model.module.config._attn_implementation == "sdpa"
    assert model.prefix_names == FAMILIES[name][1]
    for hw in ((32, 32), (32, 48)):
        pixels = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(len(name)))
        cap = model.capture_pixels(pixels, full_layers=list(range(model.num_layers)), fuse=("mean",))
        with torch.no_grad():
            _, eager, _ = model.attention_forward(pixels)
        assert model.module.config._attn_implementation == "sdpa"  # restored after the eager pass
        assert cap.layout.grid_hw == (hw[0] // 8, hw[1] // 8)
        assert len(eager) == model.num_layers
        for layer, ref in enumerate(eager):
            assert ref.shape == cap.full[layer].shape
            torch.testing.assert_close(cap.full[layer], ref.float(), atol=1e-5, rtol=0)
        if model.prefix_names:
            fast = model.capture_pixels(pixels, full_layers=(), fuse=())
            for layer, ref in enumerate(eager):
                torch.testing.assert_close(fast.cls[layer], ref[:, :, 0].float(), atol=1e-5, rtol=0)
        else:
            assert cap.cls is None


@pytest.mark.parametrize("name", IN_KERNEL)
def test_what_the_kernel_adds_is_in_the_maps(family_dirs, name):
    """The rotary embedding or position bias changes attention: q·kᵀ of the projections alone is far off."""
    model = load_hf(str(family_dirs[name]))
    pixels = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    layout = model.layout((32, 48))
    bare = [dataclasses.replace(site, in_kernel=None) for site in model.sites]
    recorder = AttentionRecorder(bare, lambda n: layout, [0], fuse=("mean",), answer_sdpa=False)
    with recorder, torch.no_grad():
        model.forward(pixels)
    recorder.finish()
    with torch.no_grad():
        _, eager, _ = model.attention_forward(pixels)
    assert (recorder.fused["mean"][0] - eager[0].mean(1)).abs().max() > 1e-3


def test_an_eager_model_that_rotates_inside_attention_is_refused(family_dirs):
    model = load_hf(str(family_dirs["dinov3"]), attn_implementation="eager")
    with pytest.raises(CaptureError, match="rotary position embedding") as err:
        model.capture_pixels(torch.randn(1, 3, 32, 32))
    assert "\n" not in str(err.value)


def test_mae_keeps_every_patch_in_grid_order(family_dirs):
    model = load_hf(str(family_dirs["mae"]))
    pixels = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(4))
    first = model.capture_pixels(pixels, full_layers=[0], fuse=())
    second = model.capture_pixels(pixels, full_layers=[0], fuse=())
    assert first.layout.n_tokens == 1 + 4 * 6 == first.full[0].shape[-1]
    torch.testing.assert_close(first.full[0], second.full[0], atol=0, rtol=0)
    # grid order: flipping the image left-right mirrors the first layer's position-free patch embeddings
    tokens = {}
    handle = model.blocks[0].register_forward_pre_hook(lambda _m, args: tokens.update(x=args[0]))
    with torch.no_grad():
        model.forward(pixels)
    handle.remove()
    patch_embed = model.module.embeddings.patch_embeddings(pixels)
    position = model.module.embeddings.interpolate_pos_encoding(patch_embed, 32, 48)[:, 1:]
    torch.testing.assert_close(tokens["x"][:, 1:], patch_embed + position, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["ijepa", "siglip"])
def test_models_without_prefix_give_query_maps_and_refuse_cls_in_one_line(family_dirs, name):
    model = vp.load(str(family_dirs[name]))
    with pytest.raises(ValueError, match="no CLS token") as err:
        vp.attribute(model, photo(), method="cls")
    assert "\n" not in str(err.value)
    result = vp.attribute(model, photo(), method="query", size=(32, 48))
    assert result.maps.shape == (1, 4, 6)
    cap = model.capture_pixels(torch.randn(1, 3, 32, 48), fuse=(), full_layers=[1], reducers={"e": RowEntropy()})
    torch.testing.assert_close(cap.full[1].sum(-1), torch.ones(1, 4, 24), atol=1e-6, rtol=0)
    assert cap.reduced["e"].shape == (2, 1, 4, 24)


@pytest.mark.parametrize("name", ["siglip", "siglip2"])
def test_pool_map_is_the_probes_own_attention(family_dirs, name):
    model = vp.load(str(family_dirs[name]))
    pixels = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(5))
    cap = model.capture_pixels(pixels, layers=[], fuse=(), full_layers=(), pool=True)
    caught = {}
    handle = model.pool.module.register_forward_hook(lambda _m, _i, out: caught.update(weights=out[1]))
    with torch.no_grad():
        model.forward(pixels)
    handle.remove()
    assert cap.pool.shape == (2, 4, 24)
    torch.testing.assert_close(cap.pool.sum(-1), torch.ones(2, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(cap.pool.mean(1), caught["weights"][:, 0].float(), atol=1e-6, rtol=0)
    result = vp.attribute(model, photo(), method="pool", head=2, size=(32, 48))
    torch.testing.assert_close(result.maps, result.detail["heads"][:, 2])
    assert result.maps.shape == (1, 4, 6)


def test_probe_attention_equals_a_float64_reference():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).double()
    query, key = torch.randn(2, 1, 16, dtype=torch.float64), torch.randn(2, 9, 16, dtype=torch.float64)
    w_q, w_k = mha.in_proj_weight[:16], mha.in_proj_weight[16:32]
    b_q, b_k = mha.in_proj_bias[:16], mha.in_proj_bias[16:32]
    q = (query @ w_q.T + b_q).view(2, 1, 4, 4).transpose(1, 2)
    k = (key @ w_k.T + b_k).view(2, 9, 4, 4).transpose(1, 2)
    reference = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    torch.testing.assert_close(probe_attention(mha, query, key).double(), reference, atol=1e-6, rtol=0)


def test_pool_on_a_model_without_a_pooling_head_is_one_line(family_dirs):
    model = vp.load(str(family_dirs["clip"]))
    with pytest.raises(ValueError, match="no attention-pooling head"):
        vp.attribute(model, photo(), method="pool")


def models_own_logit(model, directory: Path, pixels: torch.Tensor, prompt: str) -> torch.Tensor:
    """logits_per_image of the dual model's own forward, text tokenised as the adapter does."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    padding = ({"padding": "max_length", "max_length": TEXT["max_position_embeddings"]}
               if "siglip" in model.family else {"padding": True})
    tokens = tokenizer([prompt], return_tensors="pt", **padding)
    out = model.module(pixel_values=pixels, interpolate_pos_encoding=True, **tokens)
    return out.logits_per_image[:, 0]


@pytest.mark.parametrize("name", ["clip", "siglip", "metaclip_2"])
def test_prompt_score_is_the_models_own_image_text_logit(family_dirs, name):
    model = vp.load(str(family_dirs[name]))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    run = gradient_pass(model, pixels, "a photo of a cat")
    assert run.words == 'the prompt "a photo of a cat"' and run.targets is None
    with torch.no_grad():
        own = models_own_logit(model, family_dirs[name], pixels, "a photo of a cat")
    torch.testing.assert_close(run.score(run.tokens[-1]).detach(), own, atol=1e-5, rtol=1e-5)


def test_prompt_gradients_are_paired_with_their_own_layers(family_dirs):
    """∂(own logit)/∂A_l through the model's own forward equals what vitprobe pairs with layer l."""
    model = vp.load(str(family_dirs["clip"]))
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    got = attention_gradients(model, pixels, "text:the cat")
    module = model.module
    module.set_attn_implementation("eager")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(family_dirs["clip"])
        out = module(pixel_values=pixels, output_attentions=True, **tokenizer(["the cat"], return_tensors="pt"))
        attentions = out.vision_model_output.attentions
        reference = torch.autograd.grad(out.logits_per_image[0, 0], attentions)
    finally:
        module.set_attn_implementation("sdpa")
    assert len(got.grads) == len(reference) == 2
    for mine, theirs in zip(got.grads, reference, strict=True):
        torch.testing.assert_close(mine, theirs.float(), atol=1e-6, rtol=1e-4)
    assert (got.grads[0] - got.grads[1]).abs().max() > 1e-6  # pairing by index can fail


@pytest.mark.parametrize("method", ["chefer", "legrad"])
def test_another_prompt_gives_another_map(family_dirs, method):
    model = vp.load(str(family_dirs["clip"]))
    cat = vp.attribute(model, photo(), method=method, target="a photo of a cat")
    car = vp.attribute(model, photo(), method=method, target="text:the car")
    assert cat.maps.shape == car.maps.shape == (1, 4, 4)
    assert (cat.maps - car.maps).abs().max() > 1e-4


def test_a_prompt_for_a_model_without_text_tower_is_one_line(family_dirs):
    model = vp.load(str(family_dirs["clip_vision"]))
    with pytest.raises(ValueError, match="no text tower"):
        vp.attribute(model, photo(), method="legrad", target="text:a cat")


def test_models_lists_every_family_with_its_tokens_and_methods():
    from typer.testing import CliRunner

    from vitprobe.cli import app

    out = CliRunner().invoke(app, ["models"]).stdout
    lines = {line.split(" (")[0].strip(): line for line in out.splitlines() if "; tokens: " in line}
    for title in ("CLIP", "MetaCLIP 2", "SigLIP", "SigLIP 2", "BEiT", "data2vec-vision", "MAE", "I-JEPA", "DINOv3",
                  "ViT / DINO", "DeiT", "DINOv2", "DINOv2 with registers"):
        assert any(key.startswith(title) for key in lines), title
    assert "tokens: none" in lines["SigLIP"] and "pool" in lines["SigLIP"] and " cls," not in lines["SigLIP"]
    assert "tokens: CLS + registers" in lines["DINOv3"] and "methods: cls," in lines["DINOv3"]
    assert "pool" not in lines["CLIP"]


def test_cli_explains_one_map_per_prompt(family_dirs, tmp_path):
    from typer.testing import CliRunner

    from vitprobe.cli import app

    photo().save(tmp_path / "p.png")
    result = CliRunner().invoke(app, [
        "explain", str(tmp_path / "p.png"), "--model", str(family_dirs["clip"]), "--method", "legrad",
        "--target", "a photo of a cat", "--target", "the car", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    maps = np.load(tmp_path / "out" / "p" / "maps.npz")
    cat, car = maps["legrad_targeta-photo-of-a-cat"], maps["legrad_targetthe-car"]
    assert cat.shape == car.shape == (4, 4) and np.abs(cat - car).max() > 1e-4
