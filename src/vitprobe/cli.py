"""Command line: ``vitprobe explain``, ``vitprobe models``, ``vitprobe methods``, ``vitprobe samples``."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from .choices import DEFAULT_CLIP, DEFAULT_METHODS
from .cli_common import (
    ACCEPTS_METHOD_OPTIONS,
    METHOD_OPTIONS_HELP,
    AlphaOpt,
    ClipOpt,
    CmapOpt,
    ColorbarOpt,
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

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="See what Vision Transformers attend to, and measure it.",
)

def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"vitprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """See what Vision Transformers attend to, and measure it."""


@app.command(context_settings=ACCEPTS_METHOD_OPTIONS, epilog=METHOD_OPTIONS_HELP)
def explain(
    images: Annotated[list[str], typer.Argument(help="image files or folders, and the methods' options")],
    model: ModelOpt = "offline",
    method: MethodOpt = DEFAULT_METHODS,
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("vitprobe_out"),
    size: Annotated[tuple[int, int] | None, typer.Option(help="resize the whole image to H W (no crop)")] = None,
    top: Annotated[int, typer.Option(help="predictions listed beside the maps (models with a class head)")] = 5,
    cmap: CmapOpt = "inferno",
    alpha: AlphaOpt = 0.5,
    clip: ClipOpt = DEFAULT_CLIP,
    upsample: UpsampleOpt = "bilinear",
    colorbar: ColorbarOpt = True,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda")] = None,
) -> None:
    """Draw each image's attention by the chosen methods: one figure per method, maps.npz, summary.json."""
    check_model_spec(model)
    from tqdm.auto import tqdm

    from .explain import ExplainOptions, explain_image
    from .io.images import ImageLoadError, printable
    from .memory import OutOfMemory
    from .methods import check
    from .methods.attribute import spec_labels

    tokens, specs = method_specs(method, images)
    style = style_from(cmap, alpha, clip, upsample, colorbar)
    if top < 0:
        raise fail("--top must be at least 0")
    paths = image_paths([Path(t) for t in tokens])
    vit = load_model(model, device)
    try:
        check(vit, specs)
    except ValueError as err:
        raise fail(str(err)) from None
    opts = ExplainOptions(methods=specs, labels=spec_labels(specs), size=size, style=style, top_k=top)
    failures, used = 0, set()
    start = time.perf_counter()
    for path in tqdm(paths, desc="explain", unit="image", disable=len(paths) < 2):
        try:
            explain_image(vit, path, unique_dir(out, path.stem, used), opts)
        except ImageLoadError as err:
            failures += 1
            tqdm.write(f"vitprobe: error: {err}", file=sys.stderr)
        except OutOfMemory as err:  # this image alone: the others may fit
            failures += 1
            tqdm.write(f"vitprobe: error: {printable(path)}: {err}", file=sys.stderr)
        except (ValueError, IndexError) as err:  # the same for every image: a layer, head or patch out of range
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
    typer.echo("\nHugging Face families (hf:<hub id or directory>): prefix tokens, methods, an example checkpoint")
    for line in family_lines():
        typer.echo(line)
    try:
        source = f"weights from {onnx_path()}"
    except RuntimeError as err:
        source = str(err)
    cached = (cache_dir() / OFFLINE_NAME / "model.safetensors").exists()
    typer.echo(f"\ndefault model: {OFFLINE_NAME} ({'converted, cached' if cached else 'converted on first use'}; "
               f"{source})")


def family_lines() -> list[str]:
    """One line per Hugging Face family: its title, model types, prefix tokens, the methods it supports
    (those whose requirements its tokens meet) and a real checkpoint."""
    from .methods import methods as registered
    from .models.hf import hf_families

    lines, seen = [], set()
    for family in hf_families().values():
        if family.title in seen:
            continue
        seen.add(family.title)
        from .methods.base import video_methods

        usable = [m.name for m in registered()
                  if ("cls" not in m.requires or family.has_cls) and ("pool" not in m.requires or family.has_pool)
                  and (family.video is None or m.name in video_methods())]
        lines.append(f"  {family.title} ({', '.join(family.model_types)}); tokens: {family.tokens}; "
                     f"methods: {', '.join(usable)}; e.g. {family.checkpoint}")
    return lines


@app.command(name="methods")
def list_methods() -> None:
    """List every method: name, what it draws, its options with defaults, what the model must have, and the
    detail tensors it returns with their shapes (batch first)."""
    from .methods import methods as registered

    for info in registered():
        typer.echo(str(info))


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
    """The ``vitprobe`` command. A full disk anywhere ends it with one line naming the file being written and
    the free space (exit 1): everything already written is whole, and the same command goes on from there."""
    from .io.files import DiskFull

    logging.basicConfig(level=logging.WARNING, format="vitprobe: %(message)s")
    try:
        app()
    except DiskFull as err:
        typer.echo(f"vitprobe: error: {err}", err=True)
        sys.exit(1)
