"""from_attentions: arrays from any framework give the same Capture, analyses and renders as a model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vitprobe
from vitprobe.analysis.distance import MeanDistance
from vitprobe.analysis.entropy import RowEntropy
from vitprobe.analysis.entropy import entropy as row_entropy
from vitprobe.models.hf import load_hf


def softmax_layers(n_layers: int, batch: int, heads: int, t: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = 3 * rng.standard_normal((n_layers, batch, heads, t, t))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return list((e / e.sum(-1, keepdims=True)).astype(np.float32))


@pytest.fixture
def model_capture(tiny_dirs):
    """A DeiT (CLS + distillation) capture with every layer in full and the streamed reducers."""
    model = load_hf(str(tiny_dirs["deit"]))
    pixels = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    reducers = {"entropy": RowEntropy(), "distance": MeanDistance()}
    return model.capture_pixels(pixels, full_layers=list(range(3)), fuse=("mean", "max", "min"), reducers=reducers)


def test_arrays_give_the_models_capture(model_capture):
    cap = model_capture
    arrays = [cap.full[layer].numpy() for layer in cap.layers]
    byo = vitprobe.from_attentions(
        arrays, prefix_tokens=("cls", "distillation"), grid_hw=(4, 6), patch_size=8,
        reducers={"entropy": RowEntropy(), "distance": MeanDistance()},
    )
    assert byo.layout == cap.layout and byo.layers == cap.layers and byo.batch_size == 2
    torch.testing.assert_close(byo.cls, cap.cls, atol=0, rtol=0)
    for how in ("mean", "max", "min"):
        torch.testing.assert_close(byo.fused[how], cap.fused[how], atol=1e-7, rtol=0)
    for method, params in (("layers", {}), ("cls", {"layer": 1}), ("rollout", {"discard_ratio": 0.5}),
                           ("query", {"patch": (2, 3)})):
        ours, theirs = (vitprobe.attribute(c, method=method, **params) for c in (byo, cap))
        torch.testing.assert_close(ours.maps, theirs.maps, atol=1e-7, rtol=0)
        for key in ours.detail:
            torch.testing.assert_close(ours.detail[key], theirs.detail[key], atol=0, rtol=0)
    torch.testing.assert_close(byo.reduced["distance"], cap.reduced["distance"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(byo.reduced["entropy"], cap.reduced["entropy"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(byo.reduced["entropy"], row_entropy(torch.stack(list(cap.full.values()))), atol=1e-4,
                               rtol=1e-5)


def test_keras_score_dict_is_ordered_by_block_number():
    arrays = softmax_layers(11, 1, 2, 1 + 9)
    scores = {f"transformer_block_{i}_att": arrays[i] for i in (10, 2, 0, 1, 9, 3, 4, 5, 6, 7, 8)}
    cap = vitprobe.from_attentions(scores, prefix_tokens=1, patch_size=16)
    assert cap.layout.grid_hw == (3, 3) and cap.layers == list(range(11))
    for layer in range(11):
        np.testing.assert_array_equal(cap.full[layer].numpy(), arrays[layer])


def test_unnumbered_names_keep_their_order_and_layers_without_batch():
    arrays = [a[0] for a in softmax_layers(3, 1, 2, 1 + 4)]  # (heads, T, T)
    cap = vitprobe.from_attentions({"first": arrays[2], "second": arrays[0], "third": arrays[1]})
    assert cap.cls.shape == (3, 1, 2, 5)
    np.testing.assert_array_equal(cap.full[0][0].numpy(), arrays[2])


def test_torch_and_half_precision_inputs():
    arrays = softmax_layers(2, 1, 2, 1 + 16)
    as_torch = vitprobe.from_attentions([torch.from_numpy(a).requires_grad_(True) for a in arrays])
    as_half = vitprobe.from_attentions([a.astype(np.float16) for a in arrays])
    torch.testing.assert_close(as_torch.cls, as_half.cls, atol=1e-3, rtol=0)
    assert as_half.fused["mean"].dtype == torch.float32


def test_prefix_tokens_by_count():
    arrays = softmax_layers(2, 1, 2, 3 + 4)
    three = vitprobe.from_attentions(arrays, prefix_tokens=3)
    assert three.layout.prefix_names == ("cls", "prefix1", "prefix2") and three.layout.grid_hw == (2, 2)
    none = vitprobe.from_attentions(softmax_layers(2, 1, 2, 9), prefix_tokens=0)
    assert none.cls is None and none.layout.grid_hw == (3, 3)
    with pytest.raises(ValueError, match="no CLS token"):
        vitprobe.attribute(none, method="cls")
    assert vitprobe.attribute(none, method="query", patch=(1, 1)).detail["heads"].shape == (1, 2, 3, 3)


@pytest.mark.parametrize(
    ("arrays", "kwargs", "words"),
    [
        (softmax_layers(1, 1, 2, 1 + 6), {}, "not a square grid"),
        (softmax_layers(1, 1, 2, 1 + 6), {"grid_hw": (2, 2)}, "does not hold"),
        ([np.zeros((1, 2, 5, 4), np.float32)], {}, r"\(B, heads, T, T\)"),
        ([np.log(a) for a in softmax_layers(1, 1, 2, 5)], {}, "must be probabilities"),
        (softmax_layers(1, 1, 2, 5) + softmax_layers(1, 1, 2, 10), {}, "differ in shape"),
        ([], {}, "at least one layer"),
        (softmax_layers(1, 2, 2, 5), {"images": [Image.new("RGB", (8, 8))]}, "1 images for attention of batch size 2"),
    ],
)
def test_bad_inputs_are_explained(arrays, kwargs, words):
    with pytest.raises(ValueError, match=words):
        vitprobe.from_attentions(arrays, **kwargs)


def test_renderers_work_on_a_byo_capture():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    cap = vitprobe.from_attentions(softmax_layers(3, 1, 4, 1 + 24), grid_hw=(4, 6), images=[image])
    heat = vitprobe.attribute(cap, method="rollout").maps[0]
    over = vitprobe.render.overlay(cap.images[0], heat, vitprobe.Style(alpha=1.0))
    assert over.size == image.size
    hottest = np.unravel_index(int(heat.argmax()), (4, 6))
    colour = np.asarray(over)[hottest[0] * 16 + 8, hottest[1] * 16 + 8]
    coldest = np.unravel_index(int(heat.argmin()), (4, 6))
    assert colour.sum() > np.asarray(over)[coldest[0] * 16 + 8, coldest[1] * 16 + 8].sum()
    fig = vitprobe.render.attribution_figure(vitprobe.attribute(cap, method="cls"))
    assert len(fig.axes) >= 5
