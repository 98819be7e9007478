"""LeGrad against float64 references with the test's own hooks: the authors' paths for OpenCLIP, Hugging Face
CLIP / MetaCLIP 2 and SigLIP (with its neutral-prompt correction), vitprobe's rule for timm classifiers and
backbones."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image

import vitprobe as vp
from tests import timm_models as tm
from tests.torchvision_stub import import_with_stub
from vitprobe.models import timm as timm_adapter
from vitprobe.targets import gradient_pass

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


# ------------------------------------------------- the authors' paths (WalBouss/LeGrad, legrad/wrapper.py)
# References written from the authors' code, step by step, in float64: each keeps the per-layer attention
# its own way (the authors replace nn.MultiheadAttention's forward with a written-out one that stores the
# probabilities), scores layer l by the authors' feature against the normalised text embedding (a cosine;
# vitprobe scores the model's own logit, a positive scale and a bias beside it), takes ReLU of the gradient,
# the mean over heads and query rows (CLIP) or the first latent query's row (SigLIP's pooling head), sums the
# layers and min-max scales; on the patch grid (the authors upsample each layer map before the min-max).

def written_out_attention(mha: torch.nn.Module, query, key, value, store: list) -> torch.Tensor:
    """nn.MultiheadAttention (batch first, packed projection) with its probabilities (B, heads, Tq, T)
    appended to ``store``: the output (B, Tq, D)."""
    b, tq, d = query.shape
    heads = mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    q = F.linear(query, w_q, b_q).view(b, tq, heads, -1).transpose(1, 2)
    k = F.linear(key, w_k, b_k).view(b, key.shape[1], heads, -1).transpose(1, 2)
    v = F.linear(value, w_v, b_v).view(b, key.shape[1], heads, -1).transpose(1, 2)
    probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    store.append(probs)
    return mha.out_proj((probs @ v).transpose(1, 2).reshape(b, tq, d))


def legrad_of_layers(per_layer: list[torch.Tensor], pooled: bool, n_prefix: int) -> torch.Tensor:
    """Sum over layers of ReLU(grad) averaged over heads, then over rows (or the first latent's row), prefix
    columns dropped: (B, N) patches."""
    total = 0
    for grad in per_layer:
        heads = grad.clamp(min=0.0).mean(dim=1)
        total = total + (heads[:, 0] if pooled else heads.mean(dim=1))[:, n_prefix:]
    return total


def min_max(values: torch.Tensor) -> torch.Tensor:
    low = values.amin(dim=-1, keepdim=True)
    return (values - low) / (values.amax(dim=-1, keepdim=True) - low)


def assert_matches(mine: torch.Tensor, reference: torch.Tensor) -> float:
    mine, reference = mine.double().flatten(), reference.double().flatten()
    corr = float(np.corrcoef(mine.numpy(), reference.numpy())[0, 1])
    assert corr >= 0.999, corr
    np.testing.assert_allclose(mine.numpy(), reference.numpy(), atol=1e-4, rtol=0)
    return corr


OPEN_CLIP = import_with_stub("open_clip")
needs_open_clip = pytest.mark.skipif(OPEN_CLIP is None, reason="open_clip is not installed")


@pytest.fixture(scope="module")
def openclip_tiny(tmp_path_factory):
    """A 4-layer OpenCLIP ViT on an 8x8 grid (64 px, 8-px patches) with peaked attention."""
    import open_clip

    root = tmp_path_factory.mktemp("legrad_openclip")
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 64, "layers": 4, "width": 32, "head_width": 8, "patch_size": 8},
              "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}
    (root / "vp-legrad-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(root)
    torch.manual_seed(0)
    module = open_clip.create_model("vp-legrad-clip", pretrained=None).eval()
    with torch.no_grad():
        for param in module.visual.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.3)
    return module


def reference_openclip(module, pixels: torch.Tensor, prompt: str, start: int) -> torch.Tensor:
    """compute_legrad_clip: layer l's block output, mean over tokens, ln_post, @ proj, normalised; cosine with
    the normalised text embedding; gradient w.r.t. that block's attention."""
    import open_clip

    model = copy.deepcopy(module).double()
    visual = model.visual
    blocks = list(visual.transformer.resblocks)
    maps: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    for block in blocks:
        block.attn.forward = (lambda q, k, v, need_weights=False, attn_mask=None, m=block.attn:
                              (written_out_attention(m, q, k, v, maps), None))
        block.register_forward_hook(lambda _m, _i, out: outs.append(out))
    with torch.no_grad():
        text = F.normalize(model.encode_text(open_clip.get_tokenizer("vp-legrad-clip")([prompt])), dim=-1)
    visual(pixels.double())
    grads = []
    for layer in range(start, len(blocks)):
        feature = F.normalize(visual.ln_post(outs[layer].mean(dim=1)) @ visual.proj, dim=-1)
        (grad,) = torch.autograd.grad((text @ feature.T).sum(), maps[layer], retain_graph=True)
        grads.append(grad)
    return min_max(legrad_of_layers(grads, pooled=False, n_prefix=1))


@needs_open_clip
@pytest.mark.parametrize("start", [-2, 0])
@pytest.mark.parametrize("prompt", ["a photo of a cat", "a red car"])
def test_legrad_on_openclip_is_the_authors(openclip_tiny, prompt, start):
    from vitprobe.models.openclip import wrap

    model = wrap(openclip_tiny, "vp-legrad-clip", "vp-legrad-clip")
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(len(prompt)))
    res = vp.attribute(model, pixels, method="legrad", target=prompt, start_layer=start)
    assert res.maps.shape == (1, 8, 8) and res.detail["layers"].shape == (1, 4 - start % 4, 8, 8)
    assert_matches(res.maps, reference_openclip(openclip_tiny, pixels, prompt, start % 4))
    with torch.enable_grad():  # the readout's CLS feature (vitprobe's rule before) gives another map
        run = gradient_pass(model, pixels, prompt)
        cls_maps = []
        for layer in range(start % 4, 4):
            (grad,) = torch.autograd.grad(run.score(run.tokens[layer]).sum(), run.attentions[layer], retain_graph=True)
            cls_maps.append(grad)
    assert (min_max(legrad_of_layers(cls_maps, False, 1)) - res.maps.flatten(1)).abs().max() > 0.05


TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=16,
            max_position_embeddings=8, pad_token_id=0, eos_token_id=9, bos_token_id=1)
VISION = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=64,
              patch_size=8, initializer_range=0.3)
DUALS = {
    "clip": lambda: transformers.CLIPModel(transformers.CLIPConfig(vision_config=VISION, text_config=TEXT,
                                                                   projection_dim=16)),
    "metaclip_2": lambda: transformers.MetaClip2Model(transformers.MetaClip2Config(
        vision_config=VISION, text_config=TEXT, projection_dim=16)),
    "siglip": lambda: transformers.SiglipModel(transformers.SiglipConfig(vision_config=VISION, text_config=TEXT)),
}


@pytest.fixture(scope="module")
def dual_dirs(tmp_path_factory):
    from tests.test_families import save_tokenizer

    root = tmp_path_factory.mktemp("legrad_duals")
    for i, (name, build) in enumerate(DUALS.items()):
        torch.manual_seed(20 + i)
        module = build()
        module.save_pretrained(root / name)
        save_tokenizer(root / name)
    return root


def text_embedding(module, directory, prompt: str) -> torch.Tensor:
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    padding = ({"padding": "max_length", "max_length": TEXT["max_position_embeddings"]}
               if module.config.model_type == "siglip" else {"padding": True})
    with torch.no_grad():
        out = module.get_text_features(**tokenizer([prompt], return_tensors="pt", **padding))
    return F.normalize(getattr(out, "pooler_output", out), dim=-1)


def eager_states(module, pixels: torch.Tensor):
    module.set_attn_implementation("eager")
    out = module.vision_model(pixel_values=pixels, output_attentions=True, output_hidden_states=True,
                              interpolate_pos_encoding=True)
    return list(out.attentions), list(out.hidden_states[1:])


def reference_hf_clip(module, directory, pixels: torch.Tensor, prompt: str, start: int) -> torch.Tensor:
    """compute_legrad_clip on a transformers CLIP: post_layernorm(mean over layer l's tokens) @ projection."""
    model = copy.deepcopy(module).double()
    text = text_embedding(model, directory, prompt)
    attentions, states = eager_states(model, pixels.double())
    grads = []
    for layer in range(start, len(states)):
        feature = model.visual_projection(model.vision_model.post_layernorm(states[layer].mean(dim=1)))
        score = (text @ F.normalize(feature, dim=-1).T).sum()
        grads.append(torch.autograd.grad(score, attentions[layer], retain_graph=True)[0])
    return min_max(legrad_of_layers(grads, pooled=False, n_prefix=1))


def reference_hf_siglip(module, directory, pixels: torch.Tensor, prompt: str, start: int,
                        threshold: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """compute_legrad_siglip: the pooling head on layer l's tokens (no final norm), its attention's first
    latent row; the neutral prompt's map zeroes the patches above ``threshold`` (None: no correction).
    Returns the map and the neutral prompt's min-max map."""
    model = copy.deepcopy(module).double()
    head = model.vision_model.head
    text = text_embedding(model, directory, prompt)
    empty = text_embedding(model, directory, "a photo of a")
    _, states = eager_states(model, pixels.double())
    grads, empty_grads = [], []
    for layer in range(start, len(states)):
        store: list[torch.Tensor] = []
        tokens = states[layer]
        pooled = written_out_attention(head.attention, head.probe.repeat(len(tokens), 1, 1), tokens, tokens, store)
        pooled = F.normalize((pooled + head.mlp(head.layernorm(pooled)))[:, 0], dim=-1)
        grads.append(torch.autograd.grad((text @ pooled.T).sum(), store[0], retain_graph=True)[0])
        empty_grads.append(torch.autograd.grad((pooled @ empty.T).sum(), store[0], retain_graph=True)[0])
    total = legrad_of_layers(grads, pooled=True, n_prefix=0)
    if threshold is None:
        return min_max(total), None
    heat = min_max(legrad_of_layers(empty_grads, pooled=True, n_prefix=0))
    return min_max(total.masked_fill(heat > threshold, 0.0)), heat


@pytest.mark.parametrize("start", [-2, 0])
@pytest.mark.parametrize("name", ["clip", "metaclip_2"])
def test_legrad_on_hugging_face_clip_is_the_authors(dual_dirs, name, start):
    model = vp.load(str(dual_dirs / name))
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(start + 7))
    res = vp.attribute(model, pixels, method="legrad", target="a photo of a cat", start_layer=start)
    assert res.maps.shape == (1, 8, 8)
    reference = reference_hf_clip(model.module, dual_dirs / name, pixels, "a photo of a cat", start % 4)
    assert_matches(res.maps, reference)
    assert "neutral" not in res.detail  # the correction is SigLIP's


@pytest.mark.parametrize("start", [-2, 0])
def test_legrad_on_siglip_is_the_authors_with_their_correction(dual_dirs, start):
    model = vp.load(str(dual_dirs / "siglip"))
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(start + 11))
    res = vp.attribute(model, pixels, method="legrad", target="the dog", start_layer=start)
    reference, heat = reference_hf_siglip(model.module, dual_dirs / "siglip", pixels, "the dog", start % 4, 0.8)
    assert_matches(res.maps, reference)
    assert_matches(res.detail["neutral"], heat)
    zeroed = heat > 0.8
    assert 0 < int(zeroed.sum()) < zeroed.numel() and (res.maps.flatten(1)[zeroed] == 0).all()
    assert "pooling head's attention" in res.title
    plain = vp.attribute(model, pixels, method="legrad", target="the dog", start_layer=start, correction=1.0)
    assert_matches(plain.maps, reference_hf_siglip(model.module, dual_dirs / "siglip", pixels, "the dog",
                                                   start % 4, None)[0])
    assert "neutral" not in plain.detail and (plain.maps.flatten(1)[zeroed] > 0).any()
    looser = vp.attribute(model, pixels, method="legrad", target="the dog", start_layer=start, correction=0.5)
    assert_matches(looser.maps, reference_hf_siglip(model.module, dual_dirs / "siglip", pixels, "the dog",
                                                    start % 4, 0.5)[0])


def test_legrad_self_on_siglip_takes_the_authors_feature_for_the_reference_too(dual_dirs):
    """Target self on the authors' SigLIP path: the feature of layer l projected on the unit difference of the
    last layer's feature from a blank image's, both by the same feature (pooling head, no final norm)."""
    model = vp.load(str(dual_dirs / "siglip"))
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    res = vp.attribute(model, pixels, method="legrad", target="self", start_layer=0, correction=1.0)
    module = copy.deepcopy(model.module).double()
    head = module.vision_model.head

    def pooled(tokens, store):
        out = written_out_attention(head.attention, head.probe.repeat(len(tokens), 1, 1), tokens, tokens, store)
        return (out + head.mlp(head.layernorm(out)))[:, 0]

    with torch.no_grad():
        blank = pooled(eager_states(module, torch.zeros_like(pixels).double())[1][-1], [])
    _, states = eager_states(module, pixels.double())
    reference = F.normalize(pooled(states[-1], []).detach() - blank, dim=-1)
    grads = []
    for tokens in states:
        store: list[torch.Tensor] = []
        grads.append(torch.autograd.grad((pooled(tokens, store) * reference).sum(), store[0], retain_graph=True)[0])
    assert_matches(res.maps, min_max(legrad_of_layers(grads, pooled=True, n_prefix=0)))
