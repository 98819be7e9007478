"""Dataset statistics at large token counts against float64 references written from the definitions:
mean attention distance (both conventions) and attention entropies within 1e-6 relative at T up to
4,097, streamed during a capture and through ``vp.from_attentions``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vitprobe as vp
from tests.kernel_params import KERNEL_NAMES, kernel_attend
from tests.test_streaming import float64_distance, float64_entropy
from vitprobe.analysis.accumulate import Moments
from vitprobe.analysis.distance import MeanDistance
from vitprobe.analysis.entropy import RowEntropy
from vitprobe.kernels.base import LayerRequest
from vitprobe.layout import TokenLayout

SIDES = [32, 64]  # T = 1 + 32², 1 + 64² = 1,025 and 4,097 tokens
RTOL = 1e-6


def peaked_qk(t: int, heads: int = 2, d: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k (1, heads, T, d) whose softmax rows range from peaked to spread."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.linspace(0.3, 2.0, t).view(1, 1, t, 1)  # row i's temperature
    return torch.randn(1, heads, t, d, generator=g) * spread, torch.randn(1, heads, t, d, generator=g) * 1.5


def relative(got: torch.Tensor | np.ndarray, want: np.ndarray) -> float:
    got = np.asarray(got, dtype=np.float64)
    return float(np.max(np.abs(got - want) / np.abs(want)))


@pytest.mark.parametrize(("side", "kernel"), [(side, kernel) for side in SIDES for kernel in KERNEL_NAMES
                                               if not (kernel == "triton" and side > 32)])  # interpreted: 200 s
def test_streamed_statistics_equal_float64(side, kernel):
    layout = TokenLayout(("cls",), (side, side), 14)
    q, k = peaked_qk(layout.n_tokens)
    scale = q.shape[-1] ** -0.5
    attn64 = torch.softmax(q.double() @ k.double().transpose(-1, -2) * scale, dim=-1).numpy()
    reducers = [MeanDistance(False), MeanDistance(True), RowEntropy()]
    request = LayerRequest()
    for reducer in reducers:
        reducer.ask(request, layout, torch.device("cpu"))
    result = kernel_attend(kernel)(q, k, scale, request)
    distance, renormalized, rows = (reducer.reduce(result, layout) for reducer in reducers)
    assert relative(distance, float64_distance(attn64, layout, False)) < RTOL
    assert relative(renormalized, float64_distance(attn64, layout, True)) < RTOL
    row_entropy = float64_entropy(attn64)  # (1, heads, T)
    assert relative(rows.mean(-1), row_entropy.mean(-1)) < RTOL  # entropy_rows
    assert relative(rows[..., 0], row_entropy[..., 0]) < RTOL  # entropy_cls


@pytest.mark.parametrize("side", SIDES)
def test_statistics_of_given_attention_equal_float64(side):
    """``from_attentions`` reduces a whole image's attention as one block: still within 1e-6 (it was 5e-4)."""
    layout = TokenLayout(("cls",), (side, side), 14)
    q, k = peaked_qk(layout.n_tokens, seed=1)
    attn = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # float32, as a framework gives it
    cap = vp.from_attentions([attn], prefix_tokens=1, grid_hw=(side, side), patch_size=14, fuse=(),
                             reducers={"distance": MeanDistance(), "entropy": RowEntropy()})
    given = attn.numpy()
    assert relative(cap.reduced["distance"][0], float64_distance(given, layout, False)) < RTOL
    assert relative(cap.reduced["entropy"][0].mean(-1), float64_entropy(given).mean(-1)) < RTOL


def test_dataset_means_and_stds_equal_float64():
    """Moments over many images whose values share a large offset (the case that loses digits)."""
    g = np.random.default_rng(0)
    values = 116.49 + g.standard_normal((5000, 3, 4)) * 1e-3
    moments = Moments((3, 4))
    for chunk in np.array_split(values, 37):
        moments.update(torch.from_numpy(chunk))
    out = moments.compute()
    assert relative(out["mean"], values.mean(0)) < 1e-12
    assert relative(out["std"], values.std(0)) < RTOL


def test_analyze_batch_statistics_at_1025_tokens_equal_float64(tiny_dirs):
    """What ``analyze`` computes per batch on a 32×32 grid, against float64 attention softmax(q·kᵀ/√d) of the
    q and k the model's own projections computed in the same forward (hooked here, so the reference shares
    the forward's float32 rounding and checks only the statistics)."""
    from vitprobe.models.hf import load_hf
    from vitprobe.runner import AnalyzeOptions, probe_pixels

    model = load_hf(str(tiny_dirs["dinov2"]))
    projected: dict[tuple[int, str], torch.Tensor] = {}
    hooks = [getattr(layer.attention, name).register_forward_hook(
                 lambda _m, _a, out, key=(i, name): projected.__setitem__(key, out.detach().double()))
             for i, layer in enumerate(model.module.encoder.layer) for name in ("q_proj", "k_proj")]
    pixels = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    try:
        metrics, counts = probe_pixels(model, pixels, AnalyzeOptions())
    finally:
        for hook in hooks:
            hook.remove()
    layout = counts["layout"]
    assert layout.n_tokens == 1025
    heads = model.module.config.num_attention_heads
    for layer in range(model.num_layers):
        q, k = (projected[layer, name].unflatten(-1, (heads, -1)).transpose(1, 2) for name in ("q_proj", "k_proj"))
        a = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1).numpy()  # (B, heads, T, T)
        assert relative(metrics["mean_attention_distance"][layer], float64_distance(a, layout, False)) < RTOL
        renormalized = metrics["mean_attention_distance_renormalized"][layer]
        assert relative(renormalized, float64_distance(a, layout, True)) < RTOL
        rows = float64_entropy(a)
        assert relative(metrics["entropy_rows"][layer], rows.mean(-1)) < RTOL
        assert relative(metrics["entropy_cls"][layer], rows[..., 0]) < RTOL
