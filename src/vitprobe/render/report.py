"""The HTML report of a dataset run: ``DIR/report.html`` with its figures beside it in ``DIR/report_files/``.

It gathers what a researcher would otherwise assemble by hand from seeds 003 and 004: mean
attention distance per head and layer, entropy per layer, the four spread levels with their
images and maps, layer-wise maps of a few example images, patch filters, position-embedding
similarity, and artifact-token shares. Everything is read from ``aggregates.json``; the few
images shown are captured again (one forward each).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..analysis.embeddings import filter_components, patch_filters, position_similarity
from ..analysis.maps import aggregate_layers, cls_maps
from ..analysis.rollout import rollout
from ..io.images import ImageLoadError
from ..io.store import atomic_write_text, require
from ..models.base import VitModel
from .colormap import DEFAULT_CLIP
from .figures import layer_grid, save_figure
from .overlay import overlay, side_by_side
from .plots import (
    artifact_figure,
    distance_scatter,
    entropy_plot,
    filters_figure,
    position_grid_figure,
    similarity_matrix_figure,
)

FILES = "report_files"
THUMB_PX = 176
MAX_FILTERS = 128


@dataclass(frozen=True)
class ReportOptions:
    """``examples``: images drawn layer by layer; ``per_level``: thumbnails per spread level; ``size``:
    the (H, W) the run resized to, if any (the report must show what the run measured); ``clip``: the
    percentile of each map drawn as the top of its colour scale."""

    examples: int = 4
    per_level: int = 4
    size: tuple[int, int] | None = None
    cmap: str = "inferno"
    clip: float = DEFAULT_CLIP


def _pick(items: list, k: int) -> list:
    """k items spread evenly over the list (first and last included)."""
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if k > 1 else [items[len(items) // 2]]


def _thumb(image: Image.Image) -> Image.Image:
    scale = THUMB_PX / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.LANCZOS)


def _per_layer_table(aggregates: dict) -> list[dict]:
    """Rows for the summary table: per layer the head mean, min and max of the headline metrics."""
    metrics = aggregates["metrics"]
    rows = []
    for i, layer in enumerate(aggregates["layers"]):
        row = {"layer": layer}
        for name in ("mean_attention_distance", "mean_attention_distance_renormalized", "entropy_cls", "entropy_rows"):
            if name in metrics:
                heads = [v for v in metrics[name]["mean"][i] if v is not None]
                row[name] = (sum(heads) / len(heads), min(heads), max(heads)) if heads else None
        art = aggregates["artifacts"]
        row["outlier_share"] = art["outlier_share"][i]
        row["outliers_in_peaks"] = art["outliers_in_peaks"][i]
        rows.append(row)
    return rows


def write_report(model: VitModel, out_dir: Path, aggregates: dict, opts: ReportOptions | None = None) -> Path:
    """Write ``out_dir/report.html`` and its figures; returns the path of the HTML file."""
    jinja2 = require("jinja2")
    opts = opts or ReportOptions()
    out_dir = Path(out_dir)
    files = out_dir / FILES
    files.mkdir(parents=True, exist_ok=True)
    layers = aggregates["layers"]
    metrics = aggregates["metrics"]
    figures: dict[str, str] = {}

    def save(fig, name: str) -> None:
        save_figure(fig, files / name, dpi=100)
        figures[name.removesuffix(".png")] = f"{FILES}/{name}"

    bound, uniform = aggregates.get("distance_bound_px"), aggregates.get("distance_uniform_px")
    if "mean_attention_distance" in metrics:
        save(distance_scatter(np.asarray(metrics["mean_attention_distance"]["mean"], dtype=float), layers,
                              "Mean attention distance (prefix mass = distance 0)", uniform), "distance.png")
        save(distance_scatter(np.asarray(metrics["mean_attention_distance_renormalized"]["mean"], dtype=float), layers,
                              "Mean attention distance (rows renormalised over patches)", uniform),
             "distance_renormalized.png")
    panels = {"entropy_cls": "CLS row over all tokens", "entropy_rows": "all query rows (mean)"}
    per_head = {label: np.asarray(metrics[name]["mean"], dtype=float) for name, label in panels.items()
                if name in metrics}
    if per_head:
        per_layer = ({"head-mean CLS map": np.asarray(metrics["entropy_cls_map"]["mean"], dtype=float)}
                     if "entropy_cls_map" in metrics else {})
        top = aggregates.get("entropy_max_nats")
        limits = {"log T (uniform row)": top["row"], "log N (uniform map)": top["map"]} if top else {}
        save(entropy_plot(per_head, layers, per_layer, limits), "entropy.png")
    art = aggregates["artifacts"]
    ratio = np.asarray(metrics["token_norm_max_over_median"]["mean"], dtype=float)
    shares = {"outlier patch tokens": art["outlier_share"], "images with any outlier": art["images_with_outliers"]}
    if "entropy_cls" in metrics:
        shares["isolated CLS-map peaks"] = art["peak_share"]
    save(artifact_figure(layers, {k: np.asarray(v, dtype=float) for k, v in shares.items()}, ratio,
                         art["outlier_ratio"]), "artifacts.png")

    embeddings = _embedding_figures(model, aggregates, save)
    levels, examples, missing = _image_figures(model, aggregates, opts, files)
    context = {
        "title": f"vitprobe analysis — {model.name}",
        "model": aggregates["model"],
        "images": aggregates["images"],
        "input_sizes": aggregates["input_sizes"],
        "timing": aggregates.get("timing"),
        "bound": bound,
        "uniform": uniform,
        "figures": figures,
        "table": _per_layer_table(aggregates),
        "levels": levels,
        "spread": aggregates.get("spread_levels"),
        "examples": examples,
        "embeddings": embeddings,
        "artifacts": art,
        "failures": _failures(out_dir),
        "missing": missing,
        "clip": opts.clip,
    }
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    env.filters["num"] = lambda v, fmt="{:.3g}": "–" if v is None or (isinstance(v, float) and math.isnan(v)) \
        else fmt.format(v)
    html = env.get_template("report.html.j2").render(**context)
    path = out_dir / "report.html"
    atomic_write_text(path, html)
    return path


def _failures(out_dir: Path) -> list[list[str]]:
    path = out_dir / "failures.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


def _embedding_figures(model: VitModel, aggregates: dict, save) -> dict:
    """Patch filters, their principal components, and position similarity; what the model has of them."""
    info: dict = {}
    if model.patch_weight is not None:
        weight = model.patch_weight.float().cpu()
        n = min(MAX_FILTERS, weight.shape[0])
        save(filters_figure(patch_filters(weight)[:n], f"Patch-embedding filters: the first {n} of {weight.shape[0]}",
                            subtitle="each filter min-max scaled to its own range"), "filters.png")
        comps, ratio = filter_components(weight, k=28)
        explained = f"{len(comps)} components explain {100 * float(ratio.sum()):.1f}% of the variance"
        save(filters_figure(comps, "Principal components of the patch-embedding filters", ncols=14,
                            subtitle=explained), "filter_components.png")
        info["filters"] = {"count": int(weight.shape[0]), "patch": int(weight.shape[-1])}
    if model.position_grid is not None:
        grid = model.position_grid.float().cpu()
        sim = position_similarity(grid)
        h, w = grid.shape[:2]
        save(position_grid_figure(sim, f"Cosine similarity of position embeddings (learned {h}×{w} table)\n"
                                       "cell (row, col): similarity of that position to every position"),
             "positions.png")
        save(similarity_matrix_figure(sim.reshape(h * w, h * w),
                                      f"Position-embedding similarity, {h * w}×{h * w} (seed 003's view)"),
             "positions_matrix.png")
        sizes = [tuple(s["input_hw"]) for s in aggregates["input_sizes"]]
        used = [model.layout(s).grid_hw for s in sizes]
        info["positions"] = {"native": [h, w], "used": [list(g) for g in used],
                             "interpolated": any(g != (h, w) for g in used)}
    return info


def _image_figures(model: VitModel, aggregates: dict, opts: ReportOptions, files: Path):
    """Spread-level thumbnails (image + head-mean CLS map of the spread layer) and example layer grids."""
    spread = aggregates.get("spread_levels")
    if not spread:
        return [], [], []
    layer = spread["layer"]
    levels, examples, missing = [], [], []
    for level, members in spread["levels"].items():
        shown = []
        for k, member in enumerate(_pick(members, opts.per_level)):
            try:
                cap = model.capture(member["image"], size=opts.size, fuse=(), full_layers=())
            except ImageLoadError as err:
                missing.append(str(err))
                continue
            heat = cls_maps(cap.cls, cap.layout)[cap.layer_position(layer), 0].mean(0)
            view = _thumb(cap.images[0])
            name = f"level{level}_{k}.jpg"
            pair = side_by_side([view, overlay(view, heat, cmap=opts.cmap, clip=opts.clip)], gap=4)
            pair.save(files / name, quality=88)
            shown.append({"src": f"{FILES}/{name}", "image": member["image"], "entropy": member["entropy_cls_map"]})
        values = [m["entropy_cls_map"] for m in members]
        levels.append({"level": level, "count": len(members), "low": min(values), "high": max(values),
                       "shown": shown})
    medians = [members[len(members) // 2]["image"] for members in spread["levels"].values()]
    for k, path in enumerate(medians[: opts.examples]):
        try:
            cap = model.capture(path, size=opts.size, fuse=("mean",), full_layers=())
        except ImageLoadError as err:
            missing.append(str(err))
            continue
        head_mean = cls_maps(cap.cls, cap.layout)[:, 0].mean(1)  # (L, H, W)
        extra = {f"{how} over layers": aggregate_layers(head_mean, how) for how in ("mean", "max", "min")}
        extra["rollout"] = rollout(cap.fused["mean"], cap.layout)[0]
        fig = layer_grid(cap.images[0], head_mean, layer_ids=cap.layers, extra=extra, cmap=opts.cmap, clip=opts.clip,
                         title=f"{Path(path).name}: CLS attention per layer (head mean), aggregates and rollout")
        name = f"example_{k}.png"
        save_figure(fig, files / name, dpi=80)
        examples.append({"src": f"{FILES}/{name}", "image": path})
    return levels, examples, missing
