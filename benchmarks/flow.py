"""Attention flow: vitprobe's ``flow`` method beside the approach before it and networkx.

Two cases. (1) Random attention (seeded softmax of N(0, 2²) logits) with the shape of a ViT-S/16 at
224 px (12 layers, 6 heads, T = 197), given to the public API through ``vp.from_attentions``.
(2) The offline default model (``vp.load()``, DINOv2-S/14) on the sample photo ``chelsea`` at its
own 448 px (T = 1025) and at ``size=(224, 224)`` (T = 257), timed end to end through
``vp.attribute(model, photo, method="flow")`` (preprocessing, forward and every patch's flow).

"New" is that public call, timed whole. "Old" is the approach before the subgraphs, run on the same
head-fused attention: the whole layered graph in scipy and one ``maximum_flow`` (Dinic) per patch;
for the model it is counted with the same forward (``vp.capture_for``, timed) and, at T = 1025,
timed on ``--old-patches`` patches spread over the grid and extrapolated. networkx
(``maximum_flow_value``, preflow-push, float64 capacities) solves the first ``--patches`` patches of
case (1), timed per patch and extrapolated. Values are compared on every patch both computed (the method returns
float32 maps: the old flows are rounded to float32 for that comparison).
Run: ``.venv/bin/python benchmarks/flow.py [--patches 2] [--old-patches 8] [--update benchmarks/RESULTS.md]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from datetime import datetime
from pathlib import Path

import networkx as nx
import numpy as np
import scipy
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow

import vitprobe as vp
from vitprobe.analysis.flow import SCALE, capacities

BEGIN, END = "<!-- bench:flow:begin -->", "<!-- bench:flow:end -->"


def random_layers(layers: int = 12, heads: int = 6, tokens: int = 197, seed: int = 0) -> list[np.ndarray]:
    """Seeded attention, one (1, heads, T, T) array per layer."""
    g = torch.Generator().manual_seed(seed)
    return [(2 * torch.randn(1, heads, tokens, tokens, generator=g)).softmax(-1).numpy() for _ in range(layers)]


def old_flows(fused: torch.Tensor, sink: int, patches: list[int]) -> tuple[np.ndarray, float, float]:
    """The whole-graph approach: fused (L, T, T) -> the flows of token indices ``patches``, the seconds
    to build the graph and the seconds per max-flow."""
    start = time.perf_counter()
    cap = capacities(fused)
    n_layers, t, _ = cap.shape
    layer, i, j = np.nonzero(cap)  # edge (layer, j) -> (layer + 1, i)
    n = (n_layers + 1) * t
    graph = csr_matrix((cap[layer, i, j], (layer * t + j, (layer + 1) * t + i)), shape=(n, n))
    build = time.perf_counter() - start
    start = time.perf_counter()
    values = [maximum_flow(graph, p, n_layers * t + sink, method="dinic").flow_value / SCALE for p in patches]
    return np.asarray(values), build, (time.perf_counter() - start) / len(patches)


def networkx_flows(fused: np.ndarray, patches: int) -> tuple[np.ndarray, float]:
    """fused (L, T, T): flows of the first ``patches`` patch tokens and the seconds per patch (graph
    building excluded)."""
    t = fused.shape[-1]
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


def timed(call) -> tuple[object, float]:
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def row(case: str, t: int, new_s: float, old_s: float, old_how: str, diff: float, compared: int) -> str:
    return (f"| {case} | {t} | {new_s:.1f} | {old_s:.1f} ({old_how}) | {old_s / new_s:.0f}× | "
            f"{diff:.1e} over {compared} patches |")


def random_case(n_nx: int) -> tuple[str, str]:
    layers = random_layers()
    capture = vp.from_attentions(layers, prefix_tokens=1, grid_hw=(14, 14))
    res, new_s = timed(lambda: vp.attribute(capture, method="flow"))
    ours = res.maps[0].flatten().double().numpy()
    fused = capture.fused["mean"][:, 0]  # (L, T, T), as the method reads it
    old, build, per = old_flows(fused, 0, list(range(1, 197)))
    reference, nx_per = networkx_flows(np.stack([a[0].astype(np.float64).mean(0) for a in layers]), n_nx)
    line = row("random, ViT-S/16 shape, 224 px", 197, new_s, build + 196 * per, "all 196 patches",
               float(np.abs(ours - old.astype(np.float32)).max()), 196)
    note = (f"networkx on the same graph: {nx_per:.2f} s per patch ({nx_per * 196:.0f} s per image, "
            f"extrapolated from {n_nx}); vitprobe within {np.abs(ours[:n_nx] - reference).max():.1e} of it.")
    return line, note


def model_case(model: vp.VitModel, photo: Path, size: tuple[int, int] | None, n_old: int) -> str:
    kwargs = {} if size is None else {"size": size}
    vp.attribute(model, photo, method="cls", **kwargs)  # warm up (first-call costs), untimed
    res, new_s = timed(lambda: vp.attribute(model, photo, method="flow", **kwargs))
    ours = res.maps[0].flatten().double().numpy()
    layout = res.layout
    capture, forward_s = timed(lambda: vp.capture_for(model, photo, method="flow", **kwargs))
    n = layout.n_patches
    picks = list(range(n)) if n_old >= n else np.linspace(0, n - 1, n_old).round().astype(int).tolist()
    fused = capture.fused["mean"][:, 0]
    old, build, per = old_flows(fused, layout.cls_index, [layout.n_prefix + p for p in picks])
    how = f"all {n} patches" if len(picks) == n else f"{len(picks)} patches, extrapolated"
    px = f"{layout.input_hw[0]} px" + (" (its own)" if size is None else "")
    return row(f"DINOv2-S/14 (offline), {photo.stem}, {px}", layout.n_tokens, new_s, forward_s + build + n * per,
               how, float(np.abs(ours[picks] - old.astype(np.float32)).max()), len(picks))


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
               "unknown CPU")
    cpu += " (AVX-512)" if " avx512f" in info else ""
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"scipy {scipy.__version__}, networkx {nx.__version__}, {datetime.now():%Y-%m-%d %H:%M}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=2, help="patches networkx computes (extrapolated)")
    parser.add_argument("--old-patches", type=int, default=8, help="patches the old approach solves at T = 1025")
    parser.add_argument("--update", type=Path, help="rewrite the flow table in this markdown file")
    args = parser.parse_args()
    random_line, nx_note = random_case(args.patches)
    model = vp.load()
    with tempfile.TemporaryDirectory() as folder:
        photo = vp.write_samples(Path(folder), ["chelsea"])[0]
        lines = [model_case(model, photo, (224, 224), 10**6), model_case(model, photo, None, args.old_patches)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    table = "\n".join([
        f"Machine: {machine()}; peak RSS {rss:.2f} GB.",
        "",
        "| case | T | new: `vp.attribute(..., method=\"flow\")` (s per image) | old: whole graph, one scipy "
        "max-flow per patch (s per image) | speed-up | max abs diff, new vs old |",
        "|---|---|---|---|---|---|",
        random_line,
        *lines,
        "",
        nx_note,
    ])
    print(table)
    if args.update:
        text = args.update.read_text()
        block = f"{BEGIN}\n{table}\n{END}"
        if BEGIN in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            title = f"## Attention flow at the model's own size (issue 22, {datetime.now():%Y-%m-%d})"
            about = "\n\n".join(__doc__.split("\n\n")[1:3]).strip()
            text = text.rstrip("\n") + f"\n\n{title}\n\n{about}\n\n{block}\n"
        args.update.write_text(text)


if __name__ == "__main__":
    main()
