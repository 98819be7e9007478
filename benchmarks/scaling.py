"""How cost grows with tokens and model size: the plain fused forward beside vitprobe's CLS family and
``analyze``'s full workload, batch 1, each measured in its own process by ``vitprobe.bench``.

    .venv/bin/python benchmarks/scaling.py --out benchmarks/scaling.png > /tmp/scaling.md

Prints a Markdown table (best seconds per image; ratios to the plain forward, the median of rounds that
time both back to back in one process; peak RSS) and draws seconds per image
against tokens on log–log axes, where the T² terms show as the steeper slope.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vitprobe.bench import Config, ModelSpec, measure

SIZES = [
    ModelSpec(f"DINOv2-S/14@{px}", "dinov2", hidden=384, layers=12, heads=6, patch=14, image=px)
    for px in (224, 448, 518, 1022)
] + [
    ModelSpec("DINOv2-B/14@518", "dinov2", hidden=768, layers=12, heads=12, patch=14, image=518),
    ModelSpec("DINOv2-L/14@518", "dinov2", hidden=1024, layers=24, heads=16, patch=14, image=518),
]
METHODS = ("plain", "cls", "full")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scaling.png"), help="the plot")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cfg = Config(models=SIZES, batches=(1,), methods=METHODS, repeats=args.repeats)
    rows = []
    work = Path("/tmp/vitprobe-scaling")
    work.mkdir(exist_ok=True)
    for spec in SIZES:
        got = {m: measure(spec, 1, m, "float32", cfg, work) for m in METHODS}
        rows.append((spec, got))
        cells = [f"{got[m].seconds:.2f}" if got[m].seconds else got[m].note for m in METHODS]
        ratios = [f"{got[m].ratio:.2f}" if got[m].ratio else "–" for m in ("cls", "full")]  # paired, in the child
        peak = [f"{got[m].peak_bytes / 1e9:.2f}" if got[m].peak_bytes else "–" for m in METHODS]
        print(f"| {spec.name} | {spec.n_tokens} | " + " | ".join(cells + ratios + peak) + " |", flush=True)
    sizes = [(spec, got) for spec, got in rows if spec.name.startswith("DINOv2-S")]
    draw({m: [(spec.n_tokens, got[m].seconds) for spec, got in sizes if got[m].seconds] for m in METHODS}, args.out)


def draw(points: dict[str, list[tuple[int, float]]], out: Path) -> None:
    """Seconds per image against tokens, log–log, one line per method: {method: [(T, seconds)]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    labels = {"plain": "plain fused forward", "cls": "CLS family (vp.attribute)", "full": "full workload (analyze)"}
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method, pts in points.items():
        ax.plot([t for t, _ in pts], [s for _, s in pts], marker="o", label=labels[method])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted({t for pts in points.values() for t, _ in pts})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("tokens T (DINOv2-S/14 at 224, 448, 518, 1022 px)")
    ax.set_ylabel("seconds per image (batch 1, 2 CPU cores)")
    ax.set_title("Cost against tokens: where the T² terms take over")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main()
