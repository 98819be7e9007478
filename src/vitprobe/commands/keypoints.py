"""``vitprobe keypoints``: keypoints, boxes and masks from attention, as JSON, mask PNG and overlay PNG."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..choices import DEFAULT_CLIP, FINDERS
from ..cli_common import (
    ACCEPTS_METHOD_OPTIONS,
    METHOD_OPTIONS_HELP,
    AlphaOpt,
    ClipOpt,
    CmapOpt,
    MethodOpt,
    ModelOpt,
    UpsampleOpt,
    check_model_spec,
    fail,
    image_paths,
    load_model,
    method_specs,
    style_from,
    unique_dir,
)

if TYPE_CHECKING:
    from ..evaluate import LocalizeOptions
    from ..localization import Localized
    from ..methods import Attribution
    from ..render.style import Style

COORDINATES = (
    "x, y in original-image pixels, continuous: (0, 0) is the top-left corner of the image and pixel "
    "(row i, column j) is centred at (j + 0.5, i + 0.5); boxes are pixel edges (x0, y0, x1, y1); "
    "grid row/col are patch indices with patch centres at integers"
)




def register(app: typer.Typer) -> None:
    @app.command(context_settings=ACCEPTS_METHOD_OPTIONS, epilog=METHOD_OPTIONS_HELP)
    def keypoints(
        images: Annotated[list[str], typer.Argument(help="image files or folders, and the method's options")],
        model: ModelOpt = "offline",
        method: MethodOpt = "cls",
        find: Annotated[str, typer.Option(help=f"how keypoints are found: one of {', '.join(FINDERS)}")] = (
            "components"
        ),
        threshold: Annotated[str, typer.Option(help="abs:V, rel:F (of max), pct:P or otsu")] = "otsu",
        fraction: Annotated[float, typer.Option(help="mass finder: fraction of the attention mass kept")] = 0.6,
        top_k: Annotated[int, typer.Option(help="keep at most this many keypoints per image")] = 5,
        short_side: Annotated[int | None, typer.Option(
            help="input short side in pixels; the whole image is resized, aspect kept (default: the model's)"
        )] = None,
        cmap: CmapOpt = "inferno",
        alpha: AlphaOpt = 0.45,
        clip: ClipOpt = DEFAULT_CLIP,
        upsample: UpsampleOpt = "bilinear",
        out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("vitprobe_keypoints"),
        device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda")] = None,
    ) -> None:
        """Find keypoints, boxes and masks in attention maps; write JSON, mask and overlay per image."""
        check_model_spec(model)
        from tqdm.auto import tqdm

        from ..analysis.thresholds import Threshold
        from ..evaluate import LocalizeOptions
        from ..io.images import ImageLoadError
        from ..localization import attribute_whole, localize
        from ..methods import check

        tokens, specs = method_specs(method, images)
        if len(specs) != 1:
            raise fail("keypoints takes one method with one value per option")
        name, params = specs[0]
        style = style_from(cmap, alpha, clip, upsample)
        try:
            opts = LocalizeOptions(find=find, threshold=Threshold.parse(threshold), fraction=fraction, top_k=top_k)
        except ValueError as err:
            raise fail(str(err)) from None
        if find not in FINDERS:
            raise fail(f"--find takes one of {', '.join(FINDERS)}, got {find!r}")
        if not 0.0 < fraction <= 1.0 or top_k < 1 or (short_side is not None and short_side < 1):
            raise fail("--fraction must be in (0, 1], --top-k and --short-side at least 1")
        paths = image_paths([Path(t) for t in tokens])
        vit = load_model(model, device)
        try:
            check(vit, name, **params)
        except ValueError as err:
            raise fail(str(err)) from None
        failures, used, records = 0, set(), []
        for path in tqdm(paths, desc="keypoints", unit="image", disable=len(paths) < 2):
            try:
                result = attribute_whole(vit, path, name, short_side, **params)
            except ImageLoadError as err:
                failures += 1
                tqdm.write(f"vitprobe: error: {err}", file=sys.stderr)
                continue
            except ValueError as err:  # no CLS token, a layer or head out of range: the same for every image
                raise fail(str(err)) from None
            found = localize(result, opts)[0]
            records.append(write_result(path, found, result, unique_dir(out, path.stem, used), opts, style,
                                        vit.describe()))
        coco_path = out / "keypoints_coco.json"
        if records:
            from ..coco import found_to_coco
            from ..io.files import atomic_write_text

            atomic_write_text(coco_path, json.dumps(found_to_coco(records), indent=1), "the COCO summary")
        typer.echo(f"{len(records)} of {len(paths)} images with {vit.name}; results in {out.resolve()}"
                   + (f", COCO-style summary {coco_path.name}" if records else ""))
        if failures:
            raise typer.Exit(1)


def write_result(
    path: Path, found: Localized, result: Attribution, out_dir: Path, opts: LocalizeOptions, style: Style,
    model: dict,
) -> dict:
    """Write ``keypoints.json``, ``mask.png`` and ``overlay.png`` for one image; return the JSON record."""
    import numpy as np
    from PIL import Image

    from .. import render
    from ..io.files import atomic_write, atomic_write_text
    from ..render.annotate import annotate

    out_dir.mkdir(parents=True, exist_ok=True)
    geometry = found.geometry
    base = render.overlay(result.images[0], found.heat, style)  # whole-image attribution: the view is the image
    points = found.keypoints
    outlined = annotate(base, mask=found.mask, colour=(255, 255, 255), mask_alpha=0.0)
    drawn = annotate(outlined, points=[(k.x, k.y) for k in points], boxes=[k.box for k in points],
                     labels=[str(i + 1) for i in range(len(points))])
    atomic_write(out_dir / "overlay.png", lambda f: drawn.save(f, format="PNG"), "the overlay")
    mask = Image.fromarray(found.mask.astype(np.uint8) * 255)
    atomic_write(out_dir / "mask.png", lambda f: mask.save(f, format="PNG"), "the mask")
    record = {
        "image": str(path),
        "file_name": path.name,
        "height": geometry.original_hw[0],
        "width": geometry.original_hw[1],
        "model": model["model"],
        "method": result.method,
        "params": {k: list(v) if isinstance(v, tuple) else v for k, v in result.params.items()},
        "map": result.title,
        "find": opts.find,
        "threshold": str(opts.threshold) if opts.find != "mass" else None,
        "mass_fraction": opts.fraction if opts.find == "mass" else None,
        "grid_hw": list(result.layout.grid_hw),
        "patch_size": result.layout.patch_size,
        "geometry": geometry.to_dict(),
        "coordinates": COORDINATES,
        "keypoints": [k.to_dict() for k in points],
        "boxes": [{"x0": round(k.box[0], 2), "y0": round(k.box[1], 2), "x1": round(k.box[2], 2),
                   "y1": round(k.box[3], 2), "score": k.score} for k in points],
        "mask": "mask.png",
        "mask_pixels": int(found.mask.sum()),
        "overlay": "overlay.png",
    }
    atomic_write_text(out_dir / "keypoints.json", json.dumps(record, indent=2), "the keypoints")
    return record
