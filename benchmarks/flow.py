"""Attention flow: vitprobe's ``flow`` method beside networkx's max-flow on the same graph.

The attention is random (seeded softmax of N(0, 2²) logits) with the shape of a ViT-S/16 at 224 px
(12 layers, 6 heads, T = 197), given to the public API through ``vp.from_attentions``. vitprobe
computes every patch's flow (``vp.attribute(capture, method="flow")``, timed whole); networkx
(``maximum_flow_value``, preflow-push, float64 capacities) computes the first ``--patches`` of them
on the same layered graph, timed per patch and extrapolated to the image. Both sets of values are
compared. Run: ``.venv/bin/python benchmarks/flow.py [--patches 2] [--update benchmarks/RESULTS.md]``.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from datetime import datetime
from pathlib import Path

import networkx as nx
import numpy as np
import torch

import vitprobe as vp

BEGIN, END = "<!-- bench:flow:begin -->", "<!-- bench:flow:end -->"


def random_layers(layers: int = 12, heads: int = 6, tokens: int = 197, seed: int = 0) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return [(2 * torch.randn(1, heads, tokens, tokens, generator=g)).softmax(-1).numpy() for _ in range(layers)]


def networkx_flows(layers: list[np.ndarray], patches: int) -> tuple[np.ndarray, float]:
    """Flows of the first ``patches`` patch tokens and the seconds per patch (graph building excluded)."""
    fused = [a[0].astype(np.float64).mean(0) for a in layers]
    t = fused[0].shape[0]
    graph = nx.DiGraph()
    for layer, a in enumerate(fused):
        a = 0.5 * a + 0.5 * np.eye(t)
        a = a / a.sum(1, keepdims=True)
        for i in range(t):
            for j in range(t):
                graph.add_edge((layer, j), (layer + 1, i), capacity=a[i, j])
    start = time.perf_counter()
    values = [nx.maximum_flow_value(graph, (0, j), (len(fused), 0)) for j in range(1, 1 + patches)]
    return np.asarray(values), (time.perf_counter() - start) / patches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=2, help="patches networkx computes (extrapolated)")
    parser.add_argument("--update", type=Path, help="rewrite the flow table in this markdown file")
    args = parser.parse_args()
    layers = random_layers()
    capture = vp.from_attentions(layers, prefix_tokens=1, grid_hw=(14, 14))
    start = time.perf_counter()
    ours = vp.attribute(capture, method="flow").maps[0].flatten().double().numpy()
    ours_s = time.perf_counter() - start
    reference, per_patch = networkx_flows(layers, args.patches)
    diff = float(np.abs(ours[: args.patches] - reference).max())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    n = 196
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), networkx {nx.__version__}, {datetime.now():%Y-%m-%d %H:%M}.",
        "",
        "| solver | per patch (s) | per image, 196 patches (s) | speed-up over networkx "
        "| max abs diff (first patches) | peak RSS (GB) |",
        "|---|---|---|---|---|---|",
        f"| vitprobe `flow` (scipy Dinic, 2³⁰ integer capacities) | {ours_s / n:.4f} | {ours_s:.1f} | "
        f"{per_patch * n / ours_s:.0f} | {diff:.1e} | {rss:.2f} |",
        f"| networkx `maximum_flow_value` (float64), {args.patches} patches | {per_patch:.2f} | "
        f"{per_patch * n:.0f} (extrapolated) | 1 | – | – |",
    ]
    table = "\n".join(lines)
    print(table)
    if args.update:
        text = args.update.read_text()
        block = f"{BEGIN}\n{table}\n{END}"
        if BEGIN in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n## Attention flow (issue 14)\n\n" + (__doc__.split("\n\n")[1]) + "\n\n" \
                   + block + "\n"
        args.update.write_text(text)


if __name__ == "__main__":
    main()
