"""What every CLI command shares: the --model option, one-line failures, model loading, image lists."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from .io.images import ImageLoadError, list_images

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="'offline' (default), a HF id or directory, 'timm:<name>'")
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line to stderr and return the Exit to raise."""
    typer.echo(f"vitprobe: error: {message}", err=True)
    return typer.Exit(code)


def load_model(spec: str, device: str | None):
    """Load a model, turning every expected failure into one line and exit code 2."""
    from transformers.utils import logging as hf_logging

    from .models import load

    hf_logging.disable_progress_bar()  # one line per problem on stderr, no loader bars
    try:
        return load(spec, device=device)
    except (ValueError, RuntimeError, OSError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise fail(f"cannot load model {spec!r}: {first}") from None


def image_paths(inputs: Sequence[Path]) -> list[Path]:
    """Files and folders (recursive) -> image paths; a missing path or an empty result exits 2."""
    try:
        paths = list_images(inputs)
    except ImageLoadError as err:
        raise fail(str(err)) from None
    if not paths:
        raise fail("no images found in " + ", ".join(map(str, inputs)))
    return paths


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """'0,5,-1' -> (0, 5, -1); anything else exits 2 naming the option."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise fail(f"{what} must be comma-separated integers, got {text!r}") from None


def unique_dir(out: Path, stem: str, used: set[str]) -> Path:
    """``out/stem``, with _2, _3, ... when two inputs share a stem in one call."""
    name, n = stem, 2
    while name in used:
        name, n = f"{stem}_{n}", n + 1
    used.add(name)
    return out / name
