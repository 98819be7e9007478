"""Seams met when porting scripts to the one verb: removed names, detail keys and shapes, one axis
convention, the capture choices, one default method, the exported analysis names, panels built when drawn."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from typer.testing import CliRunner

import vitprobe as vp
from vitprobe.cli import app
from vitprobe.methods import get_method, method_names
from vitprobe.methods.attribute import DEFAULT_METHOD

PENDING_DETAILS: set[str] = set()
"""Methods whose ``details`` declaration is still to be written (their files are being changed elsewhere)."""


def photo(seed: int = 0, hw: tuple[int, int] = (40, 56)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((*hw, 3)) * 255).astype("uint8"))


@pytest.mark.parametrize("name", sorted(vp.REMOVED))
def test_removed_names_fail_in_one_line_naming_their_replacement(name):
    with pytest.raises(AttributeError) as caught:
        getattr(vp, name)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"vp.{name} was removed: use ")
    assert "vp.attribute(" in message or "Attribution" in message
    assert not hasattr(vp, name) and name not in vp.__all__
    with pytest.raises(AttributeError, match=r"^module 'vitprobe' has no attribute 'no_such_name'$"):
        vp.no_such_name  # noqa: B018


def test_removed_names_point_at_methods_that_exist():
    for replacement in vp.REMOVED.values():
        for method in re.findall(r'method="(\w+)"', replacement):
            get_method(method)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory) -> Path:
    config = transformers.SiglipVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=64, image_size=32, patch_size=8)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("siglip")
    transformers.SiglipVisionModel(config).save_pretrained(directory)
    return directory


SYMBOLS = ("B", "L", "heads", "H", "W", "H_in", "W_in")


def declared_shape(doc: str) -> list[str]:
    match = re.match(r"\(([^)]*)\)", doc)
    assert match, f"a detail's description starts with its shape: {doc!r}"
    return [part.strip() for part in match.group(1).split(",") if part.strip()]


@pytest.mark.parametrize("name", method_names())
def test_every_method_declares_its_detail_keys_and_shapes(name, tiny_dirs, siglip_dir, request):
    """What ``compute`` returns in ``detail`` is what the method declares, with the declared shape (batch
    first: B, then L, heads, H, W as the model and image give them)."""
    if name in PENDING_DETAILS:
        request.applymarker(pytest.mark.xfail(strict=True, reason="details declaration to be added"))
    impl = get_method(name)
    details = type(impl).__dict__.get("details")
    assert isinstance(details, dict), f"{name} declares no details"
    model = vp.load(str(siglip_dir if name == "pool" else tiny_dirs["vit"]))
    image = photo(hw=(32, 48))
    sizes = {"B": 2, "L": model.num_layers, "heads": model.num_heads, "H": 32 // 8, "W": 48 // 8,
             "H_in": 32, "W_in": 48}
    params = {"artifacts": "mask"} if "artifacts" in {p.name for p in impl.params} else {}
    params |= {"n_steps": 4} if name == "integrated_gradients" else {}
    res = vp.attribute(model, [image, image], method=name, size=(32, 48), **params)
    assert set(res.detail) <= set(details), f"{name} returns undeclared detail {set(res.detail) - set(details)}"
    conditional = {key for key, doc in details.items() if re.search(r"\((\w+=\w+ )?only\)|only\)", doc)}
    assert set(details) - conditional <= set(res.detail), f"{name}: declared but not returned"
    for key, tensor in res.detail.items():
        shape = declared_shape(details[key])
        assert len(shape) == tensor.dim(), f"{name}.detail[{key!r}] is {tuple(tensor.shape)}, declared {shape}"
        for symbol, size in zip(shape, tensor.shape, strict=True):
            if symbol in SYMBOLS:
                assert size == sizes[symbol], f"{name}.detail[{key!r}]: {symbol} = {size}, expected {sizes[symbol]}"


def test_vitprobe_methods_lists_detail_keys_and_shapes():
    out = CliRunner().invoke(app, ["methods"]).stdout
    assert "  detail layers_heads (B, L, heads, H, W) each layer's per-head CLS maps" in out
    assert "  detail pixels (B, H_in, W_in)" in out


def test_vp_methods_lists_detail_keys_and_shapes():
    info = {m.name: m for m in vp.methods()}
    assert info["layers"].details["layers_heads"].startswith("(B, L, heads, H, W)")
    assert "detail layers_heads (B, L, heads, H, W)" in str(info["layers"])


def test_aggregate_layers_reads_batch_first_details(tiny_dirs):
    model = vp.load(str(tiny_dirs["dinov2"]))
    res = vp.attribute(model, [photo(1), photo(2)], method="layers")
    panels = dict(res.panels)
    for how in ("mean", "max", "min"):
        torch.testing.assert_close(vp.aggregate_layers(res.detail["layers"], how, dim=1), panels[f"layer {how}"])
    torch.testing.assert_close(vp.aggregate_layers(res.detail["layers"], dim=1), res.maps)
    with pytest.raises(TypeError, match="dim=1 for batch-first"):
        vp.aggregate_layers(res.detail["layers"], "mean")


def test_attribute_and_capture_for_default_to_the_same_method(tiny_dirs):
    defaults = {f.__name__: inspect.signature(f).parameters["method"].default for f in (vp.attribute, vp.capture_for)}
    assert defaults == {"attribute": DEFAULT_METHOD, "capture_for": DEFAULT_METHOD}
    model = vp.load(str(tiny_dirs["vit"]))
    images = [photo(3), photo(4)]
    later = vp.attribute(vp.capture_for(model, images))  # the default capture holds what the default draws
    assert later.method == DEFAULT_METHOD
    torch.testing.assert_close(later.maps, vp.attribute(model, images).maps)


def test_each_capture_choice_has_one_way(tiny_dirs):
    """CLS rows only, fused matrices, full layers and streamed reducers, all through ``vp.capture_for``,
    each equal to what the low-level ``model.capture`` records."""
    model = vp.load(str(tiny_dirs["deit"]))
    images = [photo(5), photo(6)]
    rows = vp.capture_for(model, images, method="layers")
    assert rows.cls.shape[:3] == (model.num_layers, 2, model.num_heads) and not rows.full and not rows.fused
    one = vp.capture_for(model, images, method="cls", layer=1)
    assert one.layers == [1] and not one.full and not one.fused
    fused = vp.capture_for(model, images, method="rollout", head_fusion="max")
    assert set(fused.fused) == {"max"} and fused.fused["max"].shape[0] == model.num_layers and not fused.full
    reducers = {"distance": vp.MeanDistance(), "entropy": vp.RowEntropy()}
    streamed = vp.capture_for(model, images, method=None, reducers=reducers, full_layers=[-1])
    assert sorted(streamed.full) == [model.num_layers - 1] and not streamed.fused
    assert streamed.reduced["distance"].shape == (model.num_layers, 2, model.num_heads)
    low = model.capture(images, reducers={"distance": vp.MeanDistance()}, fuse=(), full_layers=list(range(3)))
    torch.testing.assert_close(streamed.reduced["distance"], low.reduced["distance"])
    last = streamed.full[model.num_layers - 1]
    torch.testing.assert_close(streamed.reduced["distance"][-1],
                               vp.mean_attention_distance(last, streamed.layout).float(), atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="nothing to capture"):
        vp.capture_for(model, images, method=None)
    with pytest.raises(ValueError, match="method=None takes no method parameters"):
        vp.capture_for(model, images, method=None, full_layers=[0], layer=0)


def test_cls_entropy_and_uniform_distance_are_exported():
    assert {"cls_entropy", "uniform_distance", "rows_entropy", "map_entropy"} <= set(vp.__all__)
    layout = vp.TokenLayout(prefix_names=("cls",), grid_hw=(14, 14), patch_size=16)
    assert vp.uniform_distance(layout) == pytest.approx(116.49, abs=0.01)  # the ViT paper's uniform reference
    rows = torch.full((1, 1, 1, 197), 1 / 197)
    assert float(vp.cls_entropy(rows)) == pytest.approx(np.log(197), rel=1e-6)


def test_panels_are_built_when_drawn(tiny_dirs, monkeypatch):
    from vitprobe.methods import layers as layers_module

    model = vp.load(str(tiny_dirs["vit"]))
    cap = vp.capture_for(model, [photo(7)], method="layers")
    calls = []
    real = layers_module.aggregate_layers
    monkeypatch.setattr(layers_module, "aggregate_layers", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    res = vp.attribute(cap, method="layers", layer_fusion="max")
    assert calls == ["max"] and not res.panels.built  # the map only: no panel computed
    assert res.detail["layers"].shape[1] == model.num_layers
    labels = [label for label, _ in res.panels]  # read: built now, once
    assert res.panels.built and calls == ["max", "mean", "max", "min"]
    assert labels == [*(f"layer {i}" for i in range(model.num_layers)), "layer mean", "layer max", "layer min"]
    torch.testing.assert_close(dict(res.panels)["layer max"], res.maps)
    vp.render.attribution_figure(res)
    assert calls == ["max", "mean", "max", "min"]
