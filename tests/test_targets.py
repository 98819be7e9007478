"""Targets of gradient methods: each adapter's readout equals its model's own output, and embedding
targets (``self``, ``image:PATH``) explain backbones without a head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

import vitprobe as vp
from tests import timm_models as tm
from vitprobe.cli import app
from vitprobe.models import timm as timm_adapter
from vitprobe.targets import gradient_pass

needs_timm = pytest.mark.skipif(tm.TORCHVISION is None, reason=tm.SKIP_REASON)


def noise_image(seed: int, hw: tuple[int, int] = (40, 40)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*hw, 3), dtype=np.uint8))


@pytest.mark.parametrize("kind", ["vit", "deit", "dinov2", "dinov2_with_registers"])
def test_hf_readout_of_the_last_tokens_is_the_models_own_output(tiny_dirs, kind):
    model = vp.load(str(tiny_dirs[kind]))
    pixels, _, _ = model.prepare(noise_image(0), (32, 32))
    with torch.no_grad():
        logits, _, tokens = model.attention_forward(pixels)
        embedding, readout_logits = model.readout(tokens[-1])
        out = model.module(pixel_values=pixels, interpolate_pos_encoding=True)
    if kind in ("vit", "deit"):
        torch.testing.assert_close(readout_logits, out.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=0)
    else:
        assert readout_logits is None and logits is None
        torch.testing.assert_close(embedding, out.pooler_output, atol=1e-5, rtol=0)


@needs_timm
@pytest.mark.parametrize("family", sorted(tm.FAMILIES))
def test_timm_readout_of_the_last_tokens_is_the_models_own_output(family):
    module = tm.tiny(tm.FAMILIES[family], seed=1)
    model = timm_adapter.wrap(module, family)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, _, tokens = model.attention_forward(pixels)
        embedding, logits = model.readout(tokens[-1])
        torch.testing.assert_close(logits, module(pixels), atol=1e-5, rtol=1e-5)  # fused vs eager
        torch.testing.assert_close(embedding, module.forward_head(module.forward_features(pixels), pre_logits=True),
                                   atol=1e-5, rtol=1e-5)


def test_embedding_scores_are_projections_on_the_reference_direction(tiny_dirs, tmp_path):
    model = vp.load(str(tiny_dirs["dinov2"]))
    pixels, _, _ = model.prepare(noise_image(1), (28, 28))
    with torch.no_grad():
        own = model.module(pixel_values=pixels).pooler_output
        blank = model.module(pixel_values=torch.zeros_like(pixels)).pooler_output
    run = gradient_pass(model, pixels, "self")
    direction = F.normalize(own - blank, dim=-1)
    torch.testing.assert_close(run.score(run.tokens[-1]).detach(), (own * direction).sum(-1), atol=1e-5, rtol=0)
    noise_image(2).save(tmp_path / "other.png")
    other_pixels, _, _ = model.prepare(tmp_path / "other.png")
    with torch.no_grad():
        other = F.normalize(model.module(pixel_values=other_pixels).pooler_output, dim=-1)
    run = gradient_pass(model, pixels, f"image:{tmp_path / 'other.png'}")
    torch.testing.assert_close(run.score(run.tokens[-1]).detach(), (own * other).sum(-1), atol=1e-5, rtol=0)
    assert run.targets is None and run.words == f"the embedding of {tmp_path / 'other.png'}"


@pytest.mark.parametrize("method", ["chefer", "gradrollout", "legrad"])
def test_backbones_without_a_head_explain_an_embedding(tiny_dirs, tmp_path, method):
    model = vp.load(str(tiny_dirs["dinov2_with_registers"]))
    image = noise_image(3)
    noise_image(4).save(tmp_path / "other.png")
    default = vp.attribute(model, image, method=method, size=(28, 28))
    explicit = vp.attribute(model, image, method=method, size=(28, 28), target="self")
    other = vp.attribute(model, image, method=method, size=(28, 28), target=f"image:{tmp_path / 'other.png'}")
    torch.testing.assert_close(default.maps, explicit.maps)
    assert default.targets is None and "its own embedding" in default.title
    assert torch.isfinite(other.maps).all() and (other.maps - default.maps).abs().max() > 1e-3 * default.maps.max()


def test_a_classifier_explains_its_embedding_when_asked(tiny_dirs):
    model = vp.load(str(tiny_dirs["vit"]))
    image = noise_image(5)
    by_class = vp.attribute(model, image, method="chefer", size=(32, 32))
    by_embedding = vp.attribute(model, image, method="chefer", size=(32, 32), target="self")
    assert by_class.targets == [int(by_class.logits[0].argmax())] and by_embedding.targets is None
    assert (by_class.maps - by_embedding.maps).abs().max() > 1e-3 * by_class.maps.abs().max()


def test_a_missing_reference_image_is_one_line_naming_it(tiny_dirs, tmp_path):
    noise_image(6).save(tmp_path / "photo.png")
    result = CliRunner().invoke(app, ["explain", str(tmp_path / "photo.png"), "--model", str(tiny_dirs["dinov2"]),
                                      "--method", "legrad", "--target", f"image:{tmp_path / 'nope.png'}",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "nope.png" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
