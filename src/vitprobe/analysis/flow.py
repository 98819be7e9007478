"""Attention flow (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

The layered graph has one node per token and layer, (l, i) for l = 0..L (layer 0: the input tokens);
an edge (l − 1, j) → (l, i) carries capacity Â_l[i, j], with Â = ½A + ½I of layer l's head-fused
attention, rows renormalised (as rollout). The flow of input token j is the maximum flow from
(0, j) to (L, CLS): how much of the CLS token's top-layer attention can be routed back to j through
the layers' capacities, where rollout multiplies them.

The max-flows are exact: ``scipy.sparse.csgraph.maximum_flow`` (Dinic) on integer capacities
Â·2³⁰ rounded down, so each flow is below the real-valued one by at most the rounding of the
edges of one cut (< T·L·2⁻³⁰, about 1e-6 at T = 257, L = 12). One max-flow per input patch:
(L + 1)·T nodes and L·T² edges per image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow

from ..layout import TokenLayout
from .rollout import add_residual

SCALE = 2**30
"""Capacities are stored as int32 ⌊Â·SCALE⌋ (Â ≤ 1, so they fit)."""


def flow_graph(fused: torch.Tensor) -> csr_matrix:
    """The layered graph of one image: fused (L, T, T) head-fused attention in forward order -> an
    ((L + 1)·T)² int32 capacity matrix, node l·T + i for token i after layer l (0: the input)."""
    layers, t, _ = fused.shape
    residual = add_residual(fused.double()).numpy()  # (L, T, T), row i: how token i reads token j
    capacity = np.floor(residual * SCALE).astype(np.int64).clip(0, np.iinfo(np.int32).max).astype(np.int32)
    rows, cols, data = [], [], []
    tokens = np.arange(t)
    for layer in range(layers):
        j, i = np.meshgrid(tokens, tokens, indexing="ij")  # edge (layer, j) -> (layer + 1, i): Â[i, j]
        cap = capacity[layer].T  # [j, i] = Â[i, j]
        keep = cap > 0
        rows.append((layer * t + j)[keep])
        cols.append(((layer + 1) * t + i)[keep])
        data.append(cap[keep])
    n = (layers + 1) * t
    return csr_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


def attention_flow(
    fused: torch.Tensor, layout: TokenLayout, on_flow: Callable[[], None] | None = None
) -> torch.Tensor:
    """Flow of every patch token to the top layer's CLS: fused (L, B, T, T) -> (B, H, W) float64.
    ``on_flow`` is called after each max-flow (a progress bar)."""
    layers, batch, t, _ = fused.shape
    sink = layers * t + layout.cls_index
    out = torch.zeros(batch, layout.n_patches, dtype=torch.float64)
    for b in range(batch):
        graph = flow_graph(fused[:, b])
        for k, j in enumerate(range(layout.n_prefix, t)):
            out[b, k] = maximum_flow(graph, j, sink, method="dinic").flow_value / SCALE
            if on_flow is not None:
                on_flow()
    return out.reshape(batch, *layout.grid_hw)
