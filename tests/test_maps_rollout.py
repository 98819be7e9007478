"""Maps and rollout against float64 references written from the formulas, plus exact oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe.analysis.maps import aggregate_layers, cls_maps, fuse_heads, query_map, to_grid
from vitprobe.analysis.rollout import add_residual, discard_lowest, rollout, rollout_rows, rollout_rows_by_depth
from vitprobe.analysis.upsample import upsample_map
from vitprobe.layout import TokenLayout

LAYOUT = TokenLayout(("cls", "reg0"), (3, 4), 16)  # T = 2 + 12 = 14


def random_attention(*lead: int, t: int = LAYOUT.n_tokens, seed: int = 0, peak: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*lead, t, t, generator=g) * peak).softmax(-1)


def reference_rollout(fused: np.ndarray, cls: int, discard_ratio: float) -> np.ndarray:
    """float64: per layer drop the lowest entries outside the CLS column, Â = ½A + ½I, rows
    renormalised, joint = Â_L ⋯ Â_1; returns joint[cls] for each image. fused: (L, B, T, T)."""
    n_layers, batch, t, _ = fused.shape
    out = np.zeros((batch, t))
    for b in range(batch):
        joint = np.eye(t)
        for layer in range(n_layers):
            a = fused[layer, b].astype(np.float64).copy()
            if discard_ratio > 0:
                mask = np.ones_like(a, dtype=bool)
                mask[:, cls] = False
                values = np.sort(a[mask])
                threshold = values[int(discard_ratio * mask.sum()) - 1]
                a[mask & (a <= threshold)] = 0.0
            a = 0.5 * a + 0.5 * np.eye(t)
            a = a / a.sum(axis=1, keepdims=True)
            joint = a @ joint
        out[b] = joint[cls]
    return out


@pytest.mark.parametrize("discard_ratio", [0.0, 0.5, 0.9])
def test_rollout_matches_float64_reference(discard_ratio):
    fused = random_attention(5, 2, seed=3)
    ours = rollout_rows(fused, LAYOUT, discard_ratio).double().numpy()
    ref = reference_rollout(fused.numpy(), LAYOUT.cls_index, discard_ratio)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    np.testing.assert_allclose(ours.sum(-1), 1.0, atol=1e-5)
    grid = rollout(fused, LAYOUT, discard_ratio)
    assert grid.shape == (2, 3, 4)
    assert torch.allclose(grid.flatten(1), torch.from_numpy(ours[:, 2:]).float(), atol=1e-6)


@pytest.mark.parametrize("discard_ratio", [0.0, 0.5])
def test_rollout_of_every_depth_matches_float64_reference(discard_ratio):
    fused = random_attention(5, 2, seed=4)
    ours = rollout_rows_by_depth(fused, LAYOUT, discard_ratio)
    assert ours.shape == (5, 2, LAYOUT.n_tokens)
    for depth in range(5):
        ref = reference_rollout(fused[: depth + 1].numpy(), LAYOUT.cls_index, discard_ratio)
        np.testing.assert_allclose(ours[depth].double().numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(ours.double().sum(-1).numpy(), 1.0, atol=1e-5)
    assert not torch.allclose(ours[0], ours[-1], atol=1e-3)  # the depths differ: each was rolled out on its own


def test_rollout_renormalises_rows_not_columns():
    """vit-explain divides by sum(dim=-1) without keepdim (columns); at discard 0.9 that is off."""
    fused = random_attention(4, 1, seed=5)
    ours = rollout_rows(fused, LAYOUT, 0.9)[0].double().numpy()
    t = LAYOUT.n_tokens
    wrong = np.eye(t)
    for layer in range(4):
        a = discard_lowest(fused[layer, 0], 0.9, 0).double().numpy()
        a = 0.5 * a + 0.5 * np.eye(t)
        a = a / a.sum(axis=-1)  # broadcasts over columns: the peer's bug
        wrong = a @ wrong
    assert np.abs(ours - wrong[0]).max() > 1e-3
    assert abs(ours.sum() - 1.0) < 1e-5


def test_rollout_identity_and_uniform_oracles():
    t = LAYOUT.n_tokens
    eye = torch.eye(t).expand(3, 1, t, t)
    assert torch.equal(rollout_rows(eye, LAYOUT)[0], torch.eye(t)[0])  # residual only: stays on CLS
    uniform = torch.full((2, 1, t, t), 1.0 / t)
    row = rollout_rows(uniform, LAYOUT)[0].double()
    # one layer: ½e + ½u ; two layers: ¼e + ¾u (u is a fixed point of Â)
    expect = 0.25 * torch.eye(t, dtype=torch.float64)[0] + 0.75 / t
    assert torch.allclose(row, expect, atol=1e-6)


def test_rollout_is_equivariant_to_patch_permutation():
    fused = random_attention(3, 2, seed=7)
    n_prefix = LAYOUT.n_prefix
    perm = torch.cat([torch.arange(n_prefix), n_prefix + torch.randperm(LAYOUT.n_patches)])
    permuted = fused[..., perm, :][..., :, perm]
    base = rollout_rows(fused, LAYOUT, 0.5)
    moved = rollout_rows(permuted, LAYOUT, 0.5)
    assert torch.allclose(moved, base[:, perm], atol=1e-6)


def test_discard_keeps_cls_column_and_drops_the_fraction():
    a = random_attention(1, seed=9)[0]
    t = a.shape[-1]
    dropped = discard_lowest(a, 0.5, keep_column=0)
    assert torch.equal(dropped[:, 0], a[:, 0])
    n_zero = int((dropped[:, 1:] == 0).sum())
    assert n_zero == int(0.5 * (t * t - t))
    assert torch.all(dropped[:, 1:][dropped[:, 1:] > 0] >= a[:, 1:][dropped[:, 1:] == 0].max())
    with pytest.raises(ValueError):
        discard_lowest(a, 1.0, 0)


def test_add_residual_rows_sum_to_one_even_for_max_fusion():
    heads = random_attention(2, 6, seed=1)
    maxed = fuse_heads(heads, "max", dim=1)
    sums = maxed.sum(-1)
    assert sums.min() > 1.0  # a max-fused map is not a distribution
    assert torch.allclose(add_residual(maxed).sum(-1), torch.ones(()), atol=1e-6)


def test_head_fusion_and_layer_aggregation():
    attn = random_attention(2, 6, seed=2)  # (B, heads, T, T)
    mean = fuse_heads(attn, "mean", dim=1)
    assert torch.allclose(mean.sum(-1), torch.ones(()), atol=1e-6)
    assert torch.all(fuse_heads(attn, "max", dim=1) >= mean) and torch.all(fuse_heads(attn, "min", dim=1) <= mean)
    stack = torch.rand(5, 2, 3, 4).double()  # (L, B, H, W)
    np.testing.assert_allclose(aggregate_layers(stack, "mean", dim=0).numpy(), stack.numpy().mean(0))
    np.testing.assert_allclose(aggregate_layers(stack, "min", dim=0).numpy(), stack.numpy().min(0))
    batch_first = stack.transpose(0, 1)  # (B, L, H, W), as every detail holds layers
    np.testing.assert_allclose(aggregate_layers(batch_first, "max", dim=1).numpy(), stack.numpy().max(0))
    with pytest.raises(TypeError, match=r"dim=1 for batch-first maps \(B, L, ...\)"):
        aggregate_layers(stack, "mean")  # an old layers-first call fails, never averages the batch
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse_heads(attn, "median")


def test_grids_index_patches_row_major():
    rows = torch.arange(2 * LAYOUT.n_tokens, dtype=torch.float32).reshape(1, 2, LAYOUT.n_tokens)
    grid = cls_maps(rows, LAYOUT)
    assert grid.shape == (1, 2, 3, 4)
    assert grid[0, 1, 2, 1] == rows[0, 1, LAYOUT.n_prefix + 2 * 4 + 1]
    attn = random_attention(1, 2, seed=4)
    q = query_map(attn, LAYOUT, 1, 3)
    assert torch.equal(q[0, 0], attn[0, 0, LAYOUT.patch_index(1, 3), 2:].reshape(3, 4))
    with pytest.raises(ValueError):
        to_grid(torch.zeros(5), LAYOUT)
    with pytest.raises(IndexError):
        LAYOUT.patch_index(3, 0)


def test_upsampling_aligns_patches_to_pixels():
    grid = torch.zeros(3, 4)
    grid[2, 1] = 1.0
    near = upsample_map(grid, (48, 64), "nearest")
    assert torch.equal(near[32:48, 16:32], torch.ones(16, 16)) and near.sum() == 256
    bil = upsample_map(grid, (48, 64))
    peak = divmod(int(bil.argmax()), 64)
    assert 32 <= peak[0] < 48 and 16 <= peak[1] < 32
    assert torch.allclose(upsample_map(torch.full((3, 4), 0.3), (30, 40)), torch.full((30, 40), 0.3))
