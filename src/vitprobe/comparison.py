"""Model comparison: two or more ``vitprobe analyze`` runs side by side (``vp.compare``, ``vitprobe compare``).

The ViT paper (fig. 7) and probing-vits plot the mean attention distance of every head against depth
for several models in one figure; this job does that for analyze runs on the same images with
different models or settings:

- every statistic is recomputed from each run's ``records.parquet`` over the images the runs have in
  common (matched by name; if no name is shared, by the name relative to each run's own folder), so
  runs over different image sets compare on the same images, and the one line ``Comparison.matched``
  says how many;
- per layer: mean attention distance in both conventions (prefix mass = distance 0, rows renormalised
  over the patches), CLS-row, all-row, CLS-map and rollout-map entropy, each head and the head mean,
  against normalised depth (layer + 1) / L so that 12- and 24-layer models line up;
- the spread levels (quartiles of the spread layer's CLS-map entropy, seed 004) side by side: images
  per level, and per pair of runs the share of common images in the same level and the Spearman rank
  correlation of that entropy over the images;
- with ``maps=True`` (the default) the per-image agreement of the runs' maps: each run's model is loaded
  from its manifest, the last-layer ``cls`` and the ``rollout`` maps of the common images are drawn, put
  on each photo's own pixels (so different grids, input sizes and crops line up) and compared by
  Spearman rank correlation where both models saw the photo.

``write`` puts ``layers.csv``, ``runs.csv``, ``levels.csv``, (``maps.csv``), ``comparison.md``, the
figures and ``compare.html`` in one folder. Pure reading and arithmetic apart from the optional maps.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .choices import COMPARED_MAPS
from .methods.base import get_method

HEAD_METRICS = ("mean_attention_distance", "mean_attention_distance_renormalized", "entropy_cls", "entropy_rows")
"""Metrics recorded per layer and head, (L, heads)."""
LAYER_METRICS = ("entropy_cls_map", "entropy_rollout_map")
"""Metrics recorded per layer, (L,)."""
FORMAT_PREFIX = "vitprobe-analyze-"


class NotARun(ValueError):
    """A folder that is not a finished ``vitprobe analyze`` run; the message is one line saying why."""


@dataclass
class Run:
    """One analyze run as ``compare`` reads it: ``name`` (its folder's name), the ``model`` spec and its
    description from ``aggregates.json``, ``images`` (the names in ``records.parquet``) and ``values``:
    metric -> (N, L, heads) or (N, L) array, row i for ``images[i]`` (NaN where nothing was recorded)."""

    path: Path
    name: str
    manifest: dict
    aggregates: dict
    images: list[str] = field(default_factory=list)
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def rows(self, names: Sequence[str]) -> np.ndarray:
        """Row indices of ``names`` in ``values``."""
        index = {name: i for i, name in enumerate(self.images)}
        return np.array([index[name] for name in names], dtype=np.int64)

    @property
    def model(self) -> str:
        return str(self.aggregates["model"]["model"])

    @property
    def n_layers(self) -> int:
        return len(self.aggregates["layers"])

    @property
    def n_heads(self) -> int:
        return int(self.aggregates["model"]["heads"])

    @property
    def depth(self) -> np.ndarray:
        """Normalised depth (layer + 1) / L of each layer, in (0, 1]."""
        return (np.arange(self.n_layers) + 1) / self.n_layers

    @property
    def input_hw(self) -> list[tuple[int, int]]:
        return [tuple(s["input_hw"]) for s in self.aggregates.get("input_sizes", [])]


def read_run(path: str | Path) -> Run:
    """Read a finished analyze run; ``NotARun`` (one line naming the folder) for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise NotARun(f"{path}: no such folder")
    manifest_file, aggregates_file, records_file = (path / n for n in ("manifest.json", "aggregates.json",
                                                                      "records.parquet"))
    if not manifest_file.is_file():
        raise NotARun(f"{path} is not a vitprobe analyze run (no manifest.json): give folders written by "
                      "vitprobe analyze --out DIR")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as err:
        raise NotARun(f"{path}: manifest.json is not readable JSON ({err})") from None
    if not str(manifest.get("format", "")).startswith(FORMAT_PREFIX):
        raise NotARun(f"{path} is not a vitprobe analyze run (manifest format {manifest.get('format')!r})")
    if not aggregates_file.is_file() or not records_file.is_file():
        missing = "aggregates.json" if not aggregates_file.is_file() else "records.parquet"
        raise NotARun(f"{path} is an unfinished analyze run (no {missing}): run the same vitprobe analyze "
                      "command again to finish it")
    try:
        aggregates = json.loads(aggregates_file.read_text())
    except (OSError, ValueError) as err:
        raise NotARun(f"{path}: aggregates.json is not readable JSON ({err})") from None
    if not aggregates.get("images", {}).get("analysed"):
        raise NotARun(f"{path}: the run analysed no image")
    run = Run(path, path.resolve().name, manifest, aggregates)
    try:
        run.images, run.values = _read_records(records_file, run.n_layers, run.n_heads)
    except (OSError, ValueError, KeyError) as err:
        raise NotARun(f"{path}: records.parquet is not readable ({str(err).splitlines()[0]})") from None
    return run


def _read_records(path: Path, n_layers: int, n_heads: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """(image names, metric -> (N, L, heads) for per-head metrics or (N, L) for per-layer ones)."""
    from .io.store import require

    pa = require("pyarrow")
    pc = require("pyarrow.compute")
    pq = require("pyarrow.parquet")
    table = pq.read_table(path, columns=["image", "layer", "head", "metric", "value"])
    images = pc.dictionary_encode(table.column("image")).combine_chunks()
    names = images.dictionary.to_pylist()
    code = images.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    metric_column = table.column("metric").cast(pa.string())
    layer = table.column("layer").to_numpy().astype(np.int64)
    head = table.column("head").fill_null(-1).to_numpy().astype(np.int64)
    value = table.column("value").to_numpy().astype(np.float64)
    out = {}
    for metric in (*HEAD_METRICS, *LAYER_METRICS):
        rows = pc.equal(metric_column, metric).to_numpy(zero_copy_only=False)
        if not rows.any():
            continue
        if metric in HEAD_METRICS:
            array = np.full((len(names), n_layers, n_heads), np.nan)
            array[code[rows], layer[rows], head[rows]] = value[rows]
        else:
            array = np.full((len(names), n_layers), np.nan)
            array[code[rows], layer[rows]] = value[rows]
        out[metric] = array
    return names, out


def _relative(names: list[str]) -> dict[str, str]:
    """Each name relative to the deepest folder all of them share (``a/b/x.png`` -> ``x.png``)."""
    if len(names) == 1:
        return {names[0]: Path(names[0]).name}
    common = os.path.commonpath(names) if all(n.startswith("/") for n in names) or \
        not any(n.startswith("/") for n in names) else ""
    cut = len(common) + 1 if common else 0
    return {n: n[cut:] for n in names}


def match_images(runs: Sequence[Run]) -> tuple[dict[str, list[str]], str]:
    """The images the runs have in common: key -> each run's own name for it, and one line saying how
    they were matched and how many there are."""
    names = [set(run.images) for run in runs]
    common = set.intersection(*names)
    how = "by name"
    if common:
        keys = {n: [n] * len(runs) for n in sorted(common)}
    else:
        relative = [_relative(sorted(n)) for n in names]
        inverse = [{rel: name for name, rel in r.items()} for r in relative]
        shared = set.intersection(*(set(i) for i in inverse))
        keys = {k: [inv[k] for inv in inverse] for k in sorted(shared)}
        how = "by name relative to each run's folder"
    counts = ", ".join(f"{run.name} {len(n)}" for run, n in zip(runs, names, strict=True))
    if not keys:
        raise NotARun(f"the runs have no image in common ({counts} images): compare runs over the same images")
    line = f"{len(keys)} images in common ({how}; {counts} images)"
    return keys, line


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equally long vectors (average ranks for ties); NaN if constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return math.nan
    return float(spearmanr(a[keep], b[keep]).statistic)


@dataclass
class Comparison:
    """Two or more analyze runs over their common images.

    - ``runs``: the ``Run``s in the order given; ``matched``: one line, how many images they share;
    - ``curves``: run name -> metric -> (L, heads) or (L,) means over the common images;
    - ``levels``: run name -> (edges, level of each common image 1..4 or None without CLS);
    - ``level_agreement``: (run a, run b) -> (share of common images in the same level, Spearman of the
      spread layer's CLS-map entropy over the images);
    - ``maps``: (run a, run b, method) -> per-image Spearman of the two runs' maps (``maps=True`` only);
      ``maps_note``: why map agreement is absent or partial.
    """

    runs: list[Run]
    keys: list[str]
    matched: str
    curves: dict[str, dict[str, np.ndarray]]
    levels: dict[str, tuple[list[float], list[int] | None]]
    level_agreement: dict[tuple[str, str], tuple[float, float]]
    maps: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    maps_note: str = ""

    def __repr__(self) -> str:
        return f"Comparison({', '.join(r.name for r in self.runs)}: {self.matched})"

    # --- tables -------------------------------------------------------------------------------------

    def layer_rows(self) -> list[dict[str, Any]]:
        """One row per run and layer: depth, distance (mean / min / max head), renormalised, entropies."""
        rows = []
        for run in self.runs:
            c = self.curves[run.name]
            for layer in range(run.n_layers):
                row: dict[str, Any] = {"run": run.name, "model": run.model, "layer": layer,
                                       "depth": round(float(run.depth[layer]), 4)}
                for metric in HEAD_METRICS:
                    v = c.get(metric)
                    row[metric] = _num(None if v is None else np.nanmean(v[layer]))
                    if metric == "mean_attention_distance":
                        row["mean_attention_distance_min_head"] = _num(None if v is None else np.nanmin(v[layer]))
                        row["mean_attention_distance_max_head"] = _num(None if v is None else np.nanmax(v[layer]))
                for metric in LAYER_METRICS:
                    v = c.get(metric)
                    row[metric] = _num(None if v is None else v[layer])
                rows.append(row)
        return rows

    def run_rows(self) -> list[dict[str, Any]]:
        """One row per run: folder, model, family, shape, input size, images, distance and entropy at a glance."""
        rows = []
        for run in self.runs:
            model = run.aggregates["model"]
            dist = self.curves[run.name].get("mean_attention_distance")
            cls_map = self.curves[run.name].get("entropy_cls_map")
            rows.append({
                "run": run.name, "model": run.model, "family": model.get("family", ""), "layers": run.n_layers,
                "heads": run.n_heads, "patch_px": model.get("patch_size"),
                "input": " ".join(f"{h}x{w}" for h, w in run.input_hw),
                "images_analysed": run.aggregates["images"]["analysed"], "images_compared": len(self.keys),
                "distance_first_layer_px": _num(None if dist is None else np.nanmean(dist[0])),
                "distance_last_layer_px": _num(None if dist is None else np.nanmean(dist[-1])),
                "distance_uniform_px": _num(run.aggregates.get("distance_uniform_px")),
                "entropy_cls_map_last_layer": _num(None if cls_map is None else cls_map[-1]),
            })
        return rows

    def level_rows(self) -> list[dict[str, Any]]:
        rows = []
        for run in self.runs:
            edges, levels = self.levels[run.name]
            counts = {k: (None if levels is None else sum(1 for v in levels if v == k)) for k in (1, 2, 3, 4)}
            rows.append({"run": run.name, "model": run.model, "edges": " ".join(f"{e:.4f}" for e in edges),
                         **{f"level_{k}": n for k, n in counts.items()}})
        return rows

    def map_rows(self) -> list[dict[str, Any]]:
        rows = []
        for (a, b, method), values in self.maps.items():
            for key, rho in zip(self.keys, values, strict=False):
                rows.append({"image": key, "run_a": a, "run_b": b, "method": method, "spearman": _num(rho)})
        return rows

    def markdown(self) -> str:
        """The comparison as Markdown: the runs, the layers side by side, the spread levels, map agreement."""
        out = [f"# vitprobe comparison: {', '.join(r.name for r in self.runs)}", "", self.matched, ""]
        out += _md_table(self.run_rows())
        out += ["", "## Per layer (means over the common images; distance in px of the model input)", ""]
        out += _md_table([{k: v for k, v in row.items() if k != "model"} for row in self.layer_rows()])
        out += ["", "## Spread levels (quartiles of each run's own CLS-map entropy at its spread layer)", ""]
        out += _md_table(self.level_rows())
        if self.level_agreement:
            out += ["", "| runs | same level | Spearman of CLS-map entropy |", "|---|---|---|"]
            out += [f"| {a} / {b} | {_fmt(s, '{:.0%}')} | {_fmt(r, '{:.3f}')} |"
                    for (a, b), (s, r) in self.level_agreement.items()]
        out += ["", "## Agreement of the maps", ""]
        if self.maps:
            out += ["| runs | method | images | mean Spearman | min | max |", "|---|---|---|---|---|---|"]
            for (a, b, method), values in self.maps.items():
                v = np.asarray(values, dtype=float)
                out.append(f"| {a} / {b} | {method} | {int(np.isfinite(v).sum())} | {_fmt(np.nanmean(v))} | "
                           f"{_fmt(np.nanmin(v))} | {_fmt(np.nanmax(v))} |")
        if self.maps_note:
            out.append(self.maps_note)
        return "\n".join(out) + "\n"

    # --- files --------------------------------------------------------------------------------------

    def write(self, out: str | Path) -> Path:
        """Write the tables (CSV, Markdown), the figures and ``compare.html`` into ``out``; returns the page."""
        from .io.files import atomic_write_text
        from .render.compare import write_page

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tables = {"layers.csv": self.layer_rows(), "runs.csv": self.run_rows(), "levels.csv": self.level_rows()}
        if self.maps:
            tables["maps.csv"] = self.map_rows()
        for name, rows in tables.items():
            atomic_write_text(out / name, _csv(rows), f"the comparison's {name}")
        atomic_write_text(out / "comparison.md", self.markdown(), "the comparison's Markdown table")
        return write_page(out, self)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _fmt(value: Any, fmt: str = "{:.3g}") -> str:
    value = _num(value) if not isinstance(value, str) else value
    return "–" if value is None else fmt.format(value)


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def _md_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(v) if isinstance(v, float) or v is None else str(v)
                                       for v in row.values()) + " |")
    return lines


def _curves(run: Run, images: list[str]) -> dict[str, np.ndarray]:
    """Means over ``images`` of every metric the run recorded (a model without CLS has no CLS metrics)."""
    rows = run.rows(images)
    return {metric: np.nanmean(array[rows], axis=0) for metric, array in run.values.items()
            if np.isfinite(array[rows]).any()}


def _spread_values(run: Run, images: list[str]) -> np.ndarray | None:
    """The spread layer's CLS-map entropy of each of ``images`` (None without spread levels)."""
    spread = run.aggregates.get("spread_levels")
    if not spread or "entropy_cls_map" not in run.values:
        return None
    return run.values["entropy_cls_map"][run.rows(images), int(spread["layer"])]


def _levels(run: Run, images: list[str]) -> tuple[list[float], list[int] | None]:
    """The run's own level edges (over all its images) and the level 1..4 of each of ``images``: level k
    holds (edge k-2, edge k-1], as ``analysis.entropy.spread_levels``."""
    values = _spread_values(run, images)
    if values is None:
        return [], None
    edges = [float(e) for e in run.aggregates["spread_levels"]["edges"]]
    return edges, [int(v) + 1 for v in np.searchsorted(edges, values, side="left")]


def compare(
    runs: Sequence[str | Path | Run],
    out: str | Path | None = None,
    *,
    maps: bool = True,
    map_methods: str | Sequence[str] = COMPARED_MAPS,
    map_images: int = 16,
    models: dict[str, Any] | None = None,
    device: str | None = None,
) -> Comparison:
    """Put two or more ``vitprobe analyze`` runs side by side (see the module docstring).

    ``runs``: run folders (or ``Run``s from ``read_run``); a folder that is not a finished analyze run
    raises ``NotARun`` (one line). ``out``: write the tables, figures and ``compare.html`` there.
    ``maps``: also compare the runs' maps of ``map_methods`` (registry names, comma-separated or a list;
    default ``cls`` of the last layer and ``rollout``; a method a run's model cannot draw is left out of
    that run with a note) on the first ``map_images`` common images that are files here, loading each
    run's model from its manifest (or from ``models``: run name -> model spec or loaded ``VitModel``); a
    model that cannot be loaded, or images inside shards, leave map agreement out with
    a note (``Comparison.maps_note``).
    """
    read = [run if isinstance(run, Run) else read_run(run) for run in runs]
    if len(read) < 2:
        raise ValueError("compare needs at least two analyze runs")
    base = [run.name for run in read]
    for run, name in zip(read, base, strict=True):  # two folders of one name: tell them apart by their parent
        if base.count(name) > 1:
            run.name = f"{run.path.resolve().parent.name}/{name}"
    names = [run.name for run in read]
    if len(set(names)) < len(names):
        raise ValueError(f"a run is given twice: {', '.join(names)}")
    keys, matched = match_images(read)
    order = list(keys)
    curves, levels = {}, {}
    for i, run in enumerate(read):
        own = [keys[k][i] for k in order]
        curves[run.name] = _curves(run, own)
        levels[run.name] = _levels(run, own)
    agreement = {}
    for i, a in enumerate(read):
        for b in read[i + 1:]:
            la, lb = levels[a.name][1], levels[b.name][1]
            if la is None or lb is None:
                continue
            same = float(np.mean([x == y for x, y in zip(la, lb, strict=True)]))
            ea = _spread_values(a, [keys[k][read.index(a)] for k in order])
            eb = _spread_values(b, [keys[k][read.index(b)] for k in order])
            agreement[(a.name, b.name)] = (same, _spearman(ea, eb))
    result = Comparison(read, order, matched, curves, levels, agreement)
    if maps:
        names = map_methods.split(",") if isinstance(map_methods, str) else list(map_methods)
        for name in names:
            get_method(name)  # an unknown name is one line before any model loads
        result.maps, result.maps_note = map_agreement(read, keys, map_images, models or {}, device, names)
    if out is not None:
        result.write(out)
    return result


PIXELS_SIDE = 160
"""Maps are compared on the photo's pixels subsampled to at most this many on the longer side."""


def _on_pixels(result, image: int) -> np.ndarray:
    """The map on the original photo's pixels (NaN where the model saw nothing), every k-th pixel so the
    longer side has at most ``PIXELS_SIDE``: photos of one size subsample alike in every run."""
    full = result.on_image(image).numpy()
    step = max(1, math.ceil(max(full.shape) / PIXELS_SIDE))
    return full[::step, ::step]


def map_agreement(runs: Sequence[Run], keys: dict[str, list[str]], limit: int, models: dict[str, Any],
                  device: str | None, methods: Sequence[str]) -> tuple[dict[tuple[str, str, str], list[float]], str]:
    """Per image and pair of runs, the Spearman correlation of their maps of each of ``methods``, each put
    on the photo's own pixels (``Attribution.on_image``, bilinear) and compared where both models saw the
    photo, so different grids, input sizes and crops compare on the same pixels; and a note
    on what was left out."""
    from .methods import attribute, check
    from .models import load

    chosen = [k for k in keys if all(Path(name).is_file() for name in keys[k])][:limit]
    if not chosen:
        return {}, ("map agreement left out: no common image is a file here (images inside shards or tables, "
                    "or named relative to another working folder)")
    drawn: dict[str, dict[str, list[np.ndarray]]] = {}
    notes = []
    for i, run in enumerate(runs):
        spec = models.get(run.name, run.model)
        try:
            model = load(spec, device=device) if isinstance(spec, str) else spec
        except Exception as err:  # noqa: BLE001 - any failure to load leaves this run's maps out, said in one line
            notes.append(f"{run.name}: model {spec!r} not loadable here ({str(err).splitlines()[0][:160]})")
            continue
        size = tuple(run.manifest["size"]) if run.manifest.get("size") else None
        paths = [keys[k][i] for k in chosen]
        drawable = []
        for method in methods:  # the model's own refusal (no CLS token, no head, ...) leaves that method out
            try:
                check(model, method)
                drawable.append(method)
            except ValueError as err:
                notes.append(f"{run.name}: {method} ({str(err).splitlines()[0][:160]})")
        if drawable:
            results = attribute(model, paths, method=drawable, size=size)
            drawn[run.name] = {res.method: [_on_pixels(res, k) for k in range(len(paths))] for res in results}
    out: dict[tuple[str, str, str], list[float]] = {}
    names = [run.name for run in runs if run.name in drawn]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for method in methods:
                if method not in drawn[a] or method not in drawn[b]:
                    continue
                out[(a, b, method)] = [_spearman(x, y) for x, y in zip(drawn[a][method], drawn[b][method],
                                                                        strict=True)]
    note = f"map agreement on {len(chosen)} of {len(keys)} common images"
    if notes:
        note += "; left out: " + "; ".join(notes)
    return out, note
