"""``vitprobe evaluate``: localisation scores of attention maps on COCO annotations, beside two baselines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..choices import DEFAULT_CLIP, FINDERS
from ..cli_common import (
    ACCEPTS_METHOD_OPTIONS,
    METHOD_OPTIONS_HELP,
    ClipOpt,
    CmapOpt,
    MethodOpt,
    ModelOpt,
    UpsampleOpt,
    check_model_spec,
    fail,
    load_model,
    method_specs,
    style_from,
)

if TYPE_CHECKING:
    from PIL import Image

    from ..coco import ImageTruth
    from ..localization import Localized
    from ..methods import Attribution
    from ..render.style import Style

CYAN = (0, 255, 255)
GREEN = (0, 255, 0)


ROWS = (
    ("pointing_game", "pointing game"),
    ("pck", "PCK@{alpha:g}"),
    ("box_iou", "box IoU (mean)"),
    ("corloc", "CorLoc (IoU >= 0.5)"),
    ("mask_jaccard", "mask Jaccard ({masks})"),
    ("box_ap", "box AP (COCO, 0.50:0.95)"),
    ("box_ap50", "box AP50"),
    ("box_ap75", "box AP75"),
)
HEADERS = {"model": "model", "random": "random map", "centre": "centre Gaussian"}


def format_table(summary: dict[str, dict[str, float | None]], alpha: float, masks: str = "heads") -> str:
    """The summary as a text table: one row per metric, one column per map (model and baselines)."""
    lines = [f"{'metric':26s}" + "".join(f"{HEADERS[name]:>17s}" for name in summary)]
    for key, label in ROWS:
        cells = [summary[name][key] for name in summary]
        name = label.format(alpha=alpha, masks="best head" if masks == "heads" else "fused map")
        lines.append(f"{name:26s}" + "".join(
            f"{'n/a' if v is None else f'{v:.3f}':>17s}" for v in cells))
    return "\n".join(lines)


def draw_evaluation(truth: ImageTruth, found: Localized, result: Attribution, style: Style) -> Image.Image:
    """The method's map over the original image, ground truth in cyan (boxes, mask outlines, named
    keypoints) and the found keypoints with their boxes in green (numbered best first)."""
    from .. import render
    from ..render.annotate import annotate

    base = render.overlay(result.images[0], found.heat, style)  # whole-image attribution: the view is the image
    for obj in truth.objects:
        x, y, w, h = obj.box
        base = annotate(base, points=[tuple(p) for p in obj.keypoints], boxes=[(x, y, x + w, y + h)], mask=obj.mask,
                        labels=obj.keypoint_names, colour=CYAN, mask_alpha=0.0)
    points = found.keypoints
    return annotate(base, points=[(k.x, k.y) for k in points], boxes=[k.box for k in points[:1]],
                    labels=[str(i + 1) for i in range(len(points))], colour=GREEN)


def register(app: typer.Typer) -> None:
    @app.command(context_settings=ACCEPTS_METHOD_OPTIONS, epilog=METHOD_OPTIONS_HELP)
    def evaluate(
        annotations: Annotated[Path, typer.Option(help="COCO-style JSON with boxes, keypoints, segmentation")],
        images: Annotated[Path, typer.Option(help="folder the annotations' file_name entries are relative to")],
        method_options: Annotated[list[str] | None, typer.Argument(
            help="the method's options, e.g. --layer 5", show_default=False)] = None,
        model: ModelOpt = "offline",
        method: MethodOpt = "cls",
        find: Annotated[str, typer.Option(help=f"keypoints and boxes: one of {', '.join(FINDERS)}")] = "components",
        threshold: Annotated[str, typer.Option(help="abs:V, rel:F (of max), pct:P or otsu")] = "otsu",
        fraction: Annotated[float, typer.Option(help="mass fraction of the masks (DINO: 0.6)")] = 0.6,
        masks: Annotated[str, typer.Option(
            help="heads: best head's mask per object (DINO protocol); fused: the method's map's own mask"
        )] = "heads",
        top_k: Annotated[int, typer.Option(help="keypoints per image for PCK")] = 5,
        alpha: Annotated[float, typer.Option(help="PCK distance as a fraction of the object's longer box side")] = 0.1,
        tolerance: Annotated[float, typer.Option(help="pointing game tolerance in pixels")] = 15.0,
        draws: Annotated[int, typer.Option(help="random-map baseline: draws averaged")] = 20,
        seed: Annotated[int, typer.Option(help="random-map baseline seed")] = 0,
        short_side: Annotated[int | None, typer.Option(
            help="input short side in pixels; the whole image is resized, aspect kept (default: the model's)"
        )] = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="write the full report (JSON) here")] = None,
        figures: Annotated[Path | None, typer.Option(
            help="folder for one PNG per image: ground truth (cyan) and what the model found (green)"
        )] = None,
        cmap: CmapOpt = "inferno",
        opacity: Annotated[float, typer.Option(help="heat-map opacity in [0, 1] of the figures")] = 0.45,
        clip: ClipOpt = DEFAULT_CLIP,
        upsample: UpsampleOpt = "bilinear",
        device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda")] = None,
    ) -> None:
        """Pointing game, PCK, box IoU / CorLoc, mask Jaccard and COCO box AP, each beside a random and a centre
        baseline."""
        check_model_spec(model)
        from ..analysis.thresholds import Threshold
        from ..coco import AnnotationError, load_coco
        from ..evaluate import LocalizeOptions
        from ..io.files import atomic_write, atomic_write_text
        from ..localization import EvalOptions, evaluate_dataset, localize

        tokens, specs = method_specs(method, method_options or [])
        if tokens:
            raise fail(f"unexpected argument {tokens[0]!r}: evaluate reads its images from --annotations/--images")
        if len(specs) != 1:
            raise fail("evaluate takes one method with one value per option")
        name, params = specs[0]
        style = style_from(cmap, opacity, clip, upsample)
        try:
            local = LocalizeOptions(find=find, threshold=Threshold.parse(threshold), fraction=fraction,
                                    top_k=top_k, alpha=alpha, tolerance=tolerance)
        except ValueError as err:
            raise fail(str(err)) from None
        if find not in FINDERS:
            raise fail(f"--find takes one of {', '.join(FINDERS)}, got {find!r}")
        counts = (top_k, draws) if short_side is None else (top_k, draws, short_side)
        if not 0.0 < fraction <= 1.0 or min(counts) < 1 or alpha <= 0 or tolerance < 0:
            raise fail("--fraction must be in (0, 1], --top-k, --draws and --short-side at least 1, --alpha > 0, "
                       "--tolerance >= 0")
        if masks not in ("heads", "fused"):
            raise fail(f"--masks takes heads or fused, got {masks!r}")
        if not images.is_dir():
            raise fail(f"{images}: not a folder")
        try:
            truth = load_coco(annotations)
        except AnnotationError as err:
            raise fail(str(err)) from None
        vit = load_model(model, device)
        opts = EvalOptions(method=name, params=params, masks=masks, short_side=short_side, draws=draws, seed=seed,
                           localize=local)
        errors: list[str] = []

        def on_error(err: Exception) -> None:
            errors.append(str(err))
            typer.echo(f"vitprobe: error: {err}", err=True)

        def on_image(image: ImageTruth, result: Attribution) -> None:
            figures.mkdir(parents=True, exist_ok=True)
            figure = draw_evaluation(image, localize(result, local)[0], result, style)
            name = figures / Path(image.file_name).with_suffix(".png").as_posix().replace("/", "__")
            atomic_write(name, lambda f: figure.save(f, format="PNG"), "an evaluation figure")

        try:
            report = evaluate_dataset(vit, truth, images, opts, on_error, on_image if figures else None)
        except ValueError as err:  # no CLS token, a layer or head out of range
            raise fail(str(err)) from None
        n = len(report["images"])
        typer.echo(f"{vit.name}, method {name}, find {find} ({threshold if find != 'mass' else fraction}), "
                   f"{n} image{'s' * (n != 1)}; random map averaged over {draws} draws")
        typer.echo(format_table(report["summary"], alpha, masks))
        if out is not None:
            report["settings"] = {
                **vit.describe(), "annotations": str(annotations), "images": str(images), "method": name,
                "params": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}, "find": find,
                "threshold": threshold, "fraction": fraction, "masks": masks, "top_k": top_k,
                "alpha": alpha, "tolerance": tolerance, "draws": draws, "seed": seed,
                "short_side": short_side, "sigma": opts.sigma, "errors": errors,
            }
            atomic_write_text(out, json.dumps(report, indent=2), "the report")
        if errors or n == 0:
            if n == 0:
                typer.echo("vitprobe: error: no annotated image could be evaluated", err=True)
            raise typer.Exit(1)
