"""``vitprobe bench``: attention analysis side by side with the plain forward pass (see benchmarks/RESULTS.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        models: Annotated[str, typer.Option(help="comma-separated: ViT-B/16, DINOv2-S/14, DINOv2-L/14, DINOv3-S/16, "
                                            "DINOv2-S/14@1022")] = "ViT-B/16,DINOv2-S/14,DINOv2-L/14,DINOv3-S/16",
        batches: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "1,8",
        device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
        dtypes: Annotated[str | None, typer.Option(help="default float32 on CPU, +float16,bfloat16 on GPU")] = None,
        methods: Annotated[str, typer.Option(help="subset of plain,seed,hooks,cls,rollout,full")] = (
            "plain,seed,hooks,cls,rollout,full"
        ),
        kernels: Annotated[str, typer.Option(help="attention kernels (VITPROBE_KERNEL values), each timed in the same "
                                             "process: auto, cpp, triton, torch")] = "auto",
        repeats: Annotated[int, typer.Option(help="timed runs after the warm-up (best one reported)")] = 3,
        cap_gib: Annotated[float, typer.Option(help="memory cap of each measuring process (RLIMIT_AS)")] = 20.0,
        update: Annotated[Path | None, typer.Option(help="write the table into this RESULTS.md")] = None,
    ) -> None:
        """Speed, peak memory and map equality of attention analysis against the plain forward pass."""
        from ..bench import config_from, run_benchmark, update_results

        args = argparse.Namespace(models=models, batches=batches, device=device, dtypes=dtypes, methods=methods,
                                  kernels=kernels, repeats=repeats, cap_gib=cap_gib)
        try:
            cfg = config_from(args)
        except ValueError as err:
            typer.echo(f"vitprobe: error: {err}", err=True)
            raise typer.Exit(2) from None
        report = run_benchmark(cfg, echo=typer.echo)
        if update:
            update_results(update, cfg.device, report)
