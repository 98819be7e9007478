"""OpenCLIP towers (an optional extra): captured attention equals the blocks' own per-head weights, the
loader takes local safetensors only, and text prompts are scored as the model scores them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vitprobe as vp
from tests.torchvision_stub import import_with_stub

OPEN_CLIP = import_with_stub("open_clip")
pytestmark = pytest.mark.skipif(OPEN_CLIP is None, reason="open_clip is not installed: pip install -e '.[openclip]'")

CONFIGS = {  # architecture name: input (H, W)
    "vp-tiny-clip": (32, 32),
    "vp-tiny-clip-wide": (32, 48),
}


@pytest.fixture(scope="module")
def architectures(tmp_path_factory):
    import open_clip

    root = tmp_path_factory.mktemp("openclip")
    for name, hw in CONFIGS.items():
        config = {"embed_dim": 16,
                  "vision_cfg": {"image_size": list(hw), "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
                  "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}
        (root / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(root)
    return root


def tiny(name: str, seed: int = 0):
    """The architecture with peaked attention: matrix weights redrawn from N(0, 0.3²)."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    with torch.no_grad():
        for param in model.visual.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.3)
    return model.eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_capture_equals_the_blocks_own_attention(architectures, name):
    from vitprobe.models.openclip import wrap

    model = wrap(tiny(name), name, name)
    hw = CONFIGS[name]
    pixels = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    cap = model.capture_pixels(pixels, full_layers=[0, 1], fuse=("mean",))
    fast = model.capture_pixels(pixels, full_layers=(), fuse=())
    with torch.no_grad():
        _, own, tokens = model.attention_forward(pixels)
    assert cap.layout.grid_hw == (hw[0] // 8, hw[1] // 8) and cap.layout.prefix_names == ("cls",)
    assert len(own) == 2 and len(tokens) == 2
    for layer, ref in enumerate(own):
        torch.testing.assert_close(cap.full[layer], ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(fast.cls[layer], ref[:, :, 0], atol=1e-5, rtol=0)
    assert "forward" not in vars(model.module.visual.transformer.resblocks[0].attn)  # its own forward again


def test_the_loader_takes_local_safetensors_and_refuses_pickles(architectures, tmp_path):
    from safetensors.torch import save_file

    source = tiny("vp-tiny-clip", seed=3)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    model = vp.load(f"openclip:vp-tiny-clip:{tmp_path / 'w.safetensors'}")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.module.encode_image(pixels), source.encode_image(pixels))
    torch.save(source.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match="must be a .safetensors file"):
        vp.load(f"openclip:vp-tiny-clip:{tmp_path / 'w.pt'}")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        vp.load("openclip:no-such-net:random")


def test_a_prompt_is_scored_as_the_model_scores_it(architectures):
    import open_clip

    from vitprobe.targets import gradient_pass

    model = vp.load("openclip:vp-tiny-clip:random")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    run = gradient_pass(model, pixels, "a photo of a cat")
    tokens = open_clip.get_tokenizer("vp-tiny-clip")(["a photo of a cat"])
    with torch.no_grad():
        image, text, scale = model.module(pixels, tokens)[:3]
    own = (scale * image @ text.T)[:, 0]
    torch.testing.assert_close(run.score(run.tokens[-1]).detach(), own, atol=1e-5, rtol=1e-5)
    photo = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8"))
    cat = vp.attribute(model, photo, method="chefer", target="a photo of a cat")
    car = vp.attribute(model, photo, method="chefer", target="a red car")
    assert (cat.maps - car.maps).abs().max() > 1e-5


def test_another_input_grid_is_one_line(architectures):
    model = vp.load("openclip:vp-tiny-clip:random")
    with pytest.raises(ValueError, match="runs at its own 4x4 patch grid") as err:
        model.capture_pixels(torch.randn(1, 3, 32, 48))
    assert "\n" not in str(err.value)
