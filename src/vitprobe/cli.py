"""Command line: ``vitprobe explain``, ``vitprobe models``, ``vitprobe samples``."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from tqdm.auto import tqdm

from .cli_common import ModelOpt, fail, image_paths, load_model, parse_ints, unique_dir
from .explain import DEFAULT_METHODS, METHODS, ExplainOptions, explain_image
from .io.images import ImageLoadError
from .render.colormap import DEFAULT_CLIP

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="See what Vision Transformers attend to, and measure it.",
)

@app.command()
def explain(
    images: Annotated[list[Path], typer.Argument(help="image files or folders")],
    model: ModelOpt = "offline",
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("vitprobe_out"),
    layers: Annotated[str, typer.Option(help="layers for per-head grids, e.g. '-1' or '0,5,11'")] = "-1",
    methods: Annotated[str, typer.Option(help=f"comma-separated: {','.join(METHODS)}")] = ",".join(DEFAULT_METHODS),
    size: Annotated[tuple[int, int] | None, typer.Option(help="resize the whole image to H W (no crop)")] = None,
    head_fusion: Annotated[str, typer.Option(help="rollout head fusion: mean, max or min")] = "mean",
    discard_ratio: Annotated[float, typer.Option(help="rollout: drop this fraction of lowest attention")] = 0.0,
    cmap: Annotated[str, typer.Option(help="matplotlib colormap")] = "inferno",
    alpha: Annotated[float, typer.Option(help="heat-map opacity in [0, 1]")] = 0.5,
    upsample: Annotated[str, typer.Option(help="grid to pixels: bilinear or nearest")] = "bilinear",
    clip: Annotated[float, typer.Option(
        help="percentile of each map drawn as the top of its colour scale; 100 = plain min..max"
    )] = DEFAULT_CLIP,
    query: Annotated[str | None, typer.Option(help="query method: patch ROW,COL (default: grid centre)")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda")] = None,
) -> None:
    """Draw attention maps of each image: per-head grids, per-layer grid, aggregation, rollout."""
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    if not chosen or set(chosen) - set(METHODS):
        raise fail(f"--methods takes a comma-separated subset of {','.join(METHODS)}, got {methods!r}")
    opts = ExplainOptions(
        methods=chosen,
        heads_layers=parse_ints(layers, "--layers"),
        size=size, head_fusion=head_fusion, discard_ratio=discard_ratio, cmap=cmap, alpha=alpha,
        upsample=upsample, query_rc=parse_ints(query, "--query") if query else None, clip=clip,
    )
    if opts.query_rc is not None and len(opts.query_rc) != 2:
        raise fail(f"--query takes ROW,COL, got {query!r}")
    if upsample not in ("bilinear", "nearest"):
        raise fail(f"--upsample takes bilinear or nearest, got {upsample!r}")
    if head_fusion not in ("mean", "max", "min"):
        raise fail(f"--head-fusion takes mean, max or min, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0 or not 0.0 <= alpha <= 1.0 or not 0.0 < clip <= 100.0:
        raise fail("--discard-ratio must be in [0, 1), --alpha in [0, 1] and --clip in (0, 100]")
    paths = image_paths(images)
    vit = load_model(model, device)
    try:
        vit.resolve_layers(opts.heads_layers)
    except ValueError as err:
        raise fail(str(err)) from None
    failures, used = 0, set()
    start = time.perf_counter()
    for path in tqdm(paths, desc="explain", unit="image", disable=len(paths) < 2):
        try:
            explain_image(vit, path, unique_dir(out, path.stem, used), opts)
        except ImageLoadError as err:
            failures += 1
            tqdm.write(f"vitprobe: error: {err}", file=sys.stderr)
        except IndexError as err:  # a --query patch outside this image's grid
            raise fail(str(err)) from None
    done = len(paths) - failures
    typer.echo(f"{done} of {len(paths)} images explained with {vit.name} in {time.perf_counter() - start:.1f} s; "
               f"figures in {out.resolve()}")
    if failures:
        raise typer.Exit(1)


@app.command()
def models() -> None:
    """List what can be loaded."""
    from .models import families
    from .models.offline import OFFLINE_NAME, cache_dir, onnx_path

    for prefix, text in families().items():
        typer.echo(f"{prefix + ':':10s} {text}")
    try:
        source = f"weights from {onnx_path()}"
    except RuntimeError as err:
        source = str(err)
    cached = (cache_dir() / OFFLINE_NAME / "model.safetensors").exists()
    typer.echo(f"\ndefault model: {OFFLINE_NAME} ({'converted, cached' if cached else 'converted on first use'}; "
               f"{source})")


@app.command()
def samples(out: Annotated[Path, typer.Argument(help="folder for the sample photos")] = Path("samples")) -> None:
    """Write the sample photos (scikit-image's chelsea, astronaut, coffee) as PNG files."""
    from .io.samples import write_samples

    try:
        for path in write_samples(out):
            typer.echo(str(path))
    except RuntimeError as err:
        raise fail(str(err)) from None


def _register_commands() -> None:
    """Add the commands of every module in ``vitprobe.commands`` (each defines ``register(app)``)."""
    from . import commands

    for info in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(app)


_register_commands()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="vitprobe: %(message)s")
    app()
