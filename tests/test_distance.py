"""Mean attention distance against a float64 reference written from the formula, and exact oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitprobe.analysis.distance import (
    MeanDistance,
    distance_bound,
    mean_attention_distance,
    patch_distances,
    uniform_distance,
)
from vitprobe.layout import TokenLayout
from vitprobe.models.hf import load_hf

VIT_B16 = TokenLayout(("cls",), (14, 14), 16)


def reference_distance(attn: np.ndarray, n_prefix: int, grid_hw: tuple[int, int], patch: int,
                       renormalize: bool) -> np.ndarray:
    """float64 loops: for each patch query q, Σ_k A[q, k]·‖pos(q) − pos(k)‖ over patch keys k
    (optionally divided by Σ_k A[q, k] over patch keys), averaged over q. attn: (B, heads, T, T)."""
    b_, h_, t, _ = attn.shape
    w = grid_hw[1]
    pos = [(patch * (i // w), patch * (i % w)) for i in range(t - n_prefix)]
    out = np.zeros((b_, h_))
    for b in range(b_):
        for h in range(h_):
            total = 0.0
            for q in range(n_prefix, t):
                row = 0.0
                mass = 0.0
                for k in range(n_prefix, t):
                    a = float(attn[b, h, q, k])
                    dy = pos[q - n_prefix][0] - pos[k - n_prefix][0]
                    dx = pos[q - n_prefix][1] - pos[k - n_prefix][1]
                    row += a * math.sqrt(dy * dy + dx * dx)
                    mass += a
                total += row / mass if renormalize else row
            out[b, h] = total / (t - n_prefix)
    return out


def random_attention(b: int, h: int, t: int, seed: int, peak: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, t, t, generator=g) * peak).softmax(-1)


@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize(("prefix", "grid"), [(("cls",), (3, 4)), (("cls", "reg0", "reg1"), (4, 2)), ((), (3, 3))])
def test_matches_float64_reference(renormalize, prefix, grid):
    layout = TokenLayout(prefix, grid, 14)
    attn = random_attention(2, 3, layout.n_tokens, seed=len(prefix) + grid[0])
    ours = mean_attention_distance(attn, layout, renormalize=renormalize)
    ref = reference_distance(attn.double().numpy(), layout.n_prefix, grid, 14, renormalize)
    assert ours.shape == (2, 3) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.double().numpy(), ref, rtol=2e-6)


@pytest.mark.parametrize("renormalize", [False, True])
def test_identity_attention_is_zero(renormalize):
    t = VIT_B16.n_tokens
    eye = torch.eye(t).expand(2, 3, t, t)
    assert torch.equal(mean_attention_distance(eye, VIT_B16, renormalize), torch.zeros(2, 3))


def test_uniform_on_14x14_with_16px_patches_is_116_49px():
    t, n = VIT_B16.n_tokens, VIT_B16.n_patches
    uniform_patches = torch.zeros(1, 2, t, t)
    uniform_patches[..., 1:] = 1.0 / n  # every row spreads evenly over the 196 patches
    for renormalize in (False, True):
        value = mean_attention_distance(uniform_patches, VIT_B16, renormalize)
        assert torch.allclose(value, torch.full((1, 2), 116.49), atol=5e-3)
    assert uniform_distance(VIT_B16) == pytest.approx(116.49, abs=5e-3)
    # uniform over all 197 tokens: 1/197 on CLS counts as distance 0 unless rows are renormalised
    uniform_all = torch.full((1, 1, t, t), 1.0 / t)
    plain = mean_attention_distance(uniform_all, VIT_B16, renormalize=False).item()
    renorm = mean_attention_distance(uniform_all, VIT_B16, renormalize=True).item()
    assert plain == pytest.approx(116.4906 * n / t, abs=5e-3)
    assert renorm == pytest.approx(116.4906, abs=5e-3)


def test_bound_is_respected_and_reached_by_corner_queries():
    assert distance_bound(VIT_B16) == pytest.approx(294.16, abs=5e-3)
    t = VIT_B16.n_tokens
    # every query attends to the patch farthest from it: the largest value any attention can reach
    d = patch_distances(VIT_B16)[1:, 1:]
    far = torch.zeros(1, 1, t, t)
    far[0, 0, 1:, 1:] = torch.nn.functional.one_hot(d.argmax(-1), VIT_B16.n_patches).float()
    worst = mean_attention_distance(far, VIT_B16).item()
    assert worst == pytest.approx(d.max(-1).values.mean().item(), rel=1e-6)
    assert 116.49 < worst < distance_bound(VIT_B16)
    # the bound itself is reached by a 1×2 grid whose two patches attend to each other
    pair = TokenLayout(("cls",), (1, 2), 16)
    swap = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]]).expand(1, 1, 3, 3)
    assert mean_attention_distance(swap, pair).item() == pytest.approx(distance_bound(pair))
    for seed in range(3):
        values = mean_attention_distance(random_attention(2, 4, t, seed, peak=8.0), VIT_B16)
        assert bool((values >= 0).all() and (values <= distance_bound(VIT_B16)).all())


def test_prefix_mass_counts_as_zero_unless_renormalised():
    layout = TokenLayout(("cls",), (1, 2), 16)
    attn = torch.tensor([[1.0, 0, 0], [0.5, 0, 0.5], [0.5, 0.5, 0]]).expand(1, 1, 3, 3)
    assert mean_attention_distance(attn, layout).item() == pytest.approx(8.0)
    assert mean_attention_distance(attn, layout, renormalize=True).item() == pytest.approx(16.0)


def test_grid_symmetries_and_prefix_order_leave_distance_unchanged():
    """A flip or transpose of the patch grid permutes tokens but preserves all distances; swapping
    prefix tokens changes nothing either."""
    layout = TokenLayout(("cls", "reg0"), (4, 4), 14)
    attn = random_attention(2, 3, layout.n_tokens, seed=7)
    base = mean_attention_distance(attn, layout)
    grid = torch.arange(16).view(4, 4)
    for perm_grid in (grid.flip(1), grid.flip(0), grid.T):
        perm = torch.cat([torch.tensor([1, 0]), perm_grid.flatten() + 2])
        permuted = attn[:, :, perm][:, :, :, perm]
        assert torch.allclose(mean_attention_distance(permuted, layout), base, rtol=1e-5)
    # a non-symmetric permutation of the patches changes the value: the test can fail
    shuffled = torch.cat([torch.tensor([0, 1]), torch.randperm(16, generator=torch.Generator().manual_seed(0)) + 2])
    assert not torch.allclose(mean_attention_distance(attn[:, :, shuffled][:, :, :, shuffled], layout), base, rtol=1e-3)


def test_rectangular_grid_is_height_first():
    """Patch i sits at row i // W: on a 2×5 grid the first two tokens' neighbours differ by height."""
    layout = TokenLayout(("cls",), (2, 5), 10)
    t = layout.n_tokens
    down = torch.zeros(1, 1, t, t)
    down[0, 0, 0, 0] = 1.0
    for i in range(10):  # each patch attends to the patch in the other row, same column
        down[0, 0, 1 + i, 1 + (i + 5) % 10] = 1.0
    assert mean_attention_distance(down, layout).item() == pytest.approx(10.0)


def test_streamed_reducer_in_capture_equals_definition_on_full_attention(tiny_dirs):
    """analysis.distance.MeanDistance (block by block, used by dataset runs) against this definition."""
    model = load_hf(str(tiny_dirs["dinov2_with_registers"]))
    pixels = torch.randn(2, 3, 32, 48)
    reducers = {"d": MeanDistance(), "dr": MeanDistance(renormalize=True)}
    cap = model.capture_pixels(pixels, fuse=(), full_layers=[0, 1, 2], reducers=reducers)
    assert cap.reduced["d"].shape == (3, 2, 4)
    for layer in range(3):
        expect = mean_attention_distance(cap.full[layer], cap.layout)
        assert torch.allclose(cap.reduced["d"][layer], expect, rtol=1e-5)
        expect = mean_attention_distance(cap.full[layer], cap.layout, renormalize=True)
        assert torch.allclose(cap.reduced["dr"][layer], expect, rtol=1e-5)
    assert bool((cap.reduced["dr"] >= cap.reduced["d"]).all())  # registers take mass: renormalising raises it
