"""Attention flow against an independent networkx max-flow in float64, exact oracles, and end to end."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from PIL import Image

import vitprobe as vp
from vitprobe.analysis.flow import attention_flow
from vitprobe.layout import TokenLayout


def reference_flow(fused: np.ndarray, cls: int, n_prefix: int) -> np.ndarray:
    """float64 networkx: fused (L, T, T) of one image -> flow of each patch token to (L, cls).

    Nodes (l, i); edge (l-1, j) -> (l, i) with capacity Â_l[i, j], Â = ½A + ½I rows renormalised."""
    n_layers, t, _ = fused.shape
    graph = nx.DiGraph()
    for layer in range(n_layers):
        a = 0.5 * fused[layer].astype(np.float64) + 0.5 * np.eye(t)
        a = a / a.sum(axis=1, keepdims=True)
        for i in range(t):
            for j in range(t):
                if a[i, j] > 0:
                    graph.add_edge((layer, j), (layer + 1, i), capacity=a[i, j])
    return np.array([nx.maximum_flow_value(graph, (0, j), (n_layers, cls)) for j in range(n_prefix, t)])


def random_attention(n_layers: int, batch: int, t: int, seed: int, peak: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_layers, batch, t, t, generator=g, dtype=torch.float64) * peak).softmax(-1)


@pytest.mark.parametrize(("prefix", "grid"), [(("cls",), (2, 3)), (("cls", "reg0", "reg1"), (3, 3))])
def test_flow_equals_networkx_in_float64(prefix, grid):
    layout = TokenLayout(prefix, grid, 16)
    fused = random_attention(3, 2, layout.n_tokens, seed=len(prefix))
    ours = attention_flow(fused, layout)
    assert ours.shape == (2, *grid) and ours.dtype == torch.float64
    for b in range(2):
        ref = reference_flow(fused[:, b].numpy(), 0, len(prefix)).reshape(grid)
        np.testing.assert_allclose(ours[b].numpy(), ref, atol=1e-6, rtol=0)
    assert ours.std() > 1e-3  # not a constant map


def test_flow_oracles_identity_one_layer_and_a_bottleneck():
    layout = TokenLayout(("cls",), (2, 3), 16)
    t = layout.n_tokens
    eye = torch.eye(t, dtype=torch.float64)[None, None].repeat(4, 1, 1, 1)
    assert attention_flow(eye, layout).abs().max() == 0  # no token reads another: nothing reaches CLS
    uniform = torch.full((1, 1, t, t), 1.0 / t, dtype=torch.float64)
    torch.testing.assert_close(attention_flow(uniform, layout), torch.full((1, 2, 3), 0.5 / t, dtype=torch.float64),
                               atol=2e-9, rtol=0)  # one layer: the flow is the single edge Â[cls, j] = ½/T
    # two layers, the top CLS row reads only token 1 (the first patch): Â₂[cls] = ½e₁ + ½e_cls, so the flow
    # of patch j runs on two edge-disjoint paths, through (1, 1) and through (1, cls):
    # flow_j = min(Â₁[1, j], ½) + min(Â₁[cls, j], ½)
    fused = random_attention(2, 1, t, seed=4)
    fused[1, 0, 0] = 0.0
    fused[1, 0, 0, 1] = 1.0
    first = 0.5 * fused[0, 0] + 0.5 * torch.eye(t, dtype=torch.float64)
    expected = first[1, 1:].clamp(max=0.5) + first[0, 1:].clamp(max=0.5)
    torch.testing.assert_close(attention_flow(fused, layout)[0].flatten(), expected, atol=1e-8, rtol=0)


def test_flow_follows_a_permutation_of_the_patch_tokens():
    g = torch.Generator().manual_seed(2)
    layers = [(torch.randn(1, 2, 7, 7, generator=g) * 2).softmax(-1) for _ in range(3)]
    perm = torch.randperm(6, generator=g)
    order = torch.cat([torch.tensor([0]), 1 + perm])
    permuted = [a[:, :, order][:, :, :, order] for a in layers]
    a, b = (vp.attribute(vp.from_attentions(x, grid_hw=(2, 3)), method="flow").maps[0].flatten()
            for x in (layers, permuted))
    torch.testing.assert_close(b, a[perm], atol=1e-6, rtol=0)


def test_flow_method_on_a_model_equals_networkx_of_its_attention(tiny_dirs):
    model = vp.load(str(tiny_dirs["dinov2_with_registers"]))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    pixels, _, _ = model.prepare(image, (28, 28))
    with torch.no_grad():
        model.module.set_attn_implementation("eager")
        attentions = model.module(pixel_values=pixels, output_attentions=True).attentions
        model.module.set_attn_implementation("sdpa")
    fused = np.stack([a[0].double().numpy() for a in attentions])  # (L, heads, T, T)
    for head_fusion, start in (("mean", 0), ("max", 1)):
        res = vp.attribute(model, image, method="flow", size=(28, 28), head_fusion=head_fusion, start_layer=start)
        heads = fused.mean(1) if head_fusion == "mean" else fused.max(1)
        ref = reference_flow(heads[start:], 0, res.layout.n_prefix).reshape(res.layout.grid_hw)
        np.testing.assert_allclose(res.maps[0].double().numpy(), ref, atol=1e-5, rtol=0)
        assert res.params == {"head_fusion": head_fusion, "start_layer": start}
    assert res.layout.n_prefix == 5 and "layers 1..2" in res.title
