"""``vitprobe analyze``: probe statistics over a folder or list of images, resumable, torchrun-ready."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli_common import ModelOpt, check_model_spec, fail, load_model

SOURCE_HELP = ("folder of images (recursive), text file with one path a line, tar shards "
               "('dir/shard-{000000..000099}.tar', quoted), a Parquet file with an image column or a "
               "Hugging Face save_to_disk folder (a Dataset, or a DatasetDict: every split)")


def register(app: typer.Typer) -> None:
    """Add the ``analyze`` command to the CLI app."""

    @app.command()
    def analyze(
        source: Annotated[Path, typer.Argument(help=SOURCE_HELP)],
        model: ModelOpt = "offline",
        out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("vitprobe_analysis"),
        batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 16,
        limit: Annotated[int | None, typer.Option(help="only the first N listed images")] = None,
        size: Annotated[tuple[int, int] | None, typer.Option(help="resize every image to H W (no crop)")] = None,
        workers: Annotated[int, typer.Option(help="image-loading worker processes")] = 0,
        spread_layer: Annotated[int, typer.Option(help="layer whose CLS-map entropy sets the spread levels")] = -1,
        outlier_ratio: Annotated[float, typer.Option(help="artifact token: norm > this × median")] = 4.0,
        peak_ratio: Annotated[float, typer.Option(help="isolated CLS peak: > this × 2nd-brightest neighbour")] = 3.0,
        report: Annotated[bool, typer.Option(help="write report.html")] = True,
        examples: Annotated[int, typer.Option(help="report: images drawn layer by layer")] = 4,
        device: Annotated[str | None, typer.Option(help="torch device (default: cuda:LOCAL_RANK or cpu)")] = None,
        progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
        split: Annotated[list[str] | None, typer.Option(
            "--split", help="DatasetDict folder: read only this split (repeat for several; default: all)")] = None,
        image_column: Annotated[str | None, typer.Option(
            help="Parquet or Hugging Face dataset: the column of images (default: the Image feature)")] = None,
        compare_with: Annotated[list[Path] | None, typer.Option(
            "--compare-with", help="then compare this run with a finished analyze run (repeat for several; "
            "vitprobe compare), written to OUT/compare")] = None,
    ) -> None:
        """Measure attention over a dataset: per-image records (Parquet), aggregates, failures and an HTML report.

        Run it again with the same arguments to resume; under ``torchrun --nproc_per_node=K`` each
        process takes every K-th batch. Images that cannot be read are listed in failures.csv; the
        exit code is 1 only when no image could be analysed.
        """
        check_model_spec(model)
        from ..models.video import is_video_spec

        if is_video_spec(model):
            if size or split or image_column:
                raise fail("--size, --split and --image-column apply to images; a video model takes clips of its "
                           "own size")
            _analyze_clips(source, model, out, batch_size, limit, report, device, progress)
            return
        import torch

        from ..io.datasets import reading_column
        from ..io.images import ImageLoadError
        from ..io.store import RunLocked, require
        from ..runner import (
            AnalyzeOptions,
            default_device,
            hold,
            init_distributed,
            ranks_from_env,
            read_source,
            run_analysis,
        )

        if batch_size < 1 or (limit is not None and limit < 0) or workers < 0:
            raise fail("--batch-size must be ≥ 1, --limit and --workers ≥ 0")
        if outlier_ratio <= 1 or peak_ratio <= 1:
            raise fail("--outlier-ratio and --peak-ratio must be > 1")
        if compare_with:  # a folder that is no finished run is one line now, not after the whole run
            from ..comparison import NotARun, read_run

            try:
                for other in compare_with:
                    read_run(other)
            except NotARun as err:
                raise fail(f"--compare-with: {err}") from None
        try:
            require("pyarrow")
            if report:
                require("jinja2")
        except ImportError as err:
            raise fail(str(err)) from None
        try:
            listing = read_source(source, split, image_column)
        except ImageLoadError as err:
            raise fail(str(err)) from None
        images = listing.items
        if not images:
            raise fail(f"no images found in {source}")
        opts = AnalyzeOptions(batch_size=batch_size, limit=limit, size=size, spread_layer=spread_layer,
                              outlier_ratio=outlier_ratio, peak_ratio=peak_ratio, workers=workers, progress=progress,
                              image_column=image_column)
        try:
            ranks = ranks_from_env()
        except ValueError as err:
            raise fail(str(err)) from None
        if ranks.rank == 0 and listing.summary():
            typer.echo(f"{source}: {listing.summary()}")
        device = device or default_device(ranks)
        init_distributed(ranks, torch.device(device))
        try:
            vit = load_model(model, device)
            with hold(out, ranks), reading_column(image_column):  # the report too, while the folder is this run's
                try:
                    vit.resolve_layers([spread_layer])
                    aggregates = run_analysis(vit, images, out, opts, ranks)
                except ValueError as err:
                    raise fail(str(err)) from None
                except KeyboardInterrupt:
                    raise fail("interrupted; finished batches are kept: run the same command to resume",
                               130) from None
                if aggregates is None:  # not rank 0
                    return
                counts = aggregates["images"]
                if counts["analysed"] == 0:
                    raise fail(f"none of the {counts['listed']} images could be analysed; reasons in "
                               f"{Path(out) / 'failures.csv'}", 1)
                if report:
                    from ..render.report import ReportOptions, write_report
                    from ..reporting import report_inputs

                    opts = ReportOptions(examples=examples, size=size)
                    write_report(out, aggregates, report_inputs(vit, aggregates, opts), opts.style)
            timing = aggregates["timing"]
            speed = timing["images_per_second"]
            typer.echo(
                f"{counts['analysed']} of {counts['listed']} images analysed with {vit.name}, "
                f"{counts['failed']} failed; "
                f"this session {timing['images_this_session']} images"
                + (f" at {speed:.2f} images/s" if speed else "")
                + f", peak memory {max(timing['peak_rss_mb_per_rank']):.0f} MB; results in {Path(out).resolve()}"
            )
            if compare_with:
                _compare(out, compare_with, device)
        except RunLocked as err:
            raise fail(str(err)) from None
        finally:
            if ranks.distributed:
                import torch.distributed as dist

                if dist.is_initialized():
                    dist.destroy_process_group()


def _analyze_clips(source: Path, model: str, out: Path, batch_size: int, limit: int | None, report: bool,
                   device: str | None, progress: bool) -> None:
    """``analyze`` with a video model: space-time statistics of every clip (``video_analysis``)."""
    from ..io.images import ImageLoadError
    from ..video_analysis import list_clips, run_clip_analysis

    if batch_size < 1 or (limit is not None and limit < 0):
        raise fail("--batch-size must be ≥ 1, --limit ≥ 0")
    try:
        clips = list_clips(source)
    except ImageLoadError as err:
        raise fail(str(err)) from None
    clips = clips[:limit] if limit is not None else clips
    if not clips:
        raise fail(f"no clips found in {source}")
    vit = load_model(model, device)
    try:
        result = run_clip_analysis(vit, clips, out, batch_size=batch_size, progress=progress, report=report)
    except ValueError as err:
        raise fail(str(err)) from None
    counts = result.aggregates["clips"]
    if counts["analysed"] == 0:
        raise fail(f"none of the {counts['listed']} clips could be analysed; reasons in {Path(out) / 'failures.csv'}",
                   1)
    speed = result.aggregates["timing"]["clips_per_second"]
    typer.echo(f"{counts['analysed']} of {counts['listed']} clips analysed with {vit.name}, {counts['failed']} failed"
               + (f", {speed:.2f} clips/s" if speed else "") + f"; results in {Path(out).resolve()}")


def _compare(out: Path, others: list[Path], device: str | None) -> None:
    """``--compare-with``: this run beside the others (``vitprobe compare``), written to ``out/compare``."""
    from ..comparison import NotARun, compare

    try:
        result = compare([out, *others], Path(out) / "compare", device=device)
    except (NotARun, ValueError) as err:
        raise fail(f"--compare-with: {err}") from None
    typer.echo(result.matched)
    if result.maps_note:
        typer.echo(result.maps_note)
    typer.echo(f"comparison in {(Path(out) / 'compare' / 'compare.html').resolve()}")
