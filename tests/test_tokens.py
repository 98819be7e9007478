"""Artifact tokens: planted outliers, isolated peaks against a float64 reference, registers never counted."""

from __future__ import annotations

import math

import numpy as np
import torch

from vitprobe.analysis.tokens import (
    ArtifactCounts,
    artifact_counts,
    artifact_mask,
    fill_masked,
    isolated_peaks,
    max_over_median,
    norm_outliers,
    patch_norms,
    second_brightest_neighbour,
)
from vitprobe.layout import TokenLayout
from vitprobe.models.hf import load_hf

REGISTERS = TokenLayout(("cls", "reg0", "reg1", "reg2", "reg3"), (4, 5), 14)
PLAIN = TokenLayout(("cls",), (4, 5), 14)


def planted_norms(layout: TokenLayout, artifacts: list[int], seed: int = 0, prefix_norm: float = 1.0) -> torch.Tensor:
    """(T,) norms near 10 with ±10% noise, 10× on the patch indices ``artifacts``; prefix tokens at ``prefix_norm``."""
    g = torch.Generator().manual_seed(seed)
    norms = 10 + torch.rand(layout.n_tokens, generator=g) * 2 - 1
    norms[: layout.n_prefix] = prefix_norm
    for i in artifacts:
        norms[layout.n_prefix + i] = 100.0
    return norms


def reference_second_brightest(grid: np.ndarray) -> np.ndarray:
    h, w = grid.shape
    out = np.zeros((h, w))
    for r, c in np.ndindex(h, w):
        vals = [grid[r + dr, c + dc] for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                if (dr or dc) and 0 <= r + dr < h and 0 <= c + dc < w]
        out[r, c] = np.sort(np.asarray(vals, dtype=np.float64))[-2]
    return out


def test_planted_outliers_are_found_and_prefix_tokens_never_count():
    for layout in (PLAIN, REGISTERS):
        norms = planted_norms(layout, [3, 17], prefix_norm=500.0)  # registers often carry huge norms
        patches = patch_norms(norms, layout)
        assert patches.shape == (20,)
        assert norm_outliers(patches).nonzero().flatten().tolist() == [3, 17]
        assert math.isclose(max_over_median(patches).item(), 100.0 / np.median(patches.double().numpy()), rel_tol=1e-12)
    clean = patch_norms(planted_norms(REGISTERS, [], prefix_norm=500.0), REGISTERS)
    assert not norm_outliers(clean).any()  # ±10% spread is no outlier
    assert not norm_outliers(planted_norms(PLAIN, [3])[1:], ratio=20.0).any()  # the threshold is the ratio


def test_neighbours_and_isolated_peaks_match_reference():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(2, 3, 4, 5, generator=g)
    ours = second_brightest_neighbour(maps)
    for idx in np.ndindex(2, 3):
        np.testing.assert_array_equal(ours[idx].numpy(), reference_second_brightest(maps[idx].double().numpy()))
    spike = torch.full((4, 5), 0.01)
    spike[1, 3] = 0.5  # one bright isolated patch
    spike[3, 0] = 0.02  # brighter than its neighbours, but only 2×
    peaks = isolated_peaks(spike)
    assert peaks.nonzero().tolist() == [[1, 3]]
    assert isolated_peaks(spike, ratio=1.5).nonzero().tolist() == [[1, 3], [3, 0]]
    blob = torch.full((4, 5), 0.01)
    blob[1:3, 1:4] = 0.3  # a bright object region: no isolated peak in it
    assert not isolated_peaks(blob).any()
    pair = torch.full((4, 5), 0.01)
    pair[2, 1:3] = 0.4  # two adjacent artifact patches both count
    assert isolated_peaks(pair).nonzero().tolist() == [[2, 1], [2, 2]]


def test_artifact_counts_pair_outliers_with_cls_peaks():
    n_layers, batch = 2, 3
    norms = torch.stack([torch.stack([planted_norms(REGISTERS, a, seed=b) for b, a in enumerate(arts)])
                         for arts in ([[0], [], [7, 12]], [[5], [5], []])])  # (L, B, T)
    maps = torch.full((n_layers, batch, 4, 5), 0.01)
    maps[0, 0].view(-1)[0] = 0.4  # layer 0 image 0: the outlier is a CLS peak
    maps[0, 2].view(-1)[12] = 0.4  # layer 0 image 2: one of the two outliers is
    maps[1, 1].view(-1)[9] = 0.4  # layer 1 image 1: a peak elsewhere
    counts = artifact_counts(norms, REGISTERS, maps)
    assert counts["outliers"].tolist() == [[1, 0, 2], [1, 1, 0]]
    assert counts["peaks"].tolist() == [[1, 0, 1], [0, 1, 0]]
    assert counts["outlier_peaks"].tolist() == [[1, 0, 1], [0, 0, 0]]
    acc = ArtifactCounts(n_layers)
    acc.update(counts, REGISTERS.n_patches)
    stats = acc.compute()
    assert torch.allclose(stats["outlier_share"], torch.tensor([3 / 60, 2 / 60], dtype=torch.float64))
    assert torch.allclose(stats["images_with_outliers"], torch.tensor([2 / 3, 2 / 3], dtype=torch.float64))
    assert torch.allclose(stats["outliers_in_peaks"], torch.tensor([2 / 3, 0.0], dtype=torch.float64))
    # merged from one-image shards: the same totals
    merged = ArtifactCounts(n_layers)
    for b in range(batch):
        part = ArtifactCounts(n_layers)
        part.update({k: v[:, b : b + 1] for k, v in counts.items()}, REGISTERS.n_patches)
        merged.merge(part)
    for key, value in merged.compute().items():
        assert torch.equal(value, stats[key]), key
    none = ArtifactCounts(1)
    none.update(artifact_counts(norms[:1, 1:2], REGISTERS, maps[:1, 1:2]), REGISTERS.n_patches)
    assert torch.isnan(none.compute()["outliers_in_peaks"]).all()  # no outlier: undefined, not 0


def test_with_and_without_registers_count_the_same_patches(tiny_dirs):
    """Token norms of real (tiny) models: shares are over the H·W patches whatever the prefix."""
    pixels = torch.randn(2, 3, 32, 40)
    for kind, prefix in (("dinov2", 1), ("dinov2_with_registers", 5)):
        model = load_hf(str(tiny_dirs[kind]))
        cap = model.capture_pixels(pixels, fuse=(), full_layers=(), token_norms=True)
        assert cap.token_norms.shape == (3, 2, prefix + 20)
        counts = artifact_counts(cap.token_norms, cap.layout, cap.cls.mean(2)[..., prefix:].reshape(3, 2, 4, 5))
        assert counts["outliers"].shape == (3, 2)
        direct = norm_outliers(cap.token_norms[..., prefix:]).sum(-1)
        assert torch.equal(counts["outliers"], direct)


def test_fill_masked_takes_the_median_of_unmasked_neighbours():
    maps = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    maps[0, 1, 1] = 100.0
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1, 1] = True
    mask[0, 0, 0] = True
    filled = fill_masked(maps, mask)
    assert filled[0, 1, 1].item() == 6.0  # median of 1, 2, 4, 6, 8, 9, 10 (the corner is masked too)
    assert filled[0, 0, 0].item() == 1.0  # of 1 and 4 the lower median; (1, 1) is masked
    assert torch.equal(filled[~mask], maps[~mask])
    lone = fill_masked(torch.ones(1, 1, 1) * 7, torch.ones(1, 1, 1, dtype=torch.bool))
    assert lone.item() == 7.0  # nothing unmasked anywhere: the map's own median


def test_artifact_mask_joins_isolated_peaks_and_outlier_norms():
    maps = torch.full((1, 5, 5), 1.0)
    maps[0, 2, 2] = 10.0  # an isolated peak
    norms = torch.ones(1, 5, 5)
    norms[0, 0, 4] = 9.0  # an outlier token whose map value is ordinary
    mask = artifact_mask(maps, norms)
    assert mask.nonzero().tolist() == [[0, 0, 4], [0, 2, 2]]
    assert artifact_mask(maps).nonzero().tolist() == [[0, 2, 2]]


def test_methods_mask_artifacts_and_keep_the_raw_map(tiny_dirs):
    import vitprobe as vp

    model = vp.load(str(tiny_dirs["vit"]))
    image = np.random.default_rng(4).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for method in ("cls", "layers", "rollout"):
        raw = vp.attribute(model, image, method=method)
        res = vp.attribute(model, image, method=method, artifacts="mask")
        torch.testing.assert_close(res.detail["raw"], raw.maps)
        mask = res.detail["artifacts"].bool()
        assert mask.any() == ("masked" in res.title and not res.title.endswith(" 0 artifact patches masked"))
        torch.testing.assert_close(res.maps, fill_masked(raw.maps, mask))
        assert [label for label, _ in res.panels[:2]] == ["artifacts masked", "raw (artifacts kept)"]
