"""The benchmark's methods give the same maps on tiny models; its plumbing, arithmetic and report (no timings)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.test_streaming import float64_distance, float64_entropy, float64_rollout
from vitprobe import bench
from vitprobe.bench import Config, Measurement, ModelSpec
from vitprobe.cli import app
from vitprobe.kernels import resolve_kernel

TINY = {
    "dinov2": ModelSpec("tiny-dinov2", "dinov2", hidden=32, layers=3, heads=4, patch=8, image=32, init_std=0.3),
    "vit": ModelSpec("tiny-vit", "vit", hidden=32, layers=3, heads=4, patch=8, image=32, init_std=0.3),
    "dinov3": ModelSpec("tiny-dinov3", "dinov3", hidden=32, layers=3, heads=4, patch=8, image=32, init_std=0.3),
}


@pytest.fixture(params=sorted(TINY))
def tiny(request) -> ModelSpec:
    return TINY[request.param]


def run(spec: ModelSpec, method: str, batch: int = 3) -> dict[str, torch.Tensor]:
    attn = "eager" if method in bench.EAGER else "sdpa"
    vit = spec.build(attn, torch.device("cpu"), torch.float32)
    return bench.WORKLOADS[method](vit, bench.inputs(spec, batch))


def test_methods_give_the_same_maps(tiny):
    seed, hooks, cls, rolled, full = (run(tiny, m) for m in ("seed", "hooks", "cls", "rollout", "full"))
    assert seed["cls_grid"].shape == (3, 3, 4, 4, 4) and seed["rollout_grid"].shape == (3, 4, 4)
    for other in (hooks, cls, rolled, full):
        assert bench.max_abs_diff(other, seed) <= 1e-5
    assert set(bench.COMPARED) & set(full) == {"cls_map_entropy", "rollout_entropy"}
    assert set(bench.COMPARED) & set(cls) == {"cls_grid", "cls_map_entropy"} and "rollout_grid" in rolled
    assert (seed["cls_grid"].amax() > 0.2).item()  # peaked attention: the comparison is not trivially uniform


def test_full_workload_statistics_match_float64(tiny):
    """What analyze computes per batch, against float64 from eager attentions of the same preprocessed input."""
    vit = tiny.build("eager", torch.device("cpu"), torch.float32)
    images = bench.inputs(tiny, 2)
    pixels, _, _ = vit.prepare(images)
    with torch.no_grad():
        attentions = [a.numpy() for a in vit.module(pixel_values=pixels, output_attentions=True).attentions]
    full = run(tiny, "full", batch=2)
    layout = vit.layout((tiny.image, tiny.image))
    for layer, attn in enumerate(attentions):
        np.testing.assert_allclose(full["entropy_rows"][layer].numpy(), float64_entropy(attn).mean(-1), atol=1e-5)
        np.testing.assert_allclose(full["mean_attention_distance"][layer].numpy(),
                                   float64_distance(attn, layout, False), rtol=1e-5)
        np.testing.assert_allclose(full["entropy_cls"][layer].numpy(), float64_entropy(attn[:, :, 0]), atol=1e-5)
    fused = np.stack([a.mean(axis=1) for a in attentions])
    patches = float64_rollout(fused, 0)[:, layout.n_prefix :]
    p = patches / patches.sum(-1, keepdims=True)
    np.testing.assert_allclose(full["rollout_entropy"].numpy(), -(p * np.log(p)).sum(-1), rtol=1e-5)


def test_inputs_do_not_depend_on_batch_size():
    spec = TINY["vit"]
    assert np.array_equal(bench.inputs(spec, 1)[0], bench.inputs(spec, 4)[0])
    assert bench.inputs(spec, 2)[0].dtype == np.uint8  # images, so every workload counts its preprocessing


def test_eager_only_methods_refuse_fused_attention():
    vit = TINY["vit"].build("sdpa", torch.device("cpu"), torch.float32)
    for method in bench.EAGER:
        with pytest.raises(bench.CaptureError, match="eager"):
            bench.WORKLOADS[method](vit, bench.inputs(TINY["vit"], 1))


def test_memory_arithmetic():
    large = bench.MODELS["DINOv2-L/14"]
    assert large.n_tokens == 1370
    assert bench.attention_bytes(large, 1) == 24 * 16 * 1370**2 * 4  # REFERENCE.md: 2.9 GB per image
    assert bench.attention_bytes(bench.MODELS["ViT-B/16"], 1) == pytest.approx(22.4e6, rel=1e-2)
    cap = 20 * 2**30
    assert bench.estimate_bytes(large, 8, "seed") > cap > bench.estimate_bytes(large, 8, "full")
    assert bench.estimate_bytes(large, 8, "cls") < bench.estimate_bytes(large, 8, "full")
    assert bench.estimate_bytes(large, 8, "rollout") == bench.estimate_bytes(large, 8, "full")


def test_oversized_run_is_reported_not_started(tmp_path):
    [m] = bench.measure(bench.MODELS["DINOv2-L/14"], 8, "seed", "float32", Config(), tmp_path)
    assert m.seconds is None and m.note.startswith("OOM: needs ≈ ") and "23.1 GB" in m.note
    assert not list(tmp_path.iterdir())


def test_child_processes_measure_and_compare(tmp_path):
    cfg = Config(models=[TINY["dinov2"]], batches=[2], methods=("plain", "seed", "rollout", "full"), repeats=1,
                 workdir=tmp_path, kernels=("auto", "torch"))
    lines: list[str] = []
    report = bench.run_benchmark(cfg, echo=lines.append)
    rows = [line for line in report.splitlines() if line.startswith("| tiny-dinov2")]
    assert len(rows) == 6 and "Machine:" in report and lines
    cells = [row.split("|") for row in rows]
    auto = resolve_kernel(torch.device("cpu"))
    assert [c[4].strip() for c in cells] == [  # each method under every kernel, the kernel that ran named
        "(a) plain fused forward", "(b) seed: eager + output_attentions, numpy", f"(d) vp.attribute: rollout [{auto}]",
        "(d) vp.attribute: rollout [torch]", f"(d) analyze's batch: full workload [{auto}]",
        "(d) analyze's batch: full workload [torch]"]
    assert all(float(c[5]) > 0 and float(c[8]) > 0.1 for c in cells)  # images/s, peak RSS in GB
    assert cells[0][9].strip() == "–" and all(float(c[9]) <= 1e-5 for c in cells[2:])  # plain: no maps


def test_update_results_replaces_only_its_block(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nnotes above\n\n<!-- bench:cpu:begin -->\nold\n<!-- bench:cpu:end -->\n\nbelow\n")
    bench.update_results(path, "cpu", "new table")
    bench.update_results(path, "cuda", "gpu table")
    text = path.read_text()
    assert "old" not in text and "new table" in text and text.startswith("# Results\n\nnotes above")
    assert text.index("below") < text.index("gpu table")


def test_targets_are_checked():
    def m(method, ratio):
        return Measurement(method, seconds=1.0, ratio=ratio)

    table = {
        ("DINOv2-S/14", 8, "float32"): {"plain": m("plain", 1.0), "seed": m("seed", 0.2), "cls": m("cls", 0.98),
                                        "full": m("full", 0.67)},
        ("DINOv2-L/14", 8, "float32"): {"plain": m("plain", 1.0), "full": m("full", 0.91)},
        ("ViT-B/16", 1, "float32"): {"plain": m("plain", 1.0), "cls": m("cls", 0.9), "full": m("full", 0.1)},
        ("DINOv2-S/14@1022", 1, "float32"): {"full": m("full", 0.69), "rollout": m("rollout", 0.5)},
    }
    assert bench.check_targets(table, "cpu") == [
        "- DINOv2-S/14 b8 float32 cls: 0.98× (a), target ≥ 0.97: met",
        "- DINOv2-S/14 b8 float32 full: 0.67× (a), target ≥ 0.85: MISSED",
        "- DINOv2-S/14 b8 float32 full: 3.35× the speed of (b)",
        "- DINOv2-L/14 b8 float32 full: 0.91× (a), target ≥ 0.90: met",
        "- ViT-B/16 b1 float32 cls: 0.90× (a), target ≥ 0.97: MISSED",
        "- DINOv2-S/14@1022 b1 float32 full: 0.69× (a), target ≥ 0.70: MISSED",
    ]


def test_config_rejects_unknown_names():
    args = argparse.Namespace(models="DINOv2-S/14", batches="1", device="cpu", dtypes=None, methods="plain,full",
                              kernels="auto,torch", repeats=1, cap_gib=20.0)
    cfg = bench.config_from(args)
    assert [s.name for s in cfg.models] == ["DINOv2-S/14"] and cfg.dtypes == ["float32"]
    with pytest.raises(ValueError, match="unknown model"):
        bench.config_from(argparse.Namespace(**{**vars(args), "models": "ViT-H/14"}))
    with pytest.raises(ValueError, match="methods"):
        bench.config_from(argparse.Namespace(**{**vars(args), "methods": "plain,magic"}))
    assert cfg.kernels == ["auto", "torch"]
    with pytest.raises(ValueError, match="kernels must be among auto, cpp, triton, torch"):
        bench.config_from(argparse.Namespace(**{**vars(args), "kernels": "cuda"}))


def test_cli_bench_registered_and_validates():
    result = CliRunner().invoke(app, ["bench", "--models", "ViT-H/14"])
    assert result.exit_code == 2 and "unknown model" in result.output
