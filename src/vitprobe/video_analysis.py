"""``vitprobe analyze`` over clips with a video model: attention statistics in space and in time.

Each clip (a video file of a folder, searched recursively, or of a list file) is sampled to the model's
frames (``VideoModel.load_clip``) and goes through the model once; every layer's attention is reduced as
the forward streams (no (B, heads, T, T) kept). Per clip, layer and head the records hold:

| metric | meaning |
|---|---|
| ``mean_attention_distance`` | pixels between the (row, col) centres of query and key patches |
| ``mean_attention_distance_frames`` | the same with \\|t_i − t_j\\| × tubelet size (input frames) for pixels |
| ``entropy_rows`` | mean over all query rows of each row's entropy over all tokens, nats |
| ``entropy_cls`` | the CLS row over all tokens, nats (models with a CLS token) |
| ``temporal_same`` | share of a patch row's attention on patches of its own step, mean over patch queries |
| ``temporal_earlier`` / ``_later`` | the same for earlier / later steps |

Distances and shares drop prefix tokens as queries and keys and do not renormalise rows (prefix mass counts
as distance 0 and in no share), as ``analysis.distance`` defines them. TimeSformer (divided attention):
``mean_attention_distance`` and ``entropy_rows``/``entropy_cls`` come from each block's spatial attention,
``mean_attention_distance_frames`` and the temporal shares from its temporal attention (the spatial one
never crosses frames, the temporal one never crosses positions), and ``entropy_rows_temporal`` is the
temporal attention's row entropy.

Outputs in the run folder: ``records.parquet`` (clip in the ``image`` column, layer, head, metric, value),
``aggregates.json`` (mean and std over clips per layer and head, the layout, references), ``failures.csv``
(clips that could not be read, one line each), and ``report.html`` with the figures in ``report_files/``.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .analysis.accumulate import Moments
from .analysis.distance import PROFILE, MeanDistance, TemporalProfile, distance_bound, uniform_distance
from .analysis.entropy import RowEntropy
from .io.files import atomic_write_text, jsonable
from .io.images import ImageLoadError, printable
from .io.store import RECORD_COLUMNS, atomic_write_bytes, records_table, table_bytes, write_failures_csv
from .layout import TokenLayout
from .models.video import VIDEO_SUFFIXES, VideoModel

HEAD_METRICS = ("mean_attention_distance", "mean_attention_distance_frames", "entropy_rows", "entropy_cls",
                "temporal_same", "temporal_earlier", "temporal_later", "entropy_rows_temporal")
LIST_COMMENT = "#"


def list_clips(source: Path) -> list[Path]:
    """The clips of a folder (searched recursively for ``VIDEO_SUFFIXES``, sorted) or of a text file with one
    path a line (blank lines and ``#`` comments skipped, relative paths from the file's folder).
    ``ImageLoadError`` (one line naming ``source``) when it is neither."""
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not source.is_file():
        raise ImageLoadError(source, "no such file or directory")
    if source.suffix.lower() in VIDEO_SUFFIXES:
        return [source]
    try:
        lines = source.read_text().splitlines()
    except (UnicodeDecodeError, OSError) as err:
        raise ImageLoadError(source, f"not a list of clips ({type(err).__name__})") from None
    clips = []
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith(LIST_COMMENT):
            path = Path(entry).expanduser()
            clips.append(path if path.is_absolute() else source.parent / path)
    return clips


def probe_clips(model: VideoModel, pixels: torch.Tensor) -> tuple[dict[str, torch.Tensor], TokenLayout]:
    """One forward pass over model input (B, F, 3, H, W): {metric: (L, B, heads) float64} (``HEAD_METRICS``
    that apply to the model) and the layout."""
    reducers = {
        "space": MeanDistance(axis="space"),
        "time": MeanDistance(axis="time"),
        "entropy": RowEntropy(),
        "profile": TemporalProfile(),
    }
    cap = model.capture_pixels(pixels, fuse=(), full_layers=(), reducers=reducers, batch_size=pixels.shape[0])
    layout = cap.layout
    timed = cap.temporal if cap.temporal is not None else cap  # divided attention: time from the temporal one
    rows = cap.reduced["entropy"].double()  # (L, B, heads, T)
    metrics = {
        "mean_attention_distance": cap.reduced["space"].double(),
        "mean_attention_distance_frames": timed.reduced["time"].double(),
        "entropy_rows": rows.mean(dim=-1),
    }
    if layout.has_cls:
        metrics["entropy_cls"] = rows[..., layout.cls_index]
    profile = timed.reduced["profile"].double()  # (L, B, heads, 3)
    for i, name in enumerate(PROFILE):
        metrics[f"temporal_{name}"] = profile[..., i]
    if cap.temporal is not None:
        metrics["entropy_rows_temporal"] = cap.temporal.reduced["entropy"].double().mean(dim=-1)
    return metrics, layout


def uniform_frames(layout: TokenLayout) -> float:
    """``mean_attention_distance_frames`` of uniform attention over the patches: the mean of |t_i − t_j|·tubelet
    over all pairs of patches, tubelet·(t² − 1)/(3t)."""
    t = layout.n_steps
    return layout.tubelet * (t * t - 1) / (3 * t)


@dataclass(frozen=True)
class ClipRunResult:
    """What a run over clips found: the aggregates written, and where."""

    aggregates: dict
    out: Path


def run_clip_analysis(model: VideoModel, clips: Sequence[Path], out: Path, batch_size: int = 4,
                      progress: bool = True, report: bool = True) -> ClipRunResult:
    """Analyse ``clips`` into ``out`` (see the module docstring); clips that cannot be read are recorded in
    failures.csv with their one-line reason and the run goes on."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns: dict[str, list] = {key: [] for key in RECORD_COLUMNS}
    failures: list[tuple[str, str]] = []
    moments = {name: Moments((model.num_layers, model.num_heads)) for name in HEAD_METRICS}
    layout = model.layout()
    started = time.perf_counter()
    analysed = 0
    pending: list[tuple[str, torch.Tensor]] = []

    def flush() -> None:
        nonlocal analysed, layout
        if not pending:
            return
        names = [name for name, _ in pending]
        metrics, layout = probe_clips(model, torch.stack([p for _, p in pending]))
        for name, values in metrics.items():
            moments[name].update(values.transpose(0, 1))
        for b, clip in enumerate(names):
            for name in HEAD_METRICS:
                if name not in metrics:
                    continue
                for layer, per_head in enumerate(metrics[name][:, b].tolist()):
                    for head, value in enumerate(per_head):
                        columns["image"].append(clip)
                        columns["layer"].append(layer)
                        columns["head"].append(head)
                        columns["metric"].append(name)
                        columns["value"].append(value)
        analysed += len(pending)
        pending.clear()

    for clip in tqdm(clips, desc="analyze clips", unit="clip", disable=not progress):
        try:
            pixels, _, _ = model.load_clip(clip)
        except (ValueError, OSError) as err:
            failures.append((printable(clip), str(err).removeprefix(f"{clip}: ")))
            continue
        pending.append((printable(clip), pixels))
        if len(pending) == batch_size:
            flush()
    flush()
    seconds = time.perf_counter() - started
    atomic_write_bytes(out / "records.parquet", table_bytes(records_table(columns)))
    write_failures_csv(out / "failures.csv", failures)
    metrics = {}
    for name, acc in moments.items():
        stats = acc.compute()
        if int(stats["count"]):
            metrics[name] = {"shape": "(layers, heads)", "mean": stats["mean"].tolist(), "std": stats["std"].tolist(),
                             "clips": int(stats["count"])}
    aggregates = {
        "model": model.describe(),
        "clips": {"listed": len(clips), "analysed": analysed, "failed": len(failures)},
        "layout": layout.to_dict(),
        "layers": list(range(model.num_layers)),
        "metrics": jsonable(metrics),
        "conventions": {
            "distances": "prefix tokens dropped as queries and keys, rows not renormalised (prefix mass: distance 0)",
            "mean_attention_distance_frames": "|t_i - t_j| x tubelet size in input frames in place of pixels",
            "temporal": "shares of each patch row on patches of the same / an earlier / a later tubelet step",
            "divided_attention": ("spatial distance and entropies from the spatial attention, frames distance and "
                                  "temporal shares from the temporal attention") if model.temporal_sites else None,
        },
        "distance_bound_px": distance_bound(layout),
        "distance_uniform_px": uniform_distance(layout),
        "distance_bound_frames": (layout.n_steps - 1) * layout.tubelet,
        "distance_uniform_frames": uniform_frames(layout),
        "entropy_max_nats": math.log(layout.n_tokens),
        "timing": {"seconds": seconds, "clips_per_second": analysed / seconds if seconds > 0 else None},
    }
    atomic_write_text(out / "aggregates.json", json.dumps(aggregates, indent=1))
    if report and analysed:
        write_clip_report(out, aggregates)
    return ClipRunResult(aggregates, out)


def write_clip_report(out: Path, aggregates: dict) -> Path:
    """``out/report.html``: distance in space against distance in time per layer, the temporal shares per
    layer and a table of the layer means (figures in ``out/report_files``)."""
    from .render.figures import save_figure
    from .render.space_time import space_time_figure, temporal_profile_figure

    files = out / "report_files"
    files.mkdir(exist_ok=True)
    metrics = aggregates["metrics"]
    space = torch.tensor(metrics["mean_attention_distance"]["mean"])
    frames = torch.tensor(metrics["mean_attention_distance_frames"]["mean"])
    save_figure(space_time_figure(space, frames, aggregates["distance_uniform_px"],
                                  aggregates["distance_uniform_frames"]), files / "space_time.png")
    shares = torch.stack([torch.tensor(metrics[f"temporal_{name}"]["mean"]) for name in PROFILE], dim=-1)
    save_figure(temporal_profile_figure(shares), files / "temporal_profile.png")
    model = aggregates["model"]
    rows = []
    for layer in aggregates["layers"]:
        cells = [f"{float(space[layer].mean()):.1f}", f"{float(frames[layer].mean()):.2f}"]
        cells += [f"{float(shares[layer, :, i].mean()):.1%}" for i in range(3)]
        cells.append(f"{sum(metrics['entropy_rows']['mean'][layer]) / len(metrics['entropy_rows']['mean'][layer]):.3f}")
        rows.append("<tr><td>" + str(layer) + "</td><td>" + "</td><td>".join(cells) + "</td></tr>")
    clips = aggregates["clips"]
    layout = aggregates["layout"]
    text = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>vitprobe: {html.escape(model['model'])} on clips</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.2em .6em;text-align:right}}</style>
</head><body>
<h1>Space-time attention of {html.escape(model['model'])}</h1>
<p>{clips['analysed']} of {clips['listed']} clips analysed, {clips['failed']} failed (failures.csv).
{layout['time_steps']} tubelet steps of {layout['tubelet']} frame(s), a {layout['grid_hw'][0]}x{layout['grid_hw'][1]}
grid of {layout['patch_size']}-px patches, prefix tokens: {html.escape(', '.join(layout['prefix_tokens']) or 'none')}.
Distances drop prefix tokens as queries and keys and do not renormalise rows.</p>
<h2>Distance in space against distance in time, per layer</h2>
<img src="report_files/space_time.png" alt="mean attention distance in pixels against frames, per layer">
<h2>Where each layer attends in time</h2>
<img src="report_files/temporal_profile.png" alt="share of attention on the same, earlier and later steps">
<h2>Layer means over heads and clips</h2>
<table><tr><th>layer</th><th>distance px</th><th>distance frames</th><th>same step</th><th>earlier</th>
<th>later</th><th>row entropy (nats)</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    return atomic_write_text(out / "report.html", text)
