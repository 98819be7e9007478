"""Attention flow (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

The layered graph has one node per token and layer, (l, i) for l = 0..L (layer 0: the input tokens);
an edge (l − 1, j) → (l, i) carries capacity Â_l[i, j], with Â = ½A + ½I of layer l's head-fused
attention, rows renormalised (as rollout). The flow of input token j is the maximum flow from
(0, j) to (L, CLS): how much of the CLS token's top-layer attention can be routed back to j through
the layers' capacities, where rollout multiplies them.

The max-flows are exact, on integer capacities Â·2³⁰ rounded down (each flow is below the real-valued
one by at most the rounding of the edges of one cut, < T·L·2⁻³⁰), solved by
``scipy.sparse.csgraph.maximum_flow`` (Dinic) — but not on the whole graph, whose L·T² edges cost
scipy more to copy than to solve (0.6 s a patch at T = 1025). Only the source's row of nodes, the
middle layers and the sink's own edges can carry flow from (0, j) to (L, CLS). Of the middle edges,
a small subgraph is solved first: every node's edge to itself in the next layer, its two largest
in-edges and two largest out-edges, every edge into the sink token's nodes, and every edge out of
the source token's nodes (about 40 000 edges at T = 1025, L = 12, of 12.6 million). Its max-flow is a feasible flow
of the full graph, a lower bound. Two cuts of the full graph bound it from above: the source's
out-capacity and the sink's in-capacity. When the subgraph's flow reaches the smaller it is exact
(on three DINOv2-S/14 photos, every patch at T = 257 and 1025). Otherwise the subgraph's
minimum cut (the nodes its residual graph reaches) is measured in the full graph: if no full-graph
edge with capacity crosses it, the flow is exact; if some do, they are added and the subgraph is
solved again, until one of the two holds (at worst the whole graph).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from ..layout import TokenLayout
from .rollout import add_residual

SCALE = 2**30
"""Capacities are stored as int32 ⌊Â·SCALE⌋ (Â ≤ 1, so they fit)."""


def capacities(fused: torch.Tensor) -> np.ndarray:
    """fused (L, T, T) head-fused attention in forward order -> int32 (L, T, T) ⌊Â·SCALE⌋; [l, i, j] is
    the capacity of the edge (l, j) -> (l + 1, i)."""
    residual = add_residual(fused.double()).numpy()
    return np.floor(residual * SCALE).clip(0, np.iinfo(np.int32).max).astype(np.int32)


class FlowGraph:
    """One image's graph, pruned to the nodes that can carry flow from an input token to (L, sink).

    Nodes: 0 is the source (0, j); 1 + (l − 1)·T + i is (l, i) for l = 1..L − 1; the last is (L, sink).
    The middle edges (l, i) -> (l + 1, k), l = 1..L − 2, are indexed [l − 1, k, i] in ``middle``,
    ``positive`` and ``base`` (L − 2, T, T): their capacities, which have any, and the subgraph shared
    by every source. ``capacity`` is (L, T, T) from ``capacities``; ``sink`` the CLS token's index.
    """

    def __init__(self, capacity: np.ndarray, sink: int) -> None:
        self.capacity, self.sink = capacity, sink
        n_layers, t, _ = capacity.shape
        self.t, self.n_nodes = t, 2 + (n_layers - 1) * t
        self.sink_in = int(capacity[-1, sink].sum(dtype=np.int64))
        self.middle = capacity[1:-1]  # (L - 2, T, T)
        self.positive = self.middle > 0
        base = np.zeros_like(self.positive)
        for axis in (1, 2):  # each node's two largest out-edges, and its two largest in-edges
            top = np.argpartition(self.middle, -2, axis=axis).take([-2, -1], axis=axis)
            np.put_along_axis(base, top, True, axis=axis)
        base[:, np.arange(t), np.arange(t)] = True  # (l, i) -> (l + 1, i): the largest in-edge of a row of Â
        base[:, sink] = True  # every edge into the sink token's nodes
        self.base = base & self.positive
        self.base_edges = self._edges(*np.nonzero(self.base))
        last = (n_layers - 2) * t  # first node of layer L - 1, less one
        feeds = np.nonzero(capacity[-1, sink])[0]
        self.sink_edges = (1 + last + feeds, np.full(len(feeds), self.n_nodes - 1), capacity[-1, sink, feeds])

    def _edges(self, layer: np.ndarray, k: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tails, heads, capacities) of the middle edges (layer + 1, i) -> (layer + 2, k)."""
        return 1 + layer * self.t + i, 1 + (layer + 1) * self.t + k, self.middle[layer, k, i]

    def _graph(self, source: int, middle: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> csr_matrix:
        """The capacity matrix (nodes, nodes) of the source edges, the given middle edges and the sink edges."""
        reads = np.nonzero(self.capacity[0, :, source])[0]
        first = (np.zeros(len(reads), np.int64), 1 + reads, self.capacity[0, reads, source])
        parts = (first, *middle, self.sink_edges)
        tails, heads, caps = (np.concatenate([p[n] for p in parts]) for n in range(3))
        return csr_matrix((caps, (tails, heads)), shape=(self.n_nodes, self.n_nodes))

    def _source_side(self, graph: csr_matrix, flow: csr_matrix) -> np.ndarray:
        """Which nodes of layers 1..L − 1 the residual graph reaches from the source: (L − 1, T) bool."""
        residual = (graph - flow).tocsr()  # forward c − f, backward f
        residual.data[residual.data < 0] = 0
        residual.eliminate_zeros()
        side = np.zeros(self.n_nodes, dtype=bool)
        side[breadth_first_order(residual, 0, return_predecessors=False)] = True
        return side[1:-1].reshape(-1, self.t)

    def _crossing(self, side: np.ndarray, source: int, added: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """The middle edges with capacity from the source side (L − 1, T) to the rest that the subgraph
        lacks (not in the base, not out of the source's nodes, not ``added``); marks them in ``added``."""
        layers, heads_of, tails_of = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for layer in range(len(self.middle)):
            tails = np.nonzero(side[layer] & (np.arange(self.t) != source))[0]
            heads = np.nonzero(~side[layer + 1])[0]
            block = np.ix_(heads, tails)
            k, i = np.nonzero(self.positive[layer][block] & ~self.base[layer][block] & ~added[layer][block])
            layers.append(np.full(len(k), layer))
            heads_of.append(heads[k])
            tails_of.append(tails[i])
        layer, k, i = np.concatenate(layers), np.concatenate(heads_of), np.concatenate(tails_of)
        added[layer, k, i] = True
        return self._edges(layer, k, i) if len(k) else None

    def max_flow(self, source: int) -> int:
        """The exact maximum flow from (0, source) to (L, sink), in units of 1/SCALE."""
        if len(self.capacity) == 1:
            return int(self.capacity[0, self.sink, source])
        upper = min(int(self.capacity[0, :, source].sum(dtype=np.int64)), self.sink_in)
        layer, k = np.nonzero(self.positive[:, :, source] & ~self.base[:, :, source])
        edges = [self.base_edges, self._edges(layer, k, np.full(len(k), source))]  # and out of the source's nodes
        added = None
        while True:
            graph = self._graph(source, edges)
            result = maximum_flow(graph, 0, self.n_nodes - 1, method="dinic")
            if result.flow_value >= upper:
                break
            added = np.zeros_like(self.base) if added is None else added
            crossing = self._crossing(self._source_side(graph, result.flow), source, added)
            if crossing is None:
                break  # the subgraph's minimum cut has the same capacity in the full graph
            edges.append(crossing)
        return int(result.flow_value)


def attention_flow(
    fused: torch.Tensor, layout: TokenLayout, on_flow: Callable[[], None] | None = None
) -> torch.Tensor:
    """Flow of every patch token to the top layer's CLS: fused (L, B, T, T) -> (B, H, W) float64.
    ``on_flow`` is called after each max-flow (a progress bar)."""
    _, batch, t, _ = fused.shape
    out = torch.zeros(batch, layout.n_patches, dtype=torch.float64)
    for b in range(batch):
        graph = FlowGraph(capacities(fused[:, b]), layout.cls_index)
        for k, j in enumerate(range(layout.n_prefix, t)):
            out[b, k] = graph.max_flow(j) / SCALE
            if on_flow is not None:
                on_flow()
    return out.reshape(batch, *layout.grid_hw)
