"""Attention flow against an independent networkx max-flow in float64, exact oracles, and end to end."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow

import vitprobe as vp
from vitprobe.analysis import flow
from vitprobe.analysis.flow import FlowGraph, attention_flow, capacities
from vitprobe.layout import TokenLayout
from vitprobe.methods.flow import SLOW_S, SlowHint


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


def full_graph_flows(fused: np.ndarray, sink: int, n_prefix: int) -> np.ndarray:
    """The whole layered graph in scipy, one max-flow per patch (the approach before the subgraphs):
    fused (L, T, T) of one image -> each patch token's integer flow to (L, sink)."""
    cap = capacities(torch.from_numpy(fused))
    n_layers, t, _ = cap.shape
    layer, i, j = np.nonzero(cap)  # edge (layer, j) -> (layer + 1, i)
    n = (n_layers + 1) * t
    graph = csr_matrix((cap[layer, i, j], (layer * t + j, (layer + 1) * t + i)), shape=(n, n))
    sink_node = n_layers * t + sink
    return np.array([maximum_flow(graph, j, sink_node, method="dinic").flow_value for j in range(n_prefix, t)])


@pytest.mark.parametrize(("prefix", "grid", "n_layers", "peak"),
                         [(("cls",), (2, 3), 3, 2.0), (("cls", "reg0", "reg1"), (3, 3), 3, 2.0),
                          (("cls",), (4, 4), 4, 4.0)])  # the last needs edges added to the subgraphs
def test_flow_equals_networkx_in_float64(prefix, grid, n_layers, peak):
    layout = TokenLayout(prefix, grid, 16)
    fused = random_attention(n_layers, 2, layout.n_tokens, seed=len(prefix), peak=peak)
    ours = attention_flow(fused, layout)
    assert ours.shape == (2, *grid) and ours.dtype == torch.float64
    for b in range(2):
        ref = reference_flow(fused[:, b].numpy(), 0, len(prefix)).reshape(grid)
        np.testing.assert_allclose(ours[b].numpy(), ref, atol=1e-6, rtol=0)
    assert ours.std() > 1e-3  # not a constant map


def test_subgraph_flows_equal_the_full_graph_and_both_certificates_are_used(monkeypatch):
    solves = []
    monkeypatch.setattr(flow, "maximum_flow", lambda *a, **k: solves.append(1) or maximum_flow(*a, **k))
    added = below = 0
    cases = [(10, 4, 8.0, 0), (17, 3, 2.0, 1), (17, 6, 8.0, 2), (26, 4, 4.0, 3), (26, 2, 4.0, 4)]  # (T, L, peak, seed)
    for t, n_layers, peak, seed in cases:
        fused = random_attention(n_layers, 1, t, seed=seed, peak=peak)[:, 0]
        graph = FlowGraph(capacities(fused), 0)
        for j in range(1, t):
            solves.clear()
            value = graph.max_flow(j)
            added += len(solves) > 1  # the subgraph's cut was crossed by full-graph edges: they were added
            upper = min(graph.capacity[0, :, j].sum(dtype=np.int64), graph.sink_in)
            below += value < upper  # exact by the subgraph's minimum cut, not by the two simple cuts
        ours = np.array([graph.max_flow(j) for j in range(1, t)])
        np.testing.assert_array_equal(ours, full_graph_flows(fused.numpy(), 0, 1))
    assert added > 10 and below > 10


def test_flow_sink_need_not_be_token_zero():
    layout = TokenLayout(("reg0", "cls"), (2, 3), 16)
    fused = random_attention(4, 1, layout.n_tokens, seed=6, peak=4.0)
    ours = attention_flow(fused, layout)[0].flatten().numpy()
    np.testing.assert_array_equal(ours * flow.SCALE, full_graph_flows(fused[:, 0].numpy(), 1, 2))
    np.testing.assert_allclose(ours, reference_flow(fused[:, 0].numpy(), 1, 2), atol=1e-6, rtol=0)


def test_slow_hint_writes_one_line_once_the_estimate_passes_the_limit():
    def run(total: int, per_flow: float) -> list[str]:
        now, lines = [0.0], []
        hint = SlowHint(total, lines.append, clock=lambda: now[0])
        for _ in range(total):
            now[0] += per_flow
            hint()
        return lines
    assert run(1024, 0.005) == []  # about 5 s
    slow = run(1024, 0.6)  # about 10 min
    assert len(slow) == 1 and "--size" in slow[0] and "--start-layer" in slow[0] and f"{1024 * 0.6:.0f} s" in slow[0]
    assert run(100, SLOW_S / 100 * 0.9) == []  # just under the limit


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
