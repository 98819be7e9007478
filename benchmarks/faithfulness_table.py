"""The faithfulness table of docs/evaluation.md: ``vp.faithfulness`` over photos, one image per run
(resumable), combined.

Each photo is measured by the public ``vp.faithfulness`` alone (its results written under
``OUT/images/<name>``; a photo already there is not measured again), then the runs are combined
(``Faithfulness.combine``) and written to ``OUT``. Printed: the markdown table of means with 95 %
bootstrap intervals and seconds per image, and the paired difference of each method from the random
baseline per metric (mean over the photos of method − random, with its interval; the sign is turned
so that positive is better), which says which methods beat the random map, on what, by how much.

Run: ``.venv/bin/python benchmarks/faithfulness_table.py PHOTO... --out DIR --methods cls,rollout
[--size 224 224] [--randomisation-steps 12] [--target self]``.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

import vitprobe as vp
from vitprobe.faithfulness import BASELINES, METRICS, Faithfulness, faithfulness, mean_interval

BETTER = {"deletion_auc": -1, "insertion_auc": 1, "positive_auc": -1, "negative_auc": 1, "randomisation_rho": -1}
HEADERS = {"deletion_auc": "deletion ↓", "insertion_auc": "insertion ↑", "positive_auc": "positive ↓",
           "negative_auc": "negative ↑", "randomisation_rho": "randomisation ρ ↓"}


def measure(photos: list[Path], out: Path, methods: list[str], size: tuple[int, int] | None, steps: int,
            target: str | None) -> Faithfulness:
    model = vp.load()
    reports = []
    for photo in photos:
        folder = out / "images" / photo.stem
        if not (folder / "faithfulness.json").is_file():
            start = time.perf_counter()
            report = faithfulness(model, [photo], methods, target=target, size=size, randomisation_steps=steps)
            report.write(folder)
            print(f"{photo.name}: {time.perf_counter() - start:.0f} s", flush=True)
        reports.append(Faithfulness.read(folder))
    combined = Faithfulness.combine(reports)
    combined.write(out)
    return combined


def cell(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]" if not math.isnan(low) else f"{mean:.3f}"


def tables(report: Faithfulness) -> str:
    lines = ["| method | " + " | ".join(HEADERS[m] for m in METRICS) + " | s / image |",
             "|---|" + "---|" * (len(METRICS) + 1)]
    for row in report.summary():
        seconds = "–" if math.isnan(row["seconds_per_image"]) else f"{row['seconds_per_image']:.1f}"
        lines.append(f"| {row['method']} | " + " | ".join(cell(row[m], row[f"{m}_low"], row[f"{m}_high"])
                                                         for m in METRICS) + f" | {seconds} |")
    per_image = {(r["image"], r["method"]): r for r in report.rows()}
    lines += ["", "Paired difference from `baseline-random` (mean over the photos, sign turned so that > 0 is "
              "better; 95 % bootstrap interval):", "",
              "| method | " + " | ".join(HEADERS[m].rstrip(" ↓↑") for m in METRICS) + " |",
              "|---|" + "---|" * len(METRICS)]
    for method in report.methods:
        if method in BASELINES:
            continue
        cells = []
        for metric in METRICS:
            diffs = np.array([BETTER[metric] * (per_image[(image, method)][metric]
                                                - per_image[(image, BASELINES[0])][metric])
                              for image in report.images if (image, method) in per_image])
            mean, low, high = mean_interval(diffs)
            mark = " ✓" if not math.isnan(low) and low > 0 else (" ✗" if not math.isnan(high) and high < 0 else "")
            cells.append(cell(mean, low, high) + mark)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", required=True, help="comma-separated registry names")
    parser.add_argument("--size", type=int, nargs=2, default=None)
    parser.add_argument("--randomisation-steps", type=int, default=12)
    parser.add_argument("--target", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    report = measure(sorted(args.photos), args.out, args.methods.split(","),
                     tuple(args.size) if args.size else None, args.randomisation_steps, args.target)
    print(f"{len(report.images)} photos, {report.score}; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(tables(report))


if __name__ == "__main__":
    main()
