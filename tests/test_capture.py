"""Capture under fused SDPA equals eager attention; layouts, batching, errors and hook hygiene."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import transformers

from tests.conftest import PATCH, PREFIX_COUNT, make_tiny
from vitprobe import CaptureError, UnsupportedModelError
from vitprobe.analysis.distance import MeanDistance
from vitprobe.analysis.entropy import RowEntropy
from vitprobe.capture import AttentionRecorder
from vitprobe.models.hf import load_hf


def eager_attentions(directory, pixels, kind):
    """Reference: the same weights run with eager attention and output_attentions=True."""
    model = load_hf(str(directory), attn_implementation="eager").module
    kwargs = {"interpolate_pos_encoding": True} if kind in ("vit", "deit") else {}
    with torch.no_grad():
        out = model(pixel_values=pixels, output_attentions=True, **kwargs)
    return out.attentions


@pytest.mark.parametrize("hw", [(32, 32), (32, 64), (64, 32)])
def test_sdpa_capture_equals_eager(tiny_dirs, tiny_kind, hw):
    model = load_hf(str(tiny_dirs[tiny_kind]))
    assert model.module.config._attn_implementation == "sdpa"
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, *hw)
    cap = model.capture_pixels(pixels, full_layers=list(range(model.num_layers)))
    reference = eager_attentions(tiny_dirs[tiny_kind], pixels, tiny_kind)
    assert len(reference) == model.num_layers == len(cap.full)
    for layer, ref in enumerate(reference):
        assert ref.shape == cap.full[layer].shape
        assert torch.allclose(cap.full[layer], ref, atol=1e-5, rtol=0)
    grid = (hw[0] // PATCH, hw[1] // PATCH)
    assert cap.layout.grid_hw == grid
    assert cap.layout.n_prefix == PREFIX_COUNT[tiny_kind]
    assert cap.cls.shape == (model.num_layers, 3, 4, cap.layout.n_tokens)


def test_rows_sum_to_one_and_cls_fast_path(tiny_dirs, tiny_kind):
    model = load_hf(str(tiny_dirs[tiny_kind]))
    pixels = torch.randn(2, 3, 32, 48)
    full = model.capture_pixels(pixels, full_layers=[0, 1, 2], fuse=("mean", "max"))
    fast = model.capture_pixels(pixels, full_layers=(), fuse=())  # CLS rows only: q_cls·Kᵀ
    for layer in range(3):
        attn = full.full[layer]
        assert torch.allclose(attn.sum(-1), torch.ones(()), atol=1e-6)
        assert torch.allclose(fast.cls[layer], attn[:, :, 0], atol=1e-6)
        assert torch.allclose(full.fused["mean"][layer], attn.mean(1), atol=1e-7)
        assert torch.allclose(full.fused["max"][layer], attn.amax(1), atol=1e-7)
    assert fast.fused == {} and fast.full == {}


def test_grid_is_height_first(tiny_dirs):
    """Token n_prefix + r·W + c is the patch at row r, column c of a 2×4 grid (32×64 input)."""
    model = load_hf(str(tiny_dirs["dinov2"]))
    layout = model.layout((16, 32))
    assert layout.grid_hw == (2, 4)
    proj = model.module.embeddings.patch_embeddings
    pixels = torch.randn(1, 3, 16, 32)
    with torch.no_grad():
        tokens = proj(pixels)[0]
        for r in range(2):
            for c in range(4):
                crop = pixels[:, :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH]
                expect = proj.projection(crop).flatten()
                assert torch.allclose(tokens[layout.patch_index(r, c) - layout.n_prefix], expect, atol=1e-5)


def test_batching_does_not_change_results(tiny_dirs):
    model = load_hf(str(tiny_dirs["vit"]))
    pixels = torch.randn(5, 3, 32, 32)
    one = model.capture_pixels(pixels, batch_size=1)
    many = model.capture_pixels(pixels, batch_size=3)
    assert torch.allclose(one.cls, many.cls, atol=1e-6)
    assert torch.allclose(one.fused["mean"], many.fused["mean"], atol=1e-6)
    assert one.logits.shape == (5, 5)


def test_layer_subset_and_negative_indices(tiny_dirs):
    model = load_hf(str(tiny_dirs["vit"]))
    cap = model.capture_pixels(torch.randn(1, 3, 32, 32), layers=[-1, 0], full_layers=[-1])
    assert cap.layers == [0, 2] and cap.cls.shape[0] == 2 and list(cap.full) == [2]
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        model.capture_pixels(torch.randn(1, 3, 32, 32), layers=[7])


def test_layer_without_map_raises(tiny_dirs):
    model = load_hf(str(tiny_dirs["vit"]))
    skipped = model.module.vit.layers[1]
    skipped.forward = lambda hidden_states, *args, **kwargs: hidden_states
    with pytest.raises(CaptureError, match="layer 1: 0 maps"):
        model.capture_pixels(torch.randn(1, 3, 32, 32))


def test_layer_with_two_maps_raises(tiny_dirs):
    model = load_hf(str(tiny_dirs["vit"]))
    layers = model.module.vit.layers
    layers.append(layers[1])  # layer 1 now runs twice per forward
    with pytest.raises(CaptureError, match="layer 1: 2 maps"):
        model.capture_pixels(torch.randn(1, 3, 32, 32))


def test_hooks_removed_when_forward_raises(tiny_dirs):
    model = load_hf(str(tiny_dirs["dinov2"]))
    with pytest.raises(ValueError, match="channel dimension"):
        model.capture_pixels(torch.randn(1, 4, 32, 32))
    for site in model.sites:
        assert not site.query._forward_hooks and not site.key._forward_hooks
    model.capture_pixels(torch.randn(1, 3, 32, 32))
    assert all(not s.query._forward_hooks for s in model.sites)


def test_unsupported_model_is_rejected_in_one_line(tmp_path):
    config = transformers.SwinConfig(embed_dim=16, depths=[1], num_heads=[2], image_size=32, patch_size=4)
    transformers.SwinModel(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError) as err:
        load_hf(str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "swin" in message and "dinov2_with_registers" in message


def test_model_without_cls_map_explains_why(tiny_dirs):
    model = load_hf(str(tiny_dirs["vit"]))
    layout = model.layout((32, 32))
    no_cls = type(layout)((), layout.grid_hw, layout.patch_size)
    with pytest.raises(ValueError, match="no CLS token"):
        _ = no_cls.cls_index


def test_seeded_weights_differ_between_models(tmp_path):
    a = load_hf(str(make_tiny("vit", tmp_path / "a", seed=1)))
    b = load_hf(str(make_tiny("vit", tmp_path / "b", seed=2)))
    pixels = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(a.capture_pixels(pixels).cls, b.capture_pixels(pixels).cls)


def test_token_norms_are_the_layer_outputs(tiny_dirs, tiny_kind):
    model = load_hf(str(tiny_dirs[tiny_kind]), attn_implementation="eager")
    pixels = torch.randn(2, 3, 32, 32)
    cap = model.capture_pixels(pixels, token_norms=True)
    kwargs = {"interpolate_pos_encoding": True} if tiny_kind in ("vit", "deit") else {}
    with torch.no_grad():
        hidden = model.module(pixel_values=pixels, output_hidden_states=True, **kwargs).hidden_states
    assert cap.token_norms.shape == (model.num_layers, 2, cap.layout.n_tokens)
    for layer in range(model.num_layers):  # hidden_states[0] is the embedding output
        assert torch.allclose(cap.token_norms[layer], hidden[layer + 1].norm(dim=-1), atol=1e-4)


def test_embedding_tables_are_exposed(tiny_dirs, tiny_kind):
    model = load_hf(str(tiny_dirs[tiny_kind]))
    assert model.patch_weight.shape == (32, 3, PATCH, PATCH)
    assert model.position_grid.shape == (4, 4, 32)


def record(model, pixels, *, answer_sdpa=True, **kwargs):
    """One forward under an AttentionRecorder of every layer: the recorder and the model's first output."""
    layout = model.layout(tuple(pixels.shape[-2:]))
    recorder = AttentionRecorder(model.sites, lambda n: layout, range(model.num_layers), answer_sdpa=answer_sdpa,
                                 **kwargs)
    with recorder, torch.no_grad():
        out = model.module(pixel_values=pixels)[0]
    recorder.finish()
    return recorder, out


def test_layers_needing_every_row_answer_the_models_sdpa_call(tiny_dirs, tiny_kind):
    """Attention is computed once: the recorder's blocks give the layer output, equal to the kernel's."""
    model = load_hf(str(tiny_dirs[tiny_kind]))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    kwargs = dict(fuse=("mean",), full_layers=[1], reducers={"entropy": RowEntropy(), "distance": MeanDistance()})
    answered, out = record(model, pixels, **kwargs)
    declined, kernel_out = record(model, pixels, answer_sdpa=False, **kwargs)
    with torch.no_grad():
        plain = model.module(pixel_values=pixels)[0]
    assert answered.sdpa_answered == model.num_layers and declined.sdpa_answered == 0
    torch.testing.assert_close(kernel_out, plain, atol=0, rtol=0)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    # the same q, k in two memory layouts (the SDPA call's, the projections'): BLAS may round the scores
    # differently, by up to ~1e-6 of the probabilities here (scores up to ~20)
    torch.testing.assert_close(answered.full[1], declined.full[1], atol=1e-5, rtol=0)
    for layer in range(model.num_layers):
        torch.testing.assert_close(answered.fused["mean"][layer], declined.fused["mean"][layer], atol=1e-5, rtol=0)
        torch.testing.assert_close(answered.cls_rows[layer], declined.cls_rows[layer], atol=1e-5, rtol=0)
        for name in ("entropy", "distance"):
            torch.testing.assert_close(answered.reduced[name][layer], declined.reduced[name][layer],
                                       atol=1e-5, rtol=1e-6)


def test_cls_rows_only_keep_the_models_kernel(tiny_dirs):
    model = load_hf(str(tiny_dirs["dinov2"]))
    recorder, out = record(model, torch.randn(1, 3, 32, 32))
    assert recorder.sdpa_answered == 0 and len(recorder.cls_rows) == model.num_layers


def test_eager_models_and_gradients_are_reduced_from_the_hooks(tiny_dirs):
    """No SDPA call (eager attention) or gradients wanted: the hooked q, k give the same maps."""
    eager = load_hf(str(tiny_dirs["vit"]), attn_implementation="eager")
    pixels = torch.randn(2, 3, 32, 32)
    recorder, _ = record(eager, pixels, fuse=("max",))
    reference = eager_attentions(tiny_dirs["vit"], pixels, "vit")
    assert recorder.sdpa_answered == 0
    for layer, ref in enumerate(reference):
        torch.testing.assert_close(recorder.fused["max"][layer], ref.amax(1), atol=1e-6, rtol=0)
    fused = load_hf(str(tiny_dirs["vit"]))
    layout = fused.layout((32, 32))
    grad_recorder = AttentionRecorder(fused.sites, lambda n: layout, [0, 1], fuse=("max",))
    wanted = pixels.clone().requires_grad_()
    with grad_recorder:
        fused.module(pixel_values=wanted)[0].sum().backward()
    grad_recorder.finish()
    assert grad_recorder.sdpa_answered == 0 and wanted.grad is not None
    torch.testing.assert_close(grad_recorder.fused["max"][1], reference[1].amax(1), atol=1e-6, rtol=0)


def test_recorder_is_freed_without_the_cycle_collector(tiny_dirs):
    """After the forward nothing refers back to the recorder, so its (L, B, T, T) stacks go at once."""
    model = load_hf(str(tiny_dirs["dinov2"]))
    gc.disable()
    try:
        recorder, _ = record(model, torch.randn(1, 3, 32, 32), fuse=("mean",))
        assert recorder.sdpa_answered == model.num_layers
        ref = weakref.ref(recorder)
        del recorder
        assert ref() is None
    finally:
        gc.enable()
