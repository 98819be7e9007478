"""The faithfulness protocols against Quantus where the two coincide: deletion (Quantus'
RegionPerturbation, most relevant first, one patch per step, the zero substrate given as its baseline
value), the negative perturbation (least relevant first), and the randomisation ρ on the same randomised
models (Quantus' MPRT with Spearman, no abs, no normalisation). How they differ is in docs/evaluation.md."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import vitprobe as vp
from tests import timm_models as tm
from tests.test_faithfulness import GRID, PATCH, bright_patch_image, one_patch_model
from tests.torchvision_stub import import_with_stub
from vitprobe.analysis import perturbation as pt
from vitprobe.faithfulness import _spearman, faithfulness
from vitprobe.models import timm as timm_adapter

if import_with_stub("quantus") is None:
    pytest.skip("quantus is not installed (make setup-dev installs it)", allow_module_level=True)
quantus = importlib.import_module("quantus")
N = GRID[0] * GRID[1]


def pixel_map(grid_map: torch.Tensor) -> np.ndarray:
    """A grid map (H, W) as Quantus' attribution array (1, 1, H·P, W·P), nearest upsampling."""
    return grid_map.repeat_interleave(PATCH, 0).repeat_interleave(PATCH, 1).double().numpy()[None, None]


def region_curve(module: torch.nn.Module, x: np.ndarray, target: int, attribution: np.ndarray,
                 order: str) -> np.ndarray:
    metric = quantus.RegionPerturbation(patch_size=PATCH, order=order, regions_evaluation=N, perturb_baseline=0.0,
                                        abs=False, normalise=False, disable_warnings=True)
    out = metric(model=module, x_batch=x, y_batch=np.array([target]), a_batch=attribution, device="cpu",
                 softmax=True, channel_first=True)
    return np.asarray(out[0], dtype=float)


@pytest.mark.parametrize("watched", [0, 4, 7])
def test_deletion_and_negative_curves_equal_quantus_region_perturbation(watched):
    model = one_patch_model(watched)
    image = bright_patch_image(watched)
    report = faithfulness(model, [image], methods=["cls"], steps=N, randomisation_steps=0, progress=False)
    x = model.prepare(image)[0].double().numpy().astype(np.float32)
    # the centre map's ties (its symmetric corners) are ordered by vitprobe's seeded permutation and by
    # Quantus' argsort: there the orders, so the curves, differ. The cls map's ties are in patches the
    # model ignores, so the curves coincide whatever their order.
    for record in [r for r in report.records if r.method != "baseline-centre"]:
        grid_map = (pt.random_map(GRID, 0, 0) if record.method == "baseline-random" else
                    vp.attribute(model, image, method="cls").maps[0])
        deletion = record.curves["deletion"]  # score after 0..N patches deleted
        drops = region_curve(model.module, x, 0, pixel_map(grid_map), "morf")  # y0 - score after 1..N
        assert np.allclose(deletion[0] - deletion[1:], drops, atol=1e-6), record.method
        # the AUC: ours the trapezoid of the scores over the fraction in [0, 1], Quantus' that of the drops
        # over the step number (dx = 1) from the first step on
        ours = record.metrics(report.fractions)["deletion_auc"]
        quantus_auc = np.trapezoid(drops, dx=1)  # Quantus' calculate_auc calls np.trapz, gone in NumPy 2.4
        assert ours == pytest.approx(((deletion[0] + deletion[1]) / 2 + (N - 1) * deletion[0] - quantus_auc) / N,
                                     abs=1e-6)
        negative = record.curves["negative"]  # score with the 10%..90% least relevant patches deleted
        lerf = region_curve(model.module, x, 0, pixel_map(grid_map), "lerf")
        counts = pt.fraction_counts(N)
        assert np.allclose(deletion[0] - negative, lerf[counts - 1], atol=1e-6), record.method


@pytest.mark.skipif(tm.TORCHVISION is None, reason=tm.SKIP_REASON)
def test_randomisation_rho_equals_quantus_mprt_on_the_same_models():
    """Quantus' MPRT re-initialises module by module (``reset_parameters``, top down); given those same
    models, the ρ vitprobe records (Spearman of the map with the original) equals MPRT's similarity."""
    module = tm.tiny(tm.FAMILIES["vit"], seed=1, std=0.3)
    model = timm_adapter.wrap(module, "tiny-vit")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = int(module(x).argmax())

    def explain(model: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray, **_kwargs) -> np.ndarray:
        maps = vp.attribute(timm_adapter.wrap(model, "tiny-vit"), torch.from_numpy(np.asarray(inputs)),
                            method="chefer", target=int(targets[0])).maps
        return maps.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None].numpy()

    metric = quantus.MPRT(similarity_func=quantus.similarity_func.correlation_spearman, layer_order="top_down",
                          seed=7, abs=False, normalise=False, disable_warnings=True, return_sample_correlation=False)
    a = explain(module, x.numpy(), np.array([target]))
    scores = metric(model=module, x_batch=x.numpy(), y_batch=np.array([target]), a_batch=a, explain_func=explain,
                    device="cpu", softmax=False, channel_first=True)
    original = vp.attribute(model, x, method="chefer", target=target).maps[0]
    wrapped = quantus.helpers.model.pytorch_model.PyTorchModel(module, channel_first=True, softmax=False,
                                                                device="cpu")
    ours = []
    for _, randomised in wrapped.get_random_layer_generator(order="top_down", seed=7):
        maps = vp.attribute(timm_adapter.wrap(randomised, "tiny-vit"), x, method="chefer", target=target).maps[0]
        # on the grid: Quantus' pixel maps repeat each patch 64 times, an affine change of every rank
        ours.append(_spearman(maps, original))
    theirs = [float(np.asarray(values).ravel()[0]) for name, values in scores.items() if name != "original"]
    assert len(theirs) == len(ours) > 5
    assert np.allclose(ours, theirs, atol=1e-9)
    assert model.module is module and torch.equal(module(x).argmax(-1), torch.tensor([target]))
