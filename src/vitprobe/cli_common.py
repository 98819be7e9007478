"""What every CLI command shares: the --model option, the style options, method options, one-line failures,
model loading and image lists. Nothing heavy is imported at module level, so every ``--help`` is fast."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from .render.style import Style

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="'offline' (default), a HF id or directory, 'timm:<name>'")
]
MethodOpt = Annotated[str, typer.Option(
    "--method", help="comma-separated method names (`vitprobe methods` lists them with their parameters)"
)]
CmapOpt = Annotated[str, typer.Option(help="matplotlib colormap")]
AlphaOpt = Annotated[float, typer.Option(help="heat-map opacity in [0, 1]")]
ClipOpt = Annotated[float, typer.Option(
    help="percentile of each map drawn as the top of its colour scale; 100 = plain min..max"
)]
UpsampleOpt = Annotated[str, typer.Option(help="grid to pixels: bilinear or nearest")]
ColorbarOpt = Annotated[bool, typer.Option(help="a colour bar under every panel")]
METHOD_OPTIONS_HELP = (
    "Each chosen method's parameters are options too, e.g. --layer 5, --discard-ratio 0.9, --head 2; "
    "`vitprobe methods` lists them. Repeat an option (--layer 0 --layer 11) for one map per value."
)
ACCEPTS_METHOD_OPTIONS = {"allow_extra_args": True, "ignore_unknown_options": True}
"""Click settings that let a command's positional list carry the method options (split by ``method_specs``)."""


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line to stderr and return the Exit to raise."""
    typer.echo(f"vitprobe: error: {message}", err=True)
    return typer.Exit(code)


def check_model_spec(spec: str) -> None:
    """Exit 2 with one line, before anything heavy is imported, for a Hugging Face spec that cannot be
    found: no such directory, or not cached while the hub is unreachable or ``HF_HUB_OFFLINE`` is set."""
    from .hub import hf_name, locate

    name = hf_name(spec)
    try:
        if name is not None:
            locate(name)
    except ValueError as err:
        raise fail(f"cannot load model {spec!r}: {err}") from None


def load_model(spec: str, device: str | None):
    """Load a model, turning every expected failure into one line and exit code 2."""
    check_model_spec(spec)
    from transformers.utils import logging as hf_logging

    from .models import load

    hf_logging.disable_progress_bar()  # one line per problem on stderr, no loader bars
    try:
        return load(spec, device=device)
    except (ValueError, RuntimeError, OSError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise fail(f"cannot load model {spec!r}: {first}") from None


def style_from(cmap: str, alpha: float, clip: float, upsample: str, colorbar: bool = True) -> Style:
    """The ``Style`` of the style options; a bad value exits 2 naming the option."""
    from .render.style import Style

    try:
        return Style(cmap=cmap, alpha=alpha, clip=clip, upsample=upsample, colorbar=colorbar)
    except ValueError as err:
        raise fail(str(err)) from None


def method_specs(method: str, tokens: Sequence[str]) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """Split a command's positional tokens into plain arguments and the options of the methods named
    in ``method`` (comma-separated): (arguments, [(method name, its parameters)]).

    ``--name VALUE`` or ``--name=VALUE`` sets the parameter ``name`` (dashes for underscores) of every
    chosen method that takes it; an option given several times makes one method instance per value
    (several such options: every combination). Exits 2 with one line for an unknown method, an option
    no chosen method takes, or a bad value.
    """
    from .methods import get_method

    names = [m.strip() for m in method.split(",") if m.strip()]
    if not names:
        raise fail("--method needs at least one method name (`vitprobe methods` lists them)")
    try:
        impls = [get_method(name) for name in names]
    except ValueError as err:
        raise fail(f"--method: {err}") from None
    by_option = {p.option: p for impl in impls for p in impl.params}
    rest: list[str] = []
    given: dict[str, list[Any]] = {}
    items = iter(tokens)
    for token in items:
        if not token.startswith("--"):
            rest.append(token)
            continue
        option, eq, value = token.partition("=")
        param = by_option.get(option)
        if param is None:
            raise fail(f"{option}: no chosen method ({', '.join(names)}) takes this option; "
                       "`vitprobe methods` lists each method's options")
        if not eq:
            value = next(items, None)
            if value is None:
                raise fail(f"{option} needs a value ({param.describe()})")
        try:
            given.setdefault(param.name, []).append(param.parse(value))
        except ValueError as err:
            raise fail(str(err)) from None
    specs = []
    for impl in impls:
        own = {name: values for name, values in given.items() if name in {p.name for p in impl.params}}
        for combo in itertools.product(*own.values()):
            specs.append((impl.name, dict(zip(own, combo, strict=True))))
    return rest, specs


def image_paths(inputs: Sequence[Path]) -> list[Path]:
    """Files and folders (recursive) -> image paths; a missing path or an empty result exits 2."""
    from .io.images import ImageLoadError, list_images

    if not inputs:
        raise fail("no images given")
    try:
        paths = list_images(inputs)
    except ImageLoadError as err:
        raise fail(str(err)) from None
    if not paths:
        raise fail("no images found in " + ", ".join(map(str, inputs)))
    return paths


def unique_dir(out: Path, stem: str, used: set[str]) -> Path:
    """``out/stem``, with _2, _3, ... when two inputs share a stem in one call."""
    name, n = stem, 2
    while name in used:
        name, n = f"{stem}_{n}", n + 1
    used.add(name)
    return out / name
