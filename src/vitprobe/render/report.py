"""The HTML report of a dataset run: ``DIR/report.html`` with its figures beside it in ``DIR/report_files/``.

It gathers what a researcher would otherwise assemble by hand from seeds 003 and 004: mean
attention distance per head and layer, entropy per layer, the four spread levels with their
images and maps, layer-wise maps of a few example images, patch filters, position-embedding
similarity, artifact-token shares, and per-class means where the images have labels. It only draws:
the statistics come from ``aggregates.json`` and the maps, filters and similarities from a
``ReportInputs`` that ``vitprobe.reporting`` computes with the model (``vp.attribute`` and the
embedding analyses).
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..io.files import FULL_ERRNOS, TMP_PREFIX, DiskFull, atomic_write, atomic_write_text, share
from ..io.store import require
from .figures import grid_figure, save_figure
from .overlay import overlay, side_by_side
from .plots import (
    artifact_figure,
    distance_scatter,
    entropy_plot,
    filters_figure,
    position_grid_figure,
    similarity_matrix_figure,
)
from .style import Style

FILES = "report_files"
THUMB_PX = 176
CLASS_ROWS = 100
CLASS_METRICS = (
    ("mean_attention_distance", "distance px (mean head)", "{:.1f}"),
    ("entropy_cls_map", "CLS-map entropy", "{:.3f}"),
    ("entropy_rollout_map", "rollout entropy", "{:.3f}"),
    ("token_norm_outlier_share", "outlier tokens", "{:.2%}"),
)


@dataclass(frozen=True)
class LevelImage:
    """One spread-level thumbnail: the ``image`` file, its map ``entropy``, the ``view`` the model saw and
    its ``heat`` map (H, W)."""

    image: str
    entropy: float
    view: Image.Image
    heat: torch.Tensor


@dataclass(frozen=True)
class ExampleImage:
    """One example drawn layer by layer: the ``image`` file, the ``view`` and the labelled (H, W) ``panels``."""

    image: str
    view: Image.Image
    panels: list[tuple[str, torch.Tensor]]


@dataclass
class ReportInputs:
    """What the report draws beside the aggregates, computed elsewhere (``vitprobe.reporting``).

    ``levels``: spread level -> its thumbnails; ``examples``: images drawn layer by layer;
    ``filters`` (n, P, P, 3) scaled patch-embedding filters of ``filter_count`` with ``components``
    (k, P, P, 3) and their ``explained`` variance share; ``similarity`` (H, W, H, W) position-embedding
    cosine similarity, with the grids ``used`` by the run; ``missing``: images that could not be read
    again.
    """

    levels: dict[str, list[LevelImage]]
    examples: list[ExampleImage]
    filters: torch.Tensor | None = None
    filter_count: int = 0
    components: torch.Tensor | None = None
    explained: float = 0.0
    similarity: torch.Tensor | None = None
    used: list[tuple[int, int]] | None = None
    missing: list[str] | None = None


@dataclass(frozen=True)
class ReportOptions:
    """``examples``: images drawn layer by layer; ``per_level``: thumbnails per spread level; ``size``:
    the (H, W) the run resized to, if any (the report must show what the run measured); ``style`` of
    the maps."""

    examples: int = 4
    per_level: int = 4
    size: tuple[int, int] | None = None
    style: Style = Style()


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


def _class_tables(aggregates: dict) -> list[dict]:
    """Per label column, rows for the by-class table: each class's images and its means in the spread
    layer (the last layer without a CLS token), at most ``CLASS_ROWS`` classes."""
    layers = aggregates["layers"]
    spread = aggregates.get("spread_levels")
    layer = spread["layer"] if spread else layers[-1]
    tables = []
    for column, summary in (aggregates.get("classes") or {}).items():
        shown = [(name, label, fmt) for name, label, fmt in CLASS_METRICS if name in summary["metrics"]]
        rows = []
        for name, count in list(summary["images"].items())[:CLASS_ROWS]:
            cells = []
            for metric, _, fmt in shown:
                value = summary["metrics"][metric].get(name, [None] * len(layers))[layers.index(layer)]
                cells.append("–" if value is None or (isinstance(value, float) and math.isnan(value))
                             else fmt.format(value))
            rows.append({"name": name, "images": count, "cells": cells})
        tables.append({"column": column, "layer": layer, "headers": [label for _, label, _ in shown], "rows": rows,
                       "more": max(0, len(summary["images"]) - CLASS_ROWS), "unlabelled": summary["unlabelled"]})
    return tables


def write_report(out_dir: Path, aggregates: dict, inputs: ReportInputs, style: Style = Style()) -> Path:
    """Write ``out_dir/report.html`` and its figures in ``report_files/``; returns the path of the HTML file.

    The figures go to a temporary folder that replaces ``report_files/`` only once all are written, and
    the page is written last, so a full disk or a kill leaves the previous report whole (or none)."""
    jinja2 = require("jinja2")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{FILES}-", dir=out_dir))
    except OSError as err:
        raise DiskFull(out_dir / FILES, "the report's figures") if err.errno in FULL_ERRNOS else err from None
    try:
        html = _draw(out_dir, files, aggregates, inputs, style, jinja2)
        _replace_folder(files, out_dir / FILES)
    except BaseException:
        shutil.rmtree(files, ignore_errors=True)
        raise
    path = out_dir / "report.html"
    atomic_write_text(path, html, "the report page")
    return path


def _draw(out_dir: Path, files: Path, aggregates: dict, inputs: ReportInputs, style: Style, jinja2) -> str:
    """Every figure into ``files`` (named as they will be read from ``report_files/``); returns the page."""
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
        maps = {"head-mean CLS map": "entropy_cls_map", "rollout through layer": "entropy_rollout_map"}
        per_layer = {label: np.asarray(metrics[name]["mean"], dtype=float) for label, name in maps.items()
                     if name in metrics}
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

    embeddings = _embedding_figures(inputs, save)
    levels, examples = _image_figures(aggregates, inputs, style, files)
    context = {
        "title": f"vitprobe analysis — {aggregates['model']['model']}",
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
        "classes": _class_tables(aggregates),
        "failures": _failures(out_dir),
        "missing": inputs.missing or [],
        "clip": style.clip,
    }
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    env.filters["num"] = lambda v, fmt="{:.3g}": "–" if v is None or (isinstance(v, float) and math.isnan(v)) \
        else fmt.format(v)
    return env.get_template("report.html.j2").render(**context)


def _replace_folder(new: Path, final: Path) -> None:
    """Put the folder ``new`` at ``final``, the old one (if any) moved aside first and removed after."""
    share(new)
    old = final.with_name(f"{TMP_PREFIX}old-{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def _failures(out_dir: Path) -> list[list[str]]:
    path = out_dir / "failures.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


def _embedding_figures(inputs: ReportInputs, save) -> dict:
    """Patch filters, their principal components, and position similarity; what the model has of them."""
    info: dict = {}
    if inputs.filters is not None:
        n, patch = len(inputs.filters), inputs.filters.shape[1]
        save(filters_figure(inputs.filters, f"Patch-embedding filters: the first {n} of {inputs.filter_count}",
                            subtitle="each filter min-max scaled to its own range"), "filters.png")
        explained = f"{len(inputs.components)} components explain {100 * inputs.explained:.1f}% of the variance"
        save(filters_figure(inputs.components, "Principal components of the patch-embedding filters", ncols=14,
                            subtitle=explained), "filter_components.png")
        info["filters"] = {"count": inputs.filter_count, "patch": int(patch)}
    if inputs.similarity is not None:
        sim = inputs.similarity
        h, w = sim.shape[:2]
        save(position_grid_figure(sim, f"Cosine similarity of position embeddings (learned {h}×{w} table)\n"
                                       "cell (row, col): similarity of that position to every position"),
             "positions.png")
        save(similarity_matrix_figure(sim.reshape(h * w, h * w),
                                      f"Position-embedding similarity, {h * w}×{h * w} (seed 003's view)"),
             "positions_matrix.png")
        used = inputs.used or []
        info["positions"] = {"native": [h, w], "used": [list(g) for g in used],
                             "interpolated": any(tuple(g) != (h, w) for g in used)}
    return info


def _image_figures(aggregates: dict, inputs: ReportInputs, style: Style, files: Path):
    """Spread-level thumbnails (image + map) and example layer grids, drawn from ``inputs``."""
    spread = aggregates.get("spread_levels")
    if not spread:
        return [], []
    levels, examples = [], []
    for level, members in spread["levels"].items():
        shown = []
        for k, item in enumerate(inputs.levels.get(level, [])):
            view = _thumb(item.view)
            name = f"level{level}_{k}.jpg"
            pair = side_by_side([view, overlay(view, item.heat, style)], gap=4)
            atomic_write(files / name, lambda f, pair=pair: pair.save(f, format="JPEG", quality=88), "a thumbnail")
            shown.append({"src": f"{FILES}/{name}", "image": item.image, "entropy": item.entropy})
        values = [m["entropy_cls_map"] for m in members]
        levels.append({"level": level, "count": len(members), "low": min(values), "high": max(values),
                       "shown": shown})
    for k, example in enumerate(inputs.examples):
        fig = grid_figure(example.view, example.panels, style=style,
                          title=f"{Path(example.image).name}: CLS attention per layer (head mean), aggregates and "
                                "rollout")
        name = f"example_{k}.png"
        save_figure(fig, files / name, dpi=80)
        examples.append({"src": f"{FILES}/{name}", "image": example.image})
    return levels, examples
