"""``vitprobe classmap``: class-specific maps (gradient rollout, Chefer et al.) with the top predictions beside them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from tqdm.auto import tqdm

from ..analysis.gradients import METHODS
from ..cli_common import fail, image_paths, load_model, unique_dir
from ..io.images import ImageLoadError

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="a model with a classification head: HF id or directory, 'timm:<name>'")
]


def register(app: typer.Typer) -> None:
    @app.command()
    def classmap(
        images: Annotated[list[Path], typer.Argument(help="image files or folders")],
        model: ModelOpt,
        method: Annotated[str, typer.Option(help=f"one of {', '.join(METHODS)}")] = "chefer",
        target: Annotated[
            str | None, typer.Option(help="class index or label (default: each image's top prediction)")
        ] = None,
        top: Annotated[int, typer.Option(help="predictions listed beside the map")] = 5,
        size: Annotated[tuple[int, int] | None, typer.Option(help="resize the whole image to H W (no crop)")] = None,
        discard_ratio: Annotated[float, typer.Option(help="gradrollout: drop this fraction of lowest weights")] = 0.0,
        cmap: Annotated[str, typer.Option(help="matplotlib colormap")] = "inferno",
        alpha: Annotated[float, typer.Option(help="heat-map opacity in [0, 1]")] = 0.5,
        out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("vitprobe_classmaps"),
        device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda")] = None,
    ) -> None:
        """Draw where a classifier's evidence for one class comes from, with its top predictions beside."""
        from .. import render
        from ..classmaps import class_maps, classmap_figure, short_label

        if method not in METHODS:
            raise fail(f"--method takes one of {', '.join(METHODS)}, got {method!r}")
        if discard_ratio and method != "gradrollout":
            raise fail("--discard-ratio applies to --method gradrollout only")
        if not 0.0 <= discard_ratio < 1.0 or not 0.0 <= alpha <= 1.0 or top < 1:
            raise fail("--discard-ratio must be in [0, 1), --alpha in [0, 1] and --top at least 1")
        paths = image_paths(images)
        vit = load_model(model, device)
        failures, used = 0, set()
        for path in tqdm(paths, desc="classmap", unit="image", disable=len(paths) < 2):
            try:
                result = class_maps(vit, path, method=method, target=target, size=size, discard_ratio=discard_ratio)
            except ImageLoadError as err:
                failures += 1
                tqdm.write(f"vitprobe: error: {err}", file=sys.stderr)
                continue
            except ValueError as err:  # no head, no CLS, unknown label: the same for every image
                raise fail(str(err)) from None
            chosen = result.targets[0]
            title = f"{vit.name}: {path.name}"
            fig = classmap_figure(result, k=top, title=title, cmap=cmap, alpha=alpha)
            target_png = render.save_figure(fig, out / f"{unique_dir(out, path.stem, used).name}_{method}.png")
            ranked = ", ".join(f"{short_label(label, 40)} ({i}) {p:.3f}" for i, label, p in result.top(0, top))
            typer.echo(f"{path}: {method} map of class {chosen} ({result.label(chosen)}) -> {target_png}")
            typer.echo(f"  top {top}: {ranked}")
        if failures:
            raise typer.Exit(1)
