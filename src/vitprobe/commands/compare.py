"""``vitprobe compare``: two or more ``vitprobe analyze`` runs side by side (per-layer distance and entropy
against depth, spread levels, agreement of the maps, CSV and Markdown tables, an HTML page)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..choices import COMPARED_MAPS
from ..cli_common import fail


def register(app: typer.Typer) -> None:
    """Add the ``compare`` command to the CLI app."""

    @app.command()
    def compare(
        runs: Annotated[list[Path], typer.Argument(help="two or more folders written by vitprobe analyze --out")],
        out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("vitprobe_compare"),
        maps: Annotated[bool, typer.Option(
            help="also compare the runs' maps image by image (loads each run's model)")] = True,
        map_method: Annotated[str, typer.Option(
            help="the methods whose maps are compared, comma-separated (any of vitprobe methods)")] = COMPARED_MAPS,
        map_images: Annotated[int, typer.Option(help="common images whose maps are compared")] = 16,
        device: Annotated[str | None, typer.Option(help="torch device for the maps, e.g. cuda")] = None,
    ) -> None:
        """Put analyze runs of the same images side by side: mean attention distance (both conventions) and
        entropy per layer of every run against normalised depth, the spread levels, the per-image rank
        correlation of their maps, layers.csv / runs.csv / levels.csv / comparison.md and compare.html.

        Runs over different image sets are compared on the images they share."""
        from ..comparison import NotARun
        from ..comparison import compare as run_compare

        if len(runs) < 2:
            raise fail("compare needs at least two analyze runs")
        if map_images < 1:
            raise fail("--map-images must be at least 1")
        try:
            result = run_compare(runs, maps=maps, map_methods=map_method, map_images=map_images, device=device)
        except (NotARun, ValueError) as err:
            raise fail(str(err)) from None
        typer.echo(result.matched)
        for row in result.run_rows():
            first, last = row["distance_first_layer_px"], row["distance_last_layer_px"]
            typer.echo(f"  {row['run']}: {row['model']}, {row['layers']} layers; mean attention distance "
                       f"{_px(first)} (first layer) -> {_px(last)} (last layer)")
        if result.maps_note:
            typer.echo(result.maps_note)
        page = result.write(out)
        typer.echo(f"comparison in {page.resolve()} (layers.csv, runs.csv, levels.csv, comparison.md)")


def _px(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} px"
