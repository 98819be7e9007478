"""``vitprobe faithfulness``: deletion/insertion, perturbation and randomisation checks of methods' maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli_common import (
    ACCEPTS_METHOD_OPTIONS,
    METHOD_OPTIONS_HELP,
    ModelOpt,
    check_model_spec,
    fail,
    image_paths,
    load_model,
    method_specs,
)


def register(app: typer.Typer) -> None:
    """Add the ``faithfulness`` command to the CLI app."""

    @app.command(context_settings=ACCEPTS_METHOD_OPTIONS, epilog=METHOD_OPTIONS_HELP)
    def faithfulness(
        images: Annotated[list[str], typer.Argument(help="image files or folders, and the methods' options")],
        model: ModelOpt = "offline",
        method: Annotated[list[str] | None, typer.Option(
            "--method", help="method name(s), comma-separated or repeated; default: every method `vitprobe methods` "
                             "does not mark 'faithfulness: only when named'")] = None,
        target: Annotated[str | None, typer.Option(
            help="class index or label, 'self' or 'image:PATH' (default: top class, or self without a head)")] = None,
        out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("vitprobe_faithfulness"),
        size: Annotated[tuple[int, int] | None, typer.Option(help="resize the whole image to H W (no crop)")] = None,
        steps: Annotated[int, typer.Option(help="steps of the deletion and insertion curves")] = 20,
        randomisation_steps: Annotated[int | None, typer.Option(
            help="blocks re-initialised from the top in the randomisation check (default: all; 0: none)")] = None,
        batch_size: Annotated[int, typer.Option(help="perturbed images per forward pass")] = 32,
        seed: Annotated[int, typer.Option(help="seed of the tie-breaking, the random baseline and re-initialisation")]
        = 0,
        device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda")] = None,
    ) -> None:
        """Measure how faithful each method's map is: deletion and insertion AUC, positive and negative
        perturbation AUC and the cascading model-randomisation check, beside a random and a centre map.
        Writes faithfulness.csv, summary.csv, faithfulness.json and curves.png."""
        check_model_spec(model)
        from ..faithfulness import faithfulness as measure
        from ..methods import Param, default_faithfulness_methods

        tokens, specs = method_specs(",".join(method or default_faithfulness_methods()), images)
        if steps < 1 or batch_size < 1:
            raise fail("--steps and --batch-size must be at least 1")
        try:
            parsed = Param("target", None, "", "target").parse(target) if target is not None else None
        except ValueError as err:
            raise fail(str(err)) from None
        paths = image_paths([Path(t) for t in tokens])
        vit = load_model(model, device)
        try:
            report = measure(vit, paths, specs, target=parsed, size=size, steps=steps,
                             randomisation_steps=randomisation_steps, batch_size=batch_size, seed=seed)
        except (ValueError, IndexError) as err:
            raise fail(str(err)) from None
        report.write(out)
        for _, error in report.failures:
            typer.echo(f"vitprobe: error: {error}", err=True)
        _print_summary(report)
        typer.echo(f"{len(report.images)} of {len(paths)} images measured ({report.score}); tables and curves.png in "
                   f"{out.resolve()}")
        if report.failures:
            raise typer.Exit(1)


def _print_summary(report) -> None:
    """The per-method means and seconds per image as an aligned table on stdout (intervals in summary.csv)."""
    from ..faithfulness import METRICS

    rows = report.summary()
    width = max(len(r["method"]) for r in rows) if rows else 6
    typer.echo("method".ljust(width) + "".join(f"{m.removesuffix('_auc'):>18}" for m in METRICS) + f"{'s/image':>10}")
    for row in rows:
        typer.echo(row["method"].ljust(width) + "".join(f"{row[m]:>18.3f}" for m in METRICS)
                   + f"{row['seconds_per_image']:>10.2f}")
