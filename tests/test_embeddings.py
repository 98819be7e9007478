"""Patch filters and position-embedding similarity against float64 references; resize like the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe.analysis.embeddings import filter_components, patch_filters, position_similarity, resize_positions
from vitprobe.models.hf import load_hf


def test_patch_filters_scale_each_filter_to_its_own_range():
    w = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 6).view(5, 1, 1, 1)
    w[2] = 0.7  # constant filter: no contrast
    ours = patch_filters(w)
    assert ours.shape == (5, 4, 4, 3)
    ref = w.double().numpy().transpose(0, 2, 3, 1)
    for d in (0, 1, 3, 4):
        expect = (ref[d] - ref[d].min()) / (ref[d].max() - ref[d].min())
        np.testing.assert_allclose(ours[d].double().numpy(), expect, atol=1e-6)
        assert ours[d].min().item() == 0.0 and ours[d].max().item() == pytest.approx(1.0)
    assert torch.equal(ours[2], torch.zeros(4, 4, 3))
    # channels stay channels: a filter that is only red lights the first channel only
    red = torch.zeros(1, 3, 2, 2)
    red[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    scaled = patch_filters(red)[0]  # (P, P, 3)
    assert torch.allclose(scaled[..., 0], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))
    assert torch.equal(scaled[..., 1:], torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="patch projection"):
        patch_filters(torch.zeros(4, 1, 2, 2))


def test_filter_components_match_numpy_svd():
    w = torch.randn(40, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    comps, ratio = filter_components(w, k=5)
    x = w.double().numpy().reshape(40, -1)
    x = x - x.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(ratio.double().numpy(), (s**2 / (s**2).sum())[:5], rtol=1e-5)
    assert bool((ratio[:-1] >= ratio[1:]).all())
    for i in range(5):
        v = vt[i] * np.sign(vt[i][np.abs(vt[i]).argmax()])
        img = v.reshape(3, 4, 4).transpose(1, 2, 0)
        np.testing.assert_allclose(comps[i].double().numpy(), (img - img.min()) / (img.max() - img.min()), atol=1e-5)


def reference_cosine(grid: np.ndarray) -> np.ndarray:
    h, w, _ = grid.shape
    out = np.zeros((h, w, h, w))
    for r1, c1, r2, c2 in np.ndindex(h, w, h, w):
        a, b = grid[r1, c1].astype(np.float64), grid[r2, c2].astype(np.float64)
        out[r1, c1, r2, c2] = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return out


def test_position_similarity_cosine_and_dot():
    grid = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(2))
    sim = position_similarity(grid)
    assert sim.shape == (3, 4, 3, 4)
    np.testing.assert_allclose(sim.double().numpy(), reference_cosine(grid.numpy()), atol=1e-6)
    assert torch.allclose(sim[1, 2, 1, 2], torch.tensor(1.0))  # each position is most like itself
    matrix = sim.reshape(12, 12)  # seed 003's single matrix view
    assert torch.allclose(matrix, matrix.T, atol=1e-6)
    dot = position_similarity(grid, kind="dot").reshape(12, 12)
    flat = grid.double().numpy().reshape(12, 8)
    np.testing.assert_allclose(dot.double().numpy(), flat @ flat.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown similarity"):
        position_similarity(grid, kind="l2")


def test_position_similarity_is_height_first():
    """Embeddings equal along each row: every (H, W) map is bright on the whole row of its cell."""
    rows = torch.randn(3, 6, generator=torch.Generator().manual_seed(3))
    grid = rows[:, None, :].expand(3, 5, 6)  # (H=3, W=5, D)
    sim = position_similarity(grid)
    assert torch.allclose(sim[1, 0, 1], torch.ones(5))
    assert sim[1, 0, 0].max() < 0.99


@pytest.mark.parametrize("hw", [(48, 40), (24, 24)])
def test_resize_positions_equals_what_the_model_adds(tiny_dirs, hw):
    """A DINOv2 table at its native 4×4 grid, resized to another input's grid, equals the model's own."""
    model = load_hf(str(tiny_dirs["dinov2"]))
    assert model.position_grid.shape[:2] == (4, 4)
    emb = model.module.embeddings
    with torch.no_grad():
        used = emb.interpolate_pos_encoding(torch.zeros(1, 1, 32), *hw)[0, 1:]
    grid_hw = (hw[0] // 8, hw[1] // 8)
    ours = resize_positions(model.position_grid, grid_hw)
    assert ours.shape == (*grid_hw, 32)
    assert torch.allclose(ours.reshape(-1, 32), used, atol=1e-6)
    assert torch.equal(resize_positions(model.position_grid, (4, 4)), model.position_grid.float())
