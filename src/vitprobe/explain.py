"""The main job: one image in, its attention figures, maps.npz and summary.json out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import render
from .analysis.maps import aggregate_layers, cls_maps, fuse_heads, query_map
from .analysis.rollout import rollout
from .models.base import ImageInput, VitModel
from .render.colormap import DEFAULT_CLIP

METHODS = ("heads", "layers", "aggregate", "rollout", "query")
DEFAULT_METHODS = ("heads", "layers", "aggregate", "rollout")


@dataclass(frozen=True)
class ExplainOptions:
    """What ``explain`` draws: ``heads_layers`` get per-head grids (negative = from the end);
    ``query_rc`` is the (row, col) patch whose own attention the "query" method draws; ``clip`` is the
    percentile of each map drawn as the top of its colour scale (100: the max; the saved maps are raw)."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    heads_layers: tuple[int, ...] = (-1,)
    size: tuple[int, int] | None = None
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    cmap: str = "inferno"
    alpha: float = 0.5
    upsample: str = "bilinear"
    query_rc: tuple[int, int] | None = None
    clip: float = DEFAULT_CLIP


def explain_image(model: VitModel, image: ImageInput, out_dir: Path, opts: ExplainOptions) -> dict:
    """Capture one image, write figures, ``maps.npz`` and ``summary.json`` into ``out_dir``; return the summary."""
    heads_layers = model.resolve_layers(opts.heads_layers)
    want_query = "query" in opts.methods
    cap = model.capture(image, size=opts.size, fuse=(opts.head_fusion,), full_layers=heads_layers if want_query else ())
    per_head = cls_maps(cap.cls, cap.layout)[:, 0]  # (L, heads, H, W)
    head_mean = fuse_heads(per_head, "mean")  # (L, H, W)
    rolled = rollout(cap.fused[opts.head_fusion], cap.layout, opts.discard_ratio)[0]
    view = cap.images[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    style = {"cmap": opts.cmap, "alpha": opts.alpha, "upsample": opts.upsample, "clip": opts.clip}
    figures: list[str] = []

    def save(fig, name: str) -> None:
        render.save_figure(fig, out_dir / name)
        figures.append(name)

    if "heads" in opts.methods:
        for layer in heads_layers:
            fused = {how: fuse_heads(per_head[layer], how) for how in ("mean", "max", "min")}
            save(render.head_grid(view, per_head[layer], title=f"CLS attention, layer {layer}", extra=fused, **style),
                 f"heads_layer{layer:02d}.png")
    if "layers" in opts.methods:
        save(render.layer_grid(view, head_mean, layer_ids=cap.layers, title="CLS attention per layer (head mean)",
                               extra={"rollout": rolled}, **style), "layers.png")
    if "aggregate" in opts.methods:
        aggregated = {f"layer {how}": aggregate_layers(head_mean, how) for how in ("mean", "max", "min")}
        save(render.maps_figure(view, {**aggregated, "rollout": rolled}, title="Layer aggregation", **style),
             "aggregate.png")
    if "rollout" in opts.methods:
        render.overlay(view, rolled, **style).save(out_dir / "rollout.png")
        figures.append("rollout.png")
    query_rc = opts.query_rc or (cap.layout.grid_hw[0] // 2, cap.layout.grid_hw[1] // 2)
    if want_query:
        for layer in heads_layers:
            q = query_map(cap.full[layer], cap.layout, *query_rc)[0]
            title = f"attention of patch (row {query_rc[0]}, col {query_rc[1]}), layer {layer}"
            save(render.head_grid(view, q, title=title, extra={"mean": fuse_heads(q, "mean")}, **style),
                 f"query_r{query_rc[0]}_c{query_rc[1]}_layer{layer:02d}.png")

    np.savez_compressed(
        out_dir / "maps.npz",
        cls_attention=per_head.numpy().astype(np.float32),
        rollout=rolled.numpy().astype(np.float32),
        layers=np.asarray(cap.layers),
    )
    summary = {
        **model.describe(),
        "input_hw": list(cap.geometry[0].input_hw),
        "grid_hw": list(cap.layout.grid_hw),
        "geometry": cap.geometry[0].to_dict(),
        "size_requested": list(opts.size) if opts.size else None,
        "methods": list(opts.methods),
        "rollout": {"head_fusion": opts.head_fusion, "discard_ratio": opts.discard_ratio},
        "query_patch_rc": list(query_rc) if want_query else None,
        "maps_npz": {
            "cls_attention": "(layers, heads, H, W) raw CLS-row attention over patch tokens, not renormalised",
            "rollout": "(H, W) CLS row of the joint rollout matrix over patch tokens",
            "layers": "(layers,) model layer index of each row",
        },
        "figures": figures,
        "colour_scale": f"each overlay from its map's min to its {opts.clip:g}th percentile",
    }
    if cap.logits is not None and model.labels:
        probs = cap.logits[0].softmax(-1)
        top = torch.topk(probs, min(5, probs.numel()))
        summary["top5"] = [
            {"label": model.labels.get(int(i), str(int(i))), "probability": round(float(p), 5)}
            for p, i in zip(top.values, top.indices, strict=True)
        ]
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
