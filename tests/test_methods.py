"""The methods registry: parameters, planning, every built-in method against float64 references from eager
attention, and a toy method registered here that every front end then offers without an edit elsewhere."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vitprobe as vp
from tests.test_streaming import float64_rollout
from vitprobe.analysis.maps import to_grid
from vitprobe.cli import app
from vitprobe.methods import base as registry

runner = CliRunner()


def photo(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8))


# --- parameters -------------------------------------------------------------------------------------------


def test_parameters_parse_text_and_refuse_bad_values_naming_the_option():
    from vitprobe.methods.params import DISCARD_RATIO, HEAD, HEAD_FUSION, LAYER, PATCH, TARGET

    assert LAYER.parse("-1") == -1 and LAYER.option == "--layer"
    assert HEAD.parse("fused") is None and HEAD.parse("3") == 3
    assert PATCH.parse("2,5") == (2, 5) and PATCH.parse("") is None
    assert TARGET.parse("281") == 281 and TARGET.parse("tabby cat") == "tabby cat" and TARGET.parse("") is None
    assert DISCARD_RATIO.parse("0.9") == 0.9 and DISCARD_RATIO.describe() == "[0, 1)"
    for param, text in ((LAYER, "x"), (HEAD, "-1"), (PATCH, "1"), (DISCARD_RATIO, "1.0"), (HEAD_FUSION, "median"),
                        (DISCARD_RATIO, "nan")):
        with pytest.raises(ValueError, match=f"^{param.option} takes "):
            param.parse(text)
    with pytest.raises(ValueError, match="--layer takes"):
        LAYER.check(True)  # a bool is not a layer
    with pytest.raises(ValueError, match="unknown kind"):
        vp.Param("x", 0, "doc", "colour")


def test_needs_plan_one_capture_and_name_what_a_capture_lacks(tiny_dirs):
    model = vp.load(str(tiny_dirs["vit"]))
    a = vp.Needs(cls_layers=frozenset({0}))
    b = vp.Needs(fuse=frozenset({"max"}), full_layers=frozenset({2}))
    both = a | b
    assert both.capture_kwargs() == {"layers": None, "fuse": ("max",), "full_layers": (2,), "token_norms": False,
                                     "pool": False}
    assert a.capture_kwargs()["layers"] == [0] and not vp.Needs(gradients=True).forward
    cap = model.capture(photo(), layers=[0], fuse=(), full_layers=())
    assert a.missing(cap) == []
    assert both.missing(cap) == ["layers=[0, 1, 2]", "fuse=('max',)", "full_layers=[2]"]


def test_registered_names_are_unique_and_lower_case():
    class Clash(vp.Method):
        name = "cls"
        summary = "another cls"

        def needs(self, ctx, p):
            return vp.Needs()

        def compute(self, ctx, p):
            raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        vp.register_method(Clash)
    Clash.name = "Not Lower"
    with pytest.raises(ValueError, match="short lower-case word"):
        vp.register_method(Clash)


# --- every built-in method against float64 from eager attention -----------------------------------------


@pytest.fixture(scope="module")
def eager(tiny_dirs):
    """The distilled DeiT (CLS + distillation token) and its float64 eager attention of one 32x48 image."""
    model = vp.load(str(tiny_dirs["deit"]))
    pixels, _, _ = model.prepare(photo(), (32, 48))
    with torch.no_grad():
        model.module.set_attn_implementation("eager")
        attentions = model.module(pixel_values=pixels, output_attentions=True, interpolate_pos_encoding=True).attentions
        model.module.set_attn_implementation("sdpa")
    return model, np.stack([a[0].double().numpy() for a in attentions])  # (L, heads, T, T)


def test_each_method_equals_its_float64_definition(eager):
    model, attn = eager
    prefix, grid = 2, (4, 6)
    results = vp.attribute(model, photo(), size=(32, 48), method=[
        ("cls", {"layer": 1, "head_fusion": "max"}), ("query", {"layer": 0, "patch": (2, 5), "head": 3}),
        ("layers", {"layer_fusion": "min"}), ("rollout", {"discard_ratio": 0.0}), "layers"])
    cls, query, layers_min, rolled, layers_mean = (r.maps[0].double().numpy() for r in results)
    np.testing.assert_allclose(cls, attn[1, :, 0, prefix:].max(0).reshape(grid), atol=1e-6)
    np.testing.assert_allclose(query, attn[0, 3, prefix + 2 * 6 + 5, prefix:].reshape(grid), atol=1e-6)
    per_layer = attn[:, :, 0, prefix:].mean(1)  # (L, N) head-mean CLS rows
    np.testing.assert_allclose(layers_min, per_layer.min(0).reshape(grid), atol=1e-6)
    np.testing.assert_allclose(layers_mean, per_layer.mean(0).reshape(grid), atol=1e-6)
    reference = float64_rollout(attn.mean(1)[:, None], 0)[0, prefix:].reshape(grid)
    np.testing.assert_allclose(rolled, reference, atol=1e-6)
    heads = results[0].detail["heads"][0].double().numpy()
    assert np.all(heads.reshape(heads.shape[0], -1).sum(-1) <= 1 + 1e-6)  # probabilities, prefix mass excluded
    np.testing.assert_allclose(heads.reshape(heads.shape[0], -1).sum(-1) + attn[1, :, 0, :prefix].sum(-1), 1,
                               atol=1e-5)  # rows sum to 1 with the prefix tokens


def test_rollout_of_identity_attention_stays_on_the_cls_token():
    t = 1 + 6
    eye = [np.eye(t, dtype=np.float32)[None, None].repeat(2, axis=1) for _ in range(3)]
    cap = vp.from_attentions(eye, prefix_tokens=1, grid_hw=(2, 3))
    assert vp.attribute(cap, method="rollout").maps.abs().max() == 0  # all mass stays on CLS, none on patches
    assert vp.attribute(cap, method="layers").maps.abs().max() == 0


def test_maps_follow_a_permutation_of_the_patch_tokens():
    """Permuting patch tokens (queries and keys) permutes every map the same way."""
    g = torch.Generator().manual_seed(0)
    t, n = 1 + 6, 6
    perm = torch.randperm(n, generator=g)
    order = torch.cat([torch.tensor([0]), 1 + perm])
    layers = [(torch.randn(1, 2, t, t, generator=g) * 2).softmax(-1) for _ in range(3)]
    permuted = [a[:, :, order][:, :, :, order] for a in layers]
    for method in ("cls", "layers", "rollout"):
        a, b = (vp.attribute(vp.from_attentions(x, grid_hw=(2, 3)), method=method).maps[0].flatten()
                for x in (layers, permuted))
        torch.testing.assert_close(b, a[perm], atol=1e-6, rtol=0)


# --- a method added in one file appears in every front end ----------------------------------------------


@pytest.fixture
def toy():
    """A method registered from this test module: the CLS map of the last layer raised to ``power``."""

    class Sharpened(vp.Method):
        """Detail: ``raw`` (B, H, W) the head-mean CLS map before the power."""

        name = "toysharp"
        summary = "test toy: the last layer's head-mean CLS map raised to a power"
        params = (vp.Param("power", 2.0, "exponent applied to the map", "float", low=0.0, high=8.0),)
        requires = ("cls",)

        def needs(self, ctx: vp.methods.Context, p: dict[str, Any]) -> vp.Needs:
            return vp.Needs(cls_layers=frozenset({ctx.n_layers - 1}))

        def compute(self, ctx, p: dict[str, Any]) -> vp.Result:
            cap = ctx.capture
            raw = to_grid(cap.cls[cap.layer_position(-1)], ctx.layout).mean(1)
            return vp.Result(raw ** p["power"], f"CLS map to the power {p['power']:g}", {"raw": raw})

    vp.register_method(Sharpened)
    yield Sharpened
    registry._REGISTRY.pop(Sharpened.name)


def test_toy_method_in_python_and_vitprobe_methods(toy, tiny_dirs):
    assert "toysharp" in vp.method_names()
    model = vp.load(str(tiny_dirs["vit"]))
    res = vp.attribute(model, photo(), method="toysharp", power=3.0)
    torch.testing.assert_close(res.maps, res.detail["raw"] ** 3)
    listing = runner.invoke(app, ["methods"]).stdout
    assert "toysharp: test toy: the last layer's head-mean CLS map raised to a power (needs: cls)" in listing
    assert "  --power [0, 8] = 2.0: exponent applied to the map" in listing


def test_toy_method_in_explain_and_keypoints(toy, tiny_dirs, tmp_path):
    path = tmp_path / "p.png"
    photo(2).save(path)
    result = runner.invoke(app, ["explain", str(path), "--model", str(tiny_dirs["vit"]), "--method", "toysharp,cls",
                                 "--power", "0.5", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "p" / "summary.json").read_text())
    assert summary["figures"] == ["toysharp.png", "cls.png"] and summary["methods"][0]["params"] == {"power": 0.5}
    maps = np.load(tmp_path / "out" / "p" / "maps.npz")
    np.testing.assert_allclose(maps["toysharp"], maps["toysharp.raw"] ** 0.5, rtol=1e-6)
    np.testing.assert_allclose(maps["toysharp.raw"], maps["cls"], rtol=1e-6)  # cls: last layer, head mean
    result = runner.invoke(app, ["keypoints", str(path), "--model", str(tiny_dirs["vit"]), "--method", "toysharp",
                                 "--short-side", "32", "--out", str(tmp_path / "kp")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "kp" / "p" / "keypoints.json").read_text())["method"] == "toysharp"


def test_faithfulness_measures_a_new_method_by_default(toy):
    """A new method joins faithfulness' default list by being registered; the costly and the untargeted stay out."""
    from vitprobe.methods import default_faithfulness_methods

    measured = default_faithfulness_methods()
    assert "toysharp" in measured and {"cls", "rollout", "chefer", "gradcam"} <= set(measured)
    assert not {"query", "pool", "positions", "filters", "scorecam", "occlusion", "integrated_gradients",
                "input_x_gradient"} & set(measured)
    listing = {info.name: str(info) for info in vp.methods()}
    assert "[faithfulness: only when named]" in listing["scorecam"] and "faithfulness" not in listing["toysharp"]


def test_toy_method_in_video(toy, tiny_dirs, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    from tests.test_video import moving_noise, write_video

    video = write_video(tmp_path / "in.mp4", moving_noise(4, (32, 48)), 4.0)
    maps = tmp_path / "maps.npy"
    result = runner.invoke(app, ["video", str(video), "--out", str(tmp_path / "out.mp4"), "--model",
                                 str(tiny_dirs["vit"]), "--method", "toysharp", "--power", "4", "--maps", str(maps)])
    assert result.exit_code == 0, result.output
    assert "toysharp maps" in result.stdout and np.load(maps).shape == (4, 28, 42)  # 32x48 at short side 224


def test_toy_method_among_the_web_demos_choices(toy, tiny_dirs, tmp_path):
    pytest.importorskip("gradio")
    from vitprobe.web import build_demo
    from vitprobe.web.app import DemoBackend, View

    demo = build_demo([str(tiny_dirs["vit"])], work_dir=tmp_path / "work", samples=False)
    by_id = {getattr(block, "elem_id", None): block for block in demo.blocks.values()}
    assert "toysharp" in [value for _, value in by_id["method"].choices]
    assert by_id["param-power"].visible is False  # shown only while the toy method is chosen
    backend = DemoBackend([str(tiny_dirs["vit"])], work_dir=tmp_path / "w")
    path = tmp_path / "p.png"
    photo(3).save(path)
    rendered = backend.render(str(tiny_dirs["vit"]), backend.store_upload(path), View("toysharp", {"power": 1.0}))
    assert rendered.caption.split(": ", 1)[1].startswith("CLS map to the power 1")
    assert set(rendered.arrays) == {"map", "raw"}


def test_positions_and_filters_equal_their_float64_definitions(tiny_dirs):
    model = vp.load(str(tiny_dirs["vit"]))  # a 4x4 grid of 8-px patches: the learned table's own grid
    image = photo(5)
    res = vp.attribute(model, image, method="positions", patch=(1, 2))
    table = model.position_grid.double().reshape(16, -1)
    unit = table / table.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(res.maps[0].flatten().double().numpy(), (unit @ unit[1 * 4 + 2]).numpy(), atol=1e-6)
    assert [label for label, _ in res.panels][:2] == ["(1, 2)", "(0, 0)"]
    filters = vp.attribute(model, image, method="filters")
    pixels, _, _ = model.prepare(image)
    weight = model.patch_weight.double().reshape(len(model.patch_weight), -1)  # (D, 3·P·P)
    patches = pixels.double().unfold(2, 8, 8).unfold(3, 8, 8)  # (1, 3, 4, 4, 8, 8)
    vectors = patches.permute(0, 2, 3, 1, 4, 5).reshape(16, -1)  # per patch its 3·P·P pixels, channel first
    np.testing.assert_allclose(filters.maps[0].flatten().double().numpy(), (vectors @ weight.T).norm(dim=1).numpy(),
                               rtol=1e-5)
    mosaic = filters.panels[1][1][0]
    assert mosaic.shape[-1] == 3 and float(mosaic.min()) >= 0 and float(mosaic.max()) <= 1
    fig = vp.render.attribution_figure(filters)
    assert [ax.get_title() for ax in fig.axes if ax.images][:3] == ["image", "response norm", "filters 0-31"]
    with pytest.raises(ValueError, match="needs a model"):
        vp.attribute(model.capture(image), method="positions")


def test_listing_order_does_not_depend_on_which_method_module_is_imported_first():
    """Importing one method's module before the registry loads (as a test or a script may) keeps the listing."""
    import subprocess
    import sys

    code = ("import vitprobe.methods.flow, vitprobe.methods.legrad; from vitprobe.methods import method_names; "
            "print(','.join(method_names()[:8]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "cls,query,layers,rollout,flow,gradrollout,chefer,legrad"
