"""Entropy and spread levels against float64 references, oracles, and accumulator merging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitprobe.analysis.accumulate import Moments
from vitprobe.analysis.entropy import (
    RowEntropy,
    SpreadLevels,
    cls_entropy,
    entropy,
    level_edges,
    map_entropy,
    rows_entropy,
    spread_levels,
)
from vitprobe.models.hf import load_hf


def reference_entropy(p: np.ndarray) -> np.ndarray:
    """float64: −Σ p·ln p over the last axis, terms with p = 0 left out."""
    p = p.astype(np.float64)
    out = np.zeros(p.shape[:-1])
    for idx in np.ndindex(*p.shape[:-1]):
        row = p[idx]
        nz = row[row > 0]
        out[idx] = -np.sum(nz * np.log(nz))
    return out


def random_attention(*lead: int, t: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*lead, t, t, generator=g) * 3).softmax(-1)


def test_entropy_oracles_and_reference():
    t = 197
    assert entropy(torch.full((t,), 1.0 / t)).item() == pytest.approx(math.log(t), rel=1e-6)
    assert entropy(torch.nn.functional.one_hot(torch.tensor(5), t).float()).item() == 0.0
    attn = random_attention(2, 3, t=11, seed=0)
    attn[0, 0, 0] = torch.tensor([0.5, 0.5] + [0.0] * 9)  # zeros: 0·log 0 = 0, never NaN
    ours = entropy(attn)
    np.testing.assert_allclose(ours.double().numpy(), reference_entropy(attn.numpy()), rtol=1e-5, atol=1e-6)
    assert ours[0, 0, 0].item() == pytest.approx(math.log(2))
    assert bool((ours >= 0).all() and (ours <= math.log(11) + 1e-5).all())


def test_cls_and_rows_entropy_over_all_tokens():
    attn = random_attention(2, 4, t=14, seed=1)  # (B, heads, T, T)
    ref = reference_entropy(attn.numpy())  # (B, heads, T)
    np.testing.assert_allclose(rows_entropy(attn).double().numpy(), ref.mean(-1), rtol=1e-5)
    cls_rows = attn[:, :, 0].unsqueeze(0)  # (L=1, B, heads, T)
    np.testing.assert_allclose(cls_entropy(cls_rows)[0].double().numpy(), ref[..., 0], rtol=1e-5)


def test_entropy_is_invariant_to_key_and_query_order():
    attn = random_attention(1, 2, t=10, seed=2)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(entropy(attn[..., perm]), entropy(attn), atol=1e-6)  # keys
    assert torch.allclose(rows_entropy(attn[:, :, perm][..., perm]), rows_entropy(attn), atol=1e-6)


def test_map_entropy_renormalises_over_the_grid():
    maps = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(4))
    ref = reference_entropy((maps / maps.sum((-1, -2), keepdim=True)).flatten(-2).numpy())
    np.testing.assert_allclose(map_entropy(maps).double().numpy(), ref, rtol=1e-5)
    assert torch.allclose(map_entropy(maps * 0.01), map_entropy(maps), atol=1e-6)  # scale-free
    assert map_entropy(torch.ones(4, 5)).item() == pytest.approx(math.log(20), rel=1e-6)


def test_spread_levels_are_quartiles():
    values = torch.randperm(20, generator=torch.Generator().manual_seed(5)).double()
    levels, edges = spread_levels(values)
    np.testing.assert_allclose(edges.numpy(), np.quantile(values.numpy(), [0.25, 0.5, 0.75]))
    assert torch.equal(torch.bincount(levels), torch.tensor([0, 5, 5, 5, 5]))
    assert torch.equal(levels[values.argsort()], torch.arange(20) // 5 + 1)  # level 1 = lowest entropy
    assert level_edges(torch.tensor([1.0, 2.0, 3.0]), n_levels=2).tolist() == [2.0]


def test_spread_accumulator_merged_from_shards_equals_whole():
    g = torch.Generator().manual_seed(6)
    index = torch.randperm(37, generator=g)
    value = torch.rand(37, generator=g, dtype=torch.float64)
    whole = SpreadLevels()
    whole.update(index, value)
    shards = [SpreadLevels() for _ in range(3)]
    for k, shard in enumerate(shards):
        shard.update(index[k::3], value[k::3])
    merged = SpreadLevels()
    for shard in reversed(shards):
        merged.merge(shard.state_dict())
    a, b = whole.compute(), merged.compute()
    for key in ("index", "value", "level", "edges"):
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(a["index"], torch.arange(37))


def test_moments_merge_and_reference():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(50, 3, 2, generator=g, dtype=torch.float64) * 5 + 100
    whole, parts = Moments((3, 2)), [Moments((3, 2)) for _ in range(4)]
    whole.update(x)
    for k, part in enumerate(parts):
        part.update(x[k::4])
    merged = Moments((3, 2))
    for part in parts:
        merged.merge(part)
    for stats in (whole.compute(), merged.compute()):
        np.testing.assert_allclose(stats["mean"].numpy(), x.numpy().mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats["std"].numpy(), x.numpy().std(0), rtol=1e-8)
        assert stats["count"].item() == 50
    with pytest.raises(ValueError, match="do not match"):
        whole.update(torch.zeros(2, 3))
    assert torch.isnan(Moments((2,)).compute()["mean"]).all()


def test_streamed_row_entropy_in_capture_gives_cls_and_rows_entropy(tiny_dirs):
    """analysis.entropy.RowEntropy (block by block, used by dataset runs): its mean over rows is
    rows_entropy and its CLS entry cls_entropy."""
    model = load_hf(str(tiny_dirs["deit"]))
    pixels = torch.randn(2, 3, 32, 32)
    cap = model.capture_pixels(pixels, fuse=(), full_layers=[0, 2], reducers={"e": RowEntropy()})
    for layer in (0, 2):
        ref = reference_entropy(cap.full[layer].numpy()).mean(-1)
        np.testing.assert_allclose(cap.reduced["e"][layer].mean(-1).double().numpy(), ref, rtol=1e-5)
        assert torch.allclose(cap.reduced["e"][layer].mean(-1), rows_entropy(cap.full[layer]), rtol=1e-5)
    assert torch.allclose(cap.reduced["e"][..., 0], cls_entropy(cap.cls), atol=1e-5)
    np.testing.assert_allclose(cls_entropy(cap.cls).double().numpy(),
                               reference_entropy(cap.cls.numpy()), rtol=1e-5, atol=1e-6)
