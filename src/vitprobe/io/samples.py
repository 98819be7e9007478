"""Real sample photos from scikit-image (the optional ``samples`` extra), written as PNG files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from ..extras import missing_message

SAMPLE_NAMES = ("chelsea", "astronaut", "coffee")
"""Photos bundled with scikit-image itself, so writing them needs no download."""


def write_samples(out_dir: Path, names: Iterable[str] = SAMPLE_NAMES) -> list[Path]:
    """Write ``skimage.data.<name>()`` as ``out_dir/<name>.png`` for each name; return the paths.

    Files that already exist are kept as they are. Each file is written under a temporary name
    and renamed, so an interrupted run never leaves a partial PNG that later counts as written.
    """
    names = list(names)
    unknown = [name for name in names if name not in SAMPLE_NAMES]
    if unknown:
        raise ValueError(f"unknown sample photo(s) {', '.join(unknown)}; choose from {', '.join(SAMPLE_NAMES)}")
    try:
        from skimage import data
    except ImportError as exc:
        raise RuntimeError(missing_message("writing the sample photos", "scikit-image", "samples")) from exc
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        path = out_dir / f"{name}.png"
        if not path.exists():
            partial = path.with_name(f".{path.name}.partial")
            Image.fromarray(getattr(data, name)()).save(partial, format="PNG")
            partial.replace(path)
        written.append(path)
    return written
