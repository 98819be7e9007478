"""``vitprobe keypoints``: keypoints, boxes and masks from attention, as JSON, mask PNG and overlay PNG."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from PIL import Image
from tqdm.auto import tqdm

from ..analysis.keypoints import METHODS
from ..analysis.thresholds import Threshold
from ..capture import Capture
from ..cli_common import ModelOpt, fail, image_paths, load_model, unique_dir
from ..evaluate import LocalizeOptions
from ..io.images import ImageLoadError
from ..localize import Localized, capture_for, localize, parse_source

COORDINATES = (
    "x, y in original-image pixels, continuous: (0, 0) is the top-left corner of the image and pixel "
    "(row i, column j) is centred at (j + 0.5, i + 0.5); boxes are pixel edges (x0, y0, x1, y1); "
    "grid row/col are patch indices with patch centres at integers"
)




def register(app: typer.Typer) -> None:
    @app.command()
    def keypoints(
        images: Annotated[list[Path], typer.Argument(help="image files or folders")],
        model: ModelOpt = "offline",
        source: Annotated[str, typer.Option(help="cls, rollout or head:N")] = "cls",
        method: Annotated[str, typer.Option(help=f"one of {', '.join(METHODS)}")] = "components",
        threshold: Annotated[str, typer.Option(help="abs:V, rel:F (of max), pct:P or otsu")] = "otsu",
        fraction: Annotated[float, typer.Option(help="mass method: fraction of the attention mass kept")] = 0.6,
        top_k: Annotated[int, typer.Option(help="keep at most this many keypoints per image")] = 5,
        layer: Annotated[int, typer.Option(help="layer of the CLS map (cls, head:N)")] = -1,
        short_side: Annotated[int | None, typer.Option(
            help="input short side in pixels; the whole image is resized, aspect kept (default: the model's)"
        )] = None,
        out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("vitprobe_keypoints"),
        device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda")] = None,
    ) -> None:
        """Find keypoints, boxes and masks in attention maps; write JSON, mask and overlay per image."""

        try:
            parse_source(source)
            opts = LocalizeOptions(method=method, threshold=Threshold.parse(threshold), fraction=fraction,
                                   top_k=top_k)
        except ValueError as err:
            raise fail(str(err)) from None
        if method not in METHODS:
            raise fail(f"--method takes one of {', '.join(METHODS)}, got {method!r}")
        if not 0.0 < fraction <= 1.0 or top_k < 1 or (short_side is not None and short_side < 1):
            raise fail("--fraction must be in (0, 1], --top-k and --short-side at least 1")
        paths = image_paths(images)
        vit = load_model(model, device)
        try:
            vit.resolve_layers([layer])
        except ValueError as err:
            raise fail(str(err)) from None
        failures, used, records = 0, set(), []
        for path in tqdm(paths, desc="keypoints", unit="image", disable=len(paths) < 2):
            try:
                cap = capture_for(vit, path, source, short_side, layer)
            except ImageLoadError as err:
                failures += 1
                tqdm.write(f"vitprobe: error: {err}", file=sys.stderr)
                continue
            try:
                found = localize(cap, source, opts)[0]
            except ValueError as err:  # no CLS token, or no such head
                raise fail(str(err)) from None
            record = write_result(path, found, cap, unique_dir(out, path.stem, used), source, opts, vit.describe())
            records.append(record)
        coco_path = out / "keypoints_coco.json"
        if records:
            from ..coco import found_to_coco

            coco_path.write_text(json.dumps(found_to_coco(records), indent=1))
        typer.echo(f"{len(records)} of {len(paths)} images with {vit.name}; results in {out.resolve()}"
                   + (f", COCO-style summary {coco_path.name}" if records else ""))
        if failures:
            raise typer.Exit(1)


def write_result(
    path: Path, found: Localized, cap: Capture, out_dir: Path, source: str, opts: LocalizeOptions, model: dict
) -> dict:
    """Write ``keypoints.json``, ``mask.png`` and ``overlay.png`` for one image; return the JSON record."""
    from .. import render
    from ..render.annotate import annotate

    out_dir.mkdir(parents=True, exist_ok=True)
    geometry = found.geometry
    base = render.overlay(cap.images[0], found.heat, alpha=0.45)  # whole-image capture: the view is the image
    points = found.keypoints
    outlined = annotate(base, mask=found.mask, colour=(255, 255, 255), mask_alpha=0.0)
    drawn = annotate(outlined, points=[(k.x, k.y) for k in points], boxes=[k.box for k in points],
                     labels=[str(i + 1) for i in range(len(points))])
    drawn.save(out_dir / "overlay.png")
    Image.fromarray(found.mask.astype(np.uint8) * 255).save(out_dir / "mask.png")
    record = {
        "image": str(path),
        "file_name": path.name,
        "height": geometry.original_hw[0],
        "width": geometry.original_hw[1],
        "model": model["model"],
        "source": source,
        "method": opts.method,
        "threshold": str(opts.threshold) if opts.method != "mass" else None,
        "mass_fraction": opts.fraction if opts.method == "mass" else None,
        "grid_hw": list(cap.layout.grid_hw),
        "patch_size": cap.layout.patch_size,
        "geometry": geometry.to_dict(),
        "coordinates": COORDINATES,
        "keypoints": [k.to_dict() for k in points],
        "boxes": [{"x0": round(k.box[0], 2), "y0": round(k.box[1], 2), "x1": round(k.box[2], 2),
                   "y1": round(k.box[3], 2), "score": k.score} for k in points],
        "mask": "mask.png",
        "mask_pixels": int(found.mask.sum()),
        "overlay": "overlay.png",
    }
    (out_dir / "keypoints.json").write_text(json.dumps(record, indent=2))
    return record
