"""``vitprobe analyze`` end to end on 200 photos of mixed sizes beside the plain forward on decoded tensors.

    .venv/bin/python benchmarks/analyze_throughput.py > /tmp/throughput.md

Writes 200 photos (scikit-image's samples, resized: 20 JPEGs of 4000×3000 = 12 Mpx, the rest JPEG
and PNG from 640×480 to 1920×1080, some portrait), then measures on the offline default model:

- (a) the plain fused forward over the 200 images already decoded and preprocessed in memory
  (``model.prepare`` before the clock starts, batches of 8, ``torch.no_grad()``): the limit;
- (b) ``vitprobe analyze`` on the photos, ``--workers 0`` (decoding in the main process);
- (c) the same with ``--workers 1`` (one loader process decodes the next batch during the forward);
- (d) ``vitprobe analyze --workers 0`` on the same 200 images already cut to the model's 448×448 and
  stored as PNG: what loading costs when there is almost nothing to decode.

(b)–(d) are the command itself in a child process, timed from start to exit (model load and the
final merge included) and, separately, by the run's own ``timing.json`` (the batch loop; its
images/s is what the progress bar shows). Ratios are images/s over (a)'s. Peak memory is the
child's peak RSS (``timing.json``) and (a)'s own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import vitprobe as vp

SIZES = [((4000, 3000), "jpg", 20), ((1920, 1080), "jpg", 50), ((1080, 1440), "jpg", 30), ((1024, 768), "jpg", 50),
         ((800, 600), "png", 30), ((640, 480), "jpg", 20)]
"""(width, height), format, count: 200 photos."""


def write_photos(folder: Path) -> list[Path]:
    """The mixed photos, cycling through the sample images (each resized, JPEG quality 90)."""
    samples = folder / "_samples"
    vp.write_samples(samples)
    sources = [Image.open(p).convert("RGB") for p in sorted(samples.iterdir())]
    photos, i = [], 0
    for (w, h), fmt, count in SIZES:
        for _ in range(count):
            path = folder / f"photo{i:03d}_{w}x{h}.{fmt}"
            image = sources[i % len(sources)].resize((w, h), Image.Resampling.BICUBIC)
            image.save(path, quality=90) if fmt == "jpg" else image.save(path)
            photos.append(path)
            i += 1
    return photos


def write_ready(photos: list[Path], model: vp.VitModel, folder: Path) -> None:
    """The photos cut to the model's input (short side, centre crop) as PNG, so that loading is cheap."""
    folder.mkdir()
    side = model.preprocess.crop_hw or model.preprocess.resize_hw
    for path in photos:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = max(side[0] / image.height, side[1] / image.width)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
            left, top = (image.width - side[1]) // 2, (image.height - side[0]) // 2
            image.crop((left, top, left + side[1], top + side[0])).save(folder / f"{path.stem}.png")


def plain_forward(model: vp.VitModel, photos: list[Path], batch: int) -> tuple[float, int]:
    """Seconds of the fused forward over the photos decoded beforehand (best of two passes), peak RSS."""
    import torch

    start = time.perf_counter()
    pixels = [model.prepare([vp.load_image(p) for p in photos[i : i + batch]])[0] for i in range(0, len(photos), batch)]
    print(f"decoding and preprocessing the {len(photos)} photos in one process (full decode, no draft mode): "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        with torch.no_grad():
            for x in pixels:
                model.forward(x)
        best = min(best, time.perf_counter() - start)
    return best, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def analyze(source: Path, out: Path, batch: int, workers: int) -> tuple[float, dict]:
    """Wall seconds of ``vitprobe analyze`` from start to exit, and its timing.json."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vitprobe", "analyze", str(source), "--out", str(out),
                           "--batch-size", str(batch), "--workers", str(workers), "--no-report", "--no-progress"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"vitprobe analyze failed: {done.stderr.strip().splitlines()[-1]}")
    return wall, json.loads((out / "timing.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vitprobe-throughput-") as tmp:
        root = Path(tmp)
        photos = write_photos(root / "photos")
        model = vp.load("offline")
        write_ready(photos, model, root / "ready")
        n = len(photos)
        megapixels = sum(np.prod(Image.open(p).size) for p in photos) / 1e6
        plain_s, plain_rss = plain_forward(model, photos, args.batch_size)
        del model
        cases = {"(b) `vitprobe analyze`, photos, `--workers 0`": ("photos", 0),
                 "(c) `vitprobe analyze`, photos, `--workers 1`": ("photos", 1),
                 "(d) `vitprobe analyze`, 448×448 PNGs, `--workers 0`": ("ready", 0)}
        runs = {name: analyze(root / source, root / f"out{i}", args.batch_size, workers)
                for i, (name, (source, workers)) in enumerate(cases.items())}
    print(f"{n} photos, {megapixels:.0f} Mpx in all (20 of 12 Mpx); offline model, batch {args.batch_size}\n")
    print("| run | wall s | images/s (wall) | × (a) | images/s (batch loop) | × (a) | peak RSS (GB) |")
    print("|---|---|---|---|---|---|---|")
    plain_rate = n / plain_s
    print(f"| (a) plain fused forward, decoded tensors | {plain_s:.1f} | {plain_rate:.2f} | 1.00 | – | – | "
          f"{plain_rss / 1e9:.2f} |")
    for name, (wall, timing) in runs.items():
        loop_rate = timing["images_per_second"]
        rss = max(timing["peak_rss_mb_per_rank"]) / 1e3
        print(f"| {name} | {wall:.1f} | {n / wall:.2f} | {n / wall / plain_rate:.2f} | {loop_rate:.2f} | "
              f"{loop_rate / plain_rate:.2f} | {rss:.2f} |")


if __name__ == "__main__":
    main()
