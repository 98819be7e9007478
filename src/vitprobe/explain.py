"""The main job: one image in, one figure per method, ``maps.npz`` and ``summary.json`` out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import render
from .io.files import atomic_write, atomic_write_text, jsonable
from .kernels import resolve_kernel
from .memory import one_item
from .methods import MethodSpec, attribute
from .models.base import ImageInput, VitModel
from .render.style import Style


@dataclass(frozen=True)
class ExplainOptions:
    """What ``explain`` draws: ``methods`` as (name, parameters) pairs, labelled ``labels`` (file names,
    one per method instance); the whole image resized to ``size`` (H, W) instead of the model's own
    preprocessing; ``style`` of every figure; the ``top_k`` predictions of a classifier beside the maps."""

    methods: Sequence[MethodSpec]
    labels: Sequence[str]
    size: tuple[int, int] | None = None
    style: Style = Style()
    top_k: int = 5


def explain_image(model: VitModel, image: ImageInput, out_dir: Path, opts: ExplainOptions) -> dict:
    """Attribute one image by every method (one forward pass), write ``<label>.png`` per method,
    ``maps.npz`` and ``summary.json`` into ``out_dir``; return the summary. ``memory.OutOfMemory`` when the
    image does not fit in memory (before anything is written)."""
    with one_item():
        results = attribute(model, image, method=list(opts.methods), size=opts.size)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    described, figures = [], []
    for label, result in zip(opts.labels, results, strict=True):
        name = f"{label}.png"
        render.save_figure(render.attribution_figure(result, 0, opts.style, opts.top_k), out_dir / name)
        figures.append(name)
        arrays[label] = result.maps[0].numpy().astype(np.float32)
        for key, value in result.detail.items():
            arrays[f"{label}.{key}"] = value[0].numpy().astype(np.float32)
        entry = {"label": label, "method": result.method, "params": {k: jsonable(v) for k, v in result.params.items()},
                 "title": result.title, "figure": name,
                 "maps_npz": {label: list(result.maps[0].shape),
                              **{f"{label}.{k}": list(v[0].shape) for k, v in result.detail.items()}}}
        if result.targets is not None:
            entry["target"] = {"index": result.targets[0], "label": result.labels.get(result.targets[0])}
        described.append(entry)
    atomic_write(out_dir / "maps.npz", lambda f: np.savez_compressed(f, **arrays), "the maps")
    first = results[0]
    summary = {
        **model.describe(),
        "input_hw": list(first.geometry[0].input_hw),
        "grid_hw": list(first.layout.grid_hw),
        "geometry": first.geometry[0].to_dict(),
        "size_requested": list(opts.size) if opts.size else None,
        "methods": described,
        "figures": figures,
        "colour_scale": opts.style.describe(),
        "attention_kernel": resolve_kernel(model.device),
        "maps": "raw values on the patch grid (H, W), prefix tokens dropped, not renormalised",
    }
    top = first.top(0, opts.top_k)
    if top:
        summary["top5" if opts.top_k == 5 else f"top{opts.top_k}"] = [
            {"index": i, "label": label, "probability": round(p, 5)} for i, label, p in top]
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2), "the summary")
    return summary
