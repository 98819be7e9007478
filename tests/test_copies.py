"""Copies and threads: a deep copy or an unpickled model is an independent model (every method runs on its
own module, its maps equal the original's until its weights change, the original untouched), also after a
dtype change, for every adapter; captures from several threads on one model give the lone call's maps."""

from __future__ import annotations

import copy
import json
import pickle
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import vitprobe as vp
from tests import timm_models
from tests.test_families import FAMILIES
from tests.torchvision_stub import import_with_stub
from vitprobe.models.hf import wrap

COPIES: dict[str, Callable[[vp.VitModel], vp.VitModel]] = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda model: pickle.loads(pickle.dumps(model)),
}


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))


def every_map(model: vp.VitModel, photo: Image.Image) -> dict[str, torch.Tensor]:
    """Each registered method's maps (B, H, W) of ``photo``, for the methods this model has what they need."""
    maps = {}
    for info in vp.methods():
        try:
            maps[info.name] = vp.attribute(model, photo, method=info.name).maps
        except ValueError:  # a method this model cannot give (no CLS, no pooling head): the same for the copy
            continue
    return maps


def randomise(model: vp.VitModel, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * 0.5)


def module_ids(model: vp.VitModel) -> set[int]:
    return {id(m) for m in model.module.modules()}


@pytest.mark.parametrize("how", sorted(COPIES))
def test_a_copy_is_an_independent_model_whose_every_method_runs_on_its_own_module(tiny_dirs, tiny_kind, photo, how):
    original = vp.load(str(tiny_dirs[tiny_kind]))
    before = every_map(original, photo)
    assert {"cls", "rollout", "legrad", "chefer"} <= set(before)  # gradient methods are among them
    twin = COPIES[how](original)
    assert twin.module is not original.module
    own = module_ids(twin)
    assert all(id(site.query) in own and id(site.key) in own for site in twin.sites)
    assert all(id(block) in own for block in twin.blocks)
    assert (twin.name, twin.preprocess, twin.labels) == (original.name, original.preprocess, original.labels)
    copied = every_map(twin, photo)
    assert copied.keys() == before.keys()
    for name, maps in before.items():
        torch.testing.assert_close(copied[name], maps, rtol=0, atol=0, msg=f"{how}: {name}")
    randomise(twin)
    changed = every_map(twin, photo)
    assert not torch.equal(changed["cls"], before["cls"]) and not torch.equal(changed["legrad"], before["legrad"])
    after = every_map(original, photo)  # the original is untouched
    for name, maps in before.items():
        torch.testing.assert_close(after[name], maps, rtol=0, atol=0, msg=f"original after the {how}: {name}")


@pytest.mark.parametrize("how", sorted(COPIES))
def test_a_copy_of_a_model_moved_to_another_dtype_keeps_that_dtype_and_its_maps(tiny_dirs, photo, how):
    original = vp.load(str(tiny_dirs["vit"]))
    original.module.to(torch.float64)
    before = {name: vp.attribute(original, photo, method=name).maps for name in ("cls", "rollout", "legrad")}
    twin = COPIES[how](original)
    assert twin.dtype == torch.float64 and twin.patch_weight.dtype == torch.float64
    for name, maps in before.items():
        torch.testing.assert_close(vp.attribute(twin, photo, method=name).maps, maps, rtol=0, atol=0)
    randomise(twin)
    assert not torch.equal(vp.attribute(twin, photo, method="cls").maps, before["cls"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("how", sorted(COPIES))
def test_a_copy_of_a_model_on_the_gpu_stays_there_with_its_maps(tiny_dirs, photo, how):
    original = vp.load(str(tiny_dirs["vit"]), device="cuda")
    before = {name: vp.attribute(original, photo, method=name).maps for name in ("cls", "rollout", "legrad")}
    twin = COPIES[how](original)
    assert twin.device.type == "cuda" and twin.patch_weight.device.type == "cuda"
    for name, maps in before.items():
        torch.testing.assert_close(vp.attribute(twin, photo, method=name).maps, maps, rtol=0, atol=1e-6)
    randomise(twin)
    assert not torch.equal(vp.attribute(twin, photo, method="cls").maps, before["cls"])


def test_load_with_a_dtype_reads_the_patch_weights_of_the_moved_module(tiny_dirs):
    model = vp.load(str(tiny_dirs["vit"]), dtype=torch.float64)
    assert model.patch_weight.dtype == torch.float64
    assert model.patch_weight.data_ptr() == model.module.vit.embeddings.patch_embeddings.projection.weight.data_ptr()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_hugging_face_family_survives_a_pickle(family, photo):
    torch.manual_seed(0)
    original = wrap(FAMILIES[family][0](), family)
    methods = ["query"] + (["cls", "rollout"] if original.prefix_names else ["pool"] if original.pool else [])
    twin = COPIES["pickle"](original)
    size = (32, 32)
    for name in methods:
        torch.testing.assert_close(vp.attribute(twin, photo, method=name, size=size).maps,
                                   vp.attribute(original, photo, method=name, size=size).maps, rtol=0, atol=0)
    assert not any(t.is_meta for t in [*twin.module.parameters(), *twin.module.buffers()])


@pytest.mark.skipif(timm_models.TORCHVISION is None, reason=timm_models.SKIP_REASON)
@pytest.mark.parametrize("how", sorted(COPIES))
def test_a_timm_model_survives_copies(how, photo):
    from vitprobe.models.timm import wrap as timm_wrap

    original = timm_wrap(timm_models.tiny(timm_models.FAMILIES["eva02"]), "tiny-eva02")  # rotary: a tap per layer
    before = {name: vp.attribute(original, photo, method=name).maps for name in ("cls", "legrad")}
    twin = COPIES[how](original)
    for name, maps in before.items():
        torch.testing.assert_close(vp.attribute(twin, photo, method=name).maps, maps, rtol=0, atol=0)
    randomise(twin)
    assert not torch.equal(vp.attribute(twin, photo, method="cls").maps, before["cls"])
    torch.testing.assert_close(vp.attribute(original, photo, method="cls").maps, before["cls"], rtol=0, atol=0)


@pytest.mark.skipif(import_with_stub("open_clip") is None, reason="open_clip is not installed")
@pytest.mark.parametrize("how", sorted(COPIES))
def test_an_openclip_model_survives_copies(how, photo, tmp_path):
    import open_clip

    from vitprobe.models.openclip import wrap as openclip_wrap

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8,
                                              "patch_size": 8},
              "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 4, "layers": 1}}
    (tmp_path / "vp-copies-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    torch.manual_seed(0)
    original = openclip_wrap(open_clip.create_model("vp-copies-clip", pretrained=None), "vp-copies-clip")
    before = {name: vp.attribute(original, photo, method=name).maps for name in ("cls", "legrad")}
    twin = COPIES[how](original)
    for name, maps in before.items():
        torch.testing.assert_close(vp.attribute(twin, photo, method=name).maps, maps, rtol=0, atol=0)
    randomise(twin)
    assert not torch.equal(vp.attribute(twin, photo, method="cls").maps, before["cls"])


def test_a_model_built_by_hand_says_it_cannot_be_copied(tiny_dirs):
    model = vp.load(str(tiny_dirs["vit"]))
    by_hand = vp.VitModel(**{**model.__dict__, "rebuild": None})
    for how in COPIES.values():
        with pytest.raises(TypeError, match="built by hand"):
            how(by_hand)


def test_four_threads_capturing_on_one_model_get_the_maps_of_a_lone_call(tiny_dirs, photo):
    model = vp.load(str(tiny_dirs["vit"]))
    plan = ["cls", "rollout", "legrad", "query"]
    alone = {name: vp.attribute(model, photo, method=name).maps for name in plan}
    for block in model.blocks:  # each layer gives the other threads the processor: their passes overlap
        block.register_forward_pre_hook(lambda _module, _args: time.sleep(0.002))
    results: list[tuple[str, torch.Tensor]] = []
    errors: list[str] = []
    start = threading.Barrier(4)

    def work(offset: int) -> None:
        start.wait()
        for call in range(3):
            name = plan[(offset + call) % len(plan)]
            try:
                results.append((name, vp.attribute(model, photo, method=name).maps))
            except Exception as err:  # recorded, so that the assertion shows every thread's failure
                errors.append(f"{name}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 12
    for name, maps in results:
        torch.testing.assert_close(maps, alone[name], rtol=0, atol=0, msg=name)
