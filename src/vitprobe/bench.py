"""Attention analysis side by side with the plain forward pass: speed, peak memory and equal maps.

Every measurement runs in a fresh child process, so each method's peak memory is its own (and
capped with RLIMIT_AS on CPU); inside it the method and the plain forward are timed back to back,
round after round, so a ratio compares runs under the same load of a shared machine. The parent
compares the maps the children saved and prints one table per model, size and batch. Every
workload starts from the same uint8 images and counts their preprocessing, and times the code a
user calls:

- ``plain`` (a): ``model.prepare`` and the model's fused (SDPA) forward without attention output;
- ``seed``  (b): eager attention with ``output_attentions=True``; in numpy the per-head CLS rows,
  the head mean and rollout as products of full T×T matrices, O(L·T³), into float64 joint
  matrices of every layer as seed 003 writes it (``np.zeros`` of the stacked shape);
- ``hooks`` (c): vit-explain style: forward hooks keep every layer's probabilities under eager
  attention, then a torch rollout loop over full T×T matrices, O(L·T³);
- ``cls``   (d): ``vp.attribute(model, images, method=["cls", "layers"])``, the CLS family:
  per-head CLS maps of every layer, head fusion, layer aggregation, and ``vp.map_entropy`` of the
  per-layer maps;
- ``rollout`` (d): ``vp.attribute(model, images, method="rollout")``;
- ``full``  (d): what ``vitprobe analyze`` runs per batch (``runner.probe_pixels`` after
  ``model.prepare``): rollout through every depth, mean attention distance (both conventions), the
  entropy of every attention row, CLS maps and their entropies, token norms and artifact counts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .analysis.entropy import map_entropy
from .analysis.maps import to_grid
from .capture import CaptureError
from .io.preprocess import PreprocessSpec
from .kernels import KERNELS
from .models.base import VitModel

GB = 1e9
LABELS = {
    "plain": "(a) plain fused forward",
    "seed": "(b) seed: eager + output_attentions, numpy",
    "hooks": "(c) vit-explain-style hooks",
    "cls": "(d) vp.attribute: CLS family",
    "rollout": "(d) vp.attribute: rollout",
    "full": "(d) analyze's batch: full workload",
}
EAGER = ("seed", "hooks")
COMPARED = {"cls_grid": 1, "rollout_grid": 0, "cls_map_entropy": 1, "rollout_entropy": 0}
"""Maps and statistics two workloads may both produce -> their batch dimension."""
RUNTIME_BYTES = int(1.0 * GB)  # Python, torch and its thread pools, before any tensor


@dataclass(frozen=True)
class ModelSpec:
    """A ViT-family architecture built with random weights: speed does not depend on their values.

    ``init_std`` 0.05 (instead of transformers' 0.02) makes the attention peaked rather than
    almost uniform, so that equal maps are a real check.
    """

    name: str
    family: str  # "vit" (ViTModel), "dinov2" (Dinov2Model) or "dinov3" (DINOv3ViTModel: rotary, 4 registers)
    hidden: int
    layers: int
    heads: int
    patch: int
    image: int
    init_std: float = 0.05

    @property
    def label(self) -> str:
        return f"{self.name} ({self.image} px)"

    @property
    def n_tokens(self) -> int:
        return (self.image // self.patch) ** 2 + (5 if self.family == "dinov3" else 1)

    @property
    def n_params(self) -> int:
        """Encoder weights (12·D² per layer) plus patch projection and position table."""
        d = self.hidden
        return self.layers * 12 * d * d + 3 * self.patch**2 * d + self.n_tokens * d

    def build(self, attn_implementation: str, device: torch.device, dtype: torch.dtype) -> VitModel:
        """The model with seeded random weights, wrapped for capture."""
        import transformers

        from .models.hf import wrap

        common = dict(
            hidden_size=self.hidden, num_hidden_layers=self.layers, num_attention_heads=self.heads,
            patch_size=self.patch, image_size=self.image, initializer_range=self.init_std,
        )
        torch.manual_seed(0)
        if self.family == "vit":
            config = transformers.ViTConfig(intermediate_size=4 * self.hidden, **common)
            module = transformers.ViTModel(config, add_pooling_layer=False)
        elif self.family == "dinov3":
            config = transformers.DINOv3ViTConfig(intermediate_size=4 * self.hidden, num_register_tokens=4, **common)
            module = transformers.DINOv3ViTModel(config)
        else:
            module = transformers.Dinov2Model(transformers.Dinov2Config(mlp_ratio=4, **common))
        module.set_attn_implementation(attn_implementation)
        module.to(device, dtype)
        spec = PreprocessSpec(mean=(0.5,) * 3, std=(0.5,) * 3, resize_hw=(self.image, self.image))
        return wrap(module, self.name, spec)


MODELS = {
    spec.name: spec
    for spec in (
        ModelSpec("ViT-B/16", "vit", hidden=768, layers=12, heads=12, patch=16, image=224),
        ModelSpec("DINOv2-S/14", "dinov2", hidden=384, layers=12, heads=6, patch=14, image=518),
        ModelSpec("DINOv2-L/14", "dinov2", hidden=1024, layers=24, heads=16, patch=14, image=518),
        ModelSpec("DINOv3-S/16", "dinov3", hidden=384, layers=12, heads=6, patch=16, image=512),
        ModelSpec("DINOv2-S/14@1022", "dinov2", hidden=384, layers=12, heads=6, patch=14, image=1022),
    )
}
DEFAULT_MODELS = ("ViT-B/16", "DINOv2-S/14", "DINOv2-L/14", "DINOv3-S/16")
"""What a plain ``vitprobe bench`` measures; the 1022 px model (T = 5330) is asked for by name."""


def inputs(spec: ModelSpec, batch: int) -> list[np.ndarray]:
    """Random uint8 images (S, S, 3); image i is the same for every batch size."""
    return [np.random.default_rng(1000 + i).integers(0, 256, (spec.image, spec.image, 3), dtype=np.uint8)
            for i in range(batch)]


# --- the workloads: (model, images) -> named maps, preprocessing included -----------------------


def run_plain(vit: VitModel, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """(a) Preprocessing and the forward alone."""
    pixels, _, _ = vit.prepare(images)
    with torch.no_grad():
        vit.forward(pixels.to(vit.device, vit.dtype))
    return {}


def run_seed(vit: VitModel, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """(b) output_attentions=True, then numpy: per-head CLS rows (L, B, heads, T), rollout (B, T)."""
    pixels, _, _ = vit.prepare(images)
    layout = vit.layout(tuple(pixels.shape[-2:]))
    with torch.no_grad():
        out = vit.module(pixel_values=pixels.to(vit.device, vit.dtype), output_attentions=True)
    if not out.attentions:
        raise CaptureError("output_attentions returned no attention: the model is not running eager attention")
    attentions = [a.float().cpu().numpy() for a in out.attentions]  # L × (B, heads, T, T)
    cls, t = layout.cls_index, layout.n_tokens
    joint = np.zeros((len(attentions), len(pixels), t, t))  # float64, every layer kept, as in the seed
    for n, attn in enumerate(attentions):
        aug = attn.mean(axis=1) + np.eye(t, dtype=np.float32)  # head mean + residual
        aug /= aug.sum(axis=-1, keepdims=True)
        joint[n] = aug if n == 0 else aug @ joint[n - 1]  # (B, T, T) float32 @ float64
    cls_grid = to_grid(torch.from_numpy(np.stack([attn[:, :, cls] for attn in attentions])), layout)
    rollout_grid = to_grid(torch.from_numpy(joint[-1][:, cls]).float(), layout)
    return {"cls_grid": cls_grid, "rollout_grid": rollout_grid, "cls_map_entropy": map_entropy(cls_grid.mean(2)),
            "rollout_entropy": map_entropy(rollout_grid)}


def run_hooks(vit: VitModel, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """(c) Hooks keep each layer's probabilities (B, heads, T, T); rollout (B, T) over full matrices."""
    pixels, _, _ = vit.prepare(images)
    layout = vit.layout(tuple(pixels.shape[-2:]))
    owners = [m for m in vit.module.modules() if isinstance(getattr(m, "q_proj", None), nn.Linear)]
    kept: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: kept.append(out[1])) for m in owners]
    try:
        with torch.no_grad():
            vit.module(pixel_values=pixels.to(vit.device, vit.dtype))
    finally:
        for handle in handles:
            handle.remove()
    if len(kept) != vit.num_layers or any(p is None for p in kept):
        raise CaptureError("attention hooks saw no probabilities: the model is not running eager attention")
    eye = torch.eye(layout.n_tokens, device=vit.device)
    joint = eye
    with torch.no_grad():
        for attn in kept:
            a = (attn.float().mean(dim=1) + eye) / 2
            a = a / a.sum(dim=-1, keepdim=True)
            joint = torch.matmul(a, joint)
    return {"rollout_grid": to_grid(joint[:, layout.cls_index].cpu(), layout)}


def run_cls(vit: VitModel, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """(d) The CLS family through ``vp.attribute``: per-head CLS maps of every layer (L, B, heads, H, W),
    the layer aggregation (B, H, W) and the entropy of every layer's fused map (B, L)."""
    from .methods import attribute

    cls, layers = attribute(vit, images, method=["cls", "layers"], batch_size=len(images))
    return {"cls_grid": layers.detail["layers_heads"].transpose(0, 1), "cls_map": cls.maps, "layers": layers.maps,
            "cls_map_entropy": map_entropy(layers.detail["layers"]).T}


def run_rollout(vit: VitModel, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """(d) Rollout through ``vp.attribute``: (B, H, W)."""
    from .methods import attribute

    return {"rollout_grid": attribute(vit, images, method="rollout", batch_size=len(images)).maps}


def run_full(vit: VitModel, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """(d) What ``analyze`` computes per batch: its per-image metrics (name -> (L, B, ...))."""
    from .runner import AnalyzeOptions, probe_pixels

    pixels, _, _ = vit.prepare(images)
    metrics, _ = probe_pixels(vit, pixels, AnalyzeOptions())
    return {**metrics, "cls_map_entropy": metrics["entropy_cls_map"],
            "rollout_entropy": metrics["entropy_rollout_map"][-1]}


WORKLOADS: dict[str, Callable[[VitModel, list[np.ndarray]], dict[str, torch.Tensor]]] = {
    "plain": run_plain, "seed": run_seed, "hooks": run_hooks, "cls": run_cls, "rollout": run_rollout,
    "full": run_full,
}


# --- memory ------------------------------------------------------------------------------------


def attention_bytes(spec: ModelSpec, batch: int) -> int:
    """All layers × heads × T × T in float32: what output_attentions (or hooks) keep for a batch."""
    return spec.layers * batch * spec.heads * spec.n_tokens**2 * 4


def estimate_bytes(spec: ModelSpec, batch: int, method: str, itemsize: int = 4) -> int:
    """Rough peak memory of one method: runtime, weights, activations and what the method keeps.

    seed/hooks keep every layer's (B, heads, T, T) plus eager's per-layer temporaries, and the seed
    its float64 joint matrices (L, B, T, T); full and rollout keep the head-mean (L, B, T, T).
    """
    t = spec.n_tokens
    base = RUNTIME_BYTES + spec.n_params * itemsize + 12 * batch * t * spec.hidden * itemsize
    layer = batch * spec.heads * t * t * 4
    if method in EAGER:
        joint = spec.layers * batch * t * t * 8 if method == "seed" else 0
        return base + attention_bytes(spec, batch) + 2 * layer + 4 * batch * t * t * 4 + joint
    if method in ("full", "rollout"):
        return base + spec.layers * batch * t * t * 4
    return base


def rss_bytes(field_name: str) -> int:
    """VmRSS / VmHWM of this process from /proc (bytes)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} missing from /proc/self/status")


def reset_peak(device: torch.device) -> None:
    """Start peak-memory tracking here: VmHWM reset through clear_refs, or the CUDA peak counter."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_bytes(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss_bytes("VmHWM")


# --- one measurement in a child process ------------------------------------------------------


def run_child(job: dict) -> dict:
    """Measure one method in this process, under each attention kernel of ``job["kernels"]``, and save its
    maps to ``maps_path`` (one file per kernel).

    After a warm-up on the whole batch (so that what vitprobe keeps between batches of a dataset run, such
    as the head-fused stack's memory, is in place as in ``analyze``'s steady state), each round times the
    method under every kernel and the plain forward back to back (rotating which goes first), so every
    ratio compares runs under the same machine load; rounds stop after ``repeats`` or once a single run
    took longer than ``long_s``. Peak memory covers the rounds (all kernels together), whose plain runs
    never hold more than the method's.
    """
    from .kernels import resolve_kernel

    device, dtype = torch.device(job["device"]), getattr(torch, job["dtype"])
    if device.type == "cpu" and job["cap_bytes"]:
        resource.setrlimit(resource.RLIMIT_AS, (job["cap_bytes"], job["cap_bytes"]))
    spec, method = ModelSpec(**job["spec"]), job["method"]
    vit = spec.build("eager" if method in EAGER else "sdpa", device, dtype)
    images = inputs(spec, job["batch"])
    variants = [method] if method in ("plain", *EAGER) else [f"{method}@{kernel}" for kernel in job["kernels"]]
    names = variants if method == "plain" else [*variants, "plain"]

    def timed(name: str, x: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
        workload, _, kernel = name.partition("@")
        if kernel:
            os.environ["VITPROBE_KERNEL"] = kernel
        vit.module.set_attn_implementation("eager" if workload in EAGER else "sdpa")
        start = time.perf_counter()
        out = WORKLOADS[workload](vit, x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, out

    for name in names:
        timed(name, images if method not in EAGER else images[:1])
    ran = {}
    for name in variants:
        os.environ["VITPROBE_KERNEL"] = name.partition("@")[2] or "auto"
        ran[name] = resolve_kernel(device)
    baseline = torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_bytes("VmRSS")
    reset_peak(device)
    load = [os.getloadavg()[0]]
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(job["repeats"]):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, out = timed(name, images)
            times[name].append(seconds)
            if name in variants:
                torch.save({key: m.detach().float().cpu() for key, m in out.items()},
                           f"{job['maps_path']}.{variants.index(name)}")
            del out
        if max(max(t) for t in times.values()) > job["long_s"]:
            break
    peak = peak_bytes(device)
    load.append(os.getloadavg()[0])
    runs = {name: {"times": times[name], "kernel": ran[name] if "@" in name else "",
                   "ratios": [p / m for p, m in zip(times["plain"], times[name], strict=True)]} for name in variants}
    return {"variants": [runs[name] for name in variants], "plain_times": times["plain"], "peak_bytes": peak,
            "baseline_bytes": baseline, "load": load}


# --- the parent: measurements, comparisons, table ----------------------------------------------


@dataclass
class Measurement:
    """One method on one model/size/batch/dtype.

    ``seconds``: best time per batch; ``ratio``: median over rounds of plain time / method time,
    each round timing both back to back; ``peak_bytes``: peak RSS (CPU) or CUDA allocation.
    """

    method: str
    kernel: str = ""  # the attention kernel that ran (methods that use one)
    seconds: float | None = None
    ratio: float | None = None
    runs: int = 0
    peak_bytes: int | None = None
    baseline_bytes: int | None = None
    load: list[float] = field(default_factory=list)
    note: str = ""
    maps_path: Path | None = None
    max_abs_diff: float | None = None


@dataclass
class Config:
    """What to run: models, batch sizes, device and dtypes, rounds and the memory cap of a child."""

    models: Sequence[ModelSpec] = tuple(MODELS[name] for name in DEFAULT_MODELS)
    batches: Sequence[int] = (1, 8)
    device: str = "cpu"
    dtypes: Sequence[str] = ("float32",)
    methods: Sequence[str] = tuple(WORKLOADS)
    kernels: Sequence[str] = ("auto",)  # VITPROBE_KERNEL values, each timed beside the others in one process
    repeats: int = 3
    long_s: float = 30.0
    cap_bytes: int = int(20 * 2**30)
    timeout_s: float = 3600.0
    workdir: Path | None = None  # where children save their maps; a temporary folder when None


def measure(spec: ModelSpec, batch: int, method: str, dtype: str, cfg: Config, workdir: Path) -> list[Measurement]:
    """Run one method in a child process, one measurement per kernel; a run that cannot fit the cap is not started."""
    need = estimate_bytes(spec, batch, method, torch.finfo(getattr(torch, dtype)).bits // 8)
    if cfg.device == "cpu" and need > cfg.cap_bytes:
        held = attention_bytes(spec, batch) if method in EAGER else need
        return [Measurement(method, note=f"OOM: needs ≈ {need / GB:.1f} GB (attention kept: {held / GB:.1f} GB)"
                            f" > cap {cfg.cap_bytes / 2**30:.0f} GiB; not run")]
    maps_path = workdir / f"{spec.name.replace('/', '_')}_{batch}_{dtype}_{method}.pt"
    job = {
        "spec": asdict(spec), "batch": batch, "method": method, "device": cfg.device, "dtype": dtype,
        "repeats": cfg.repeats, "long_s": cfg.long_s, "cap_bytes": cfg.cap_bytes, "maps_path": str(maps_path),
        "kernels": list(cfg.kernels),
    }
    cmd = [sys.executable, "-m", "vitprobe.bench", "--child", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg.timeout_s)
    except subprocess.TimeoutExpired:
        return [Measurement(method, note=f"timed out after {cfg.timeout_s:.0f} s")]
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        oom = "can't allocate memory" in proc.stderr or "MemoryError" in proc.stderr or proc.returncode == -9
        what = f"OOM under the {cfg.cap_bytes / 2**30:.0f} GiB cap (estimate {need / GB:.1f} GB)" if oom else "failed"
        return [Measurement(method, note=f"{what}: {tail[:160]}")]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return [
        Measurement(
            method, kernel=run["kernel"], seconds=min(run["times"]), ratio=statistics.median(run["ratios"]),
            runs=len(run["times"]), peak_bytes=result["peak_bytes"], baseline_bytes=result["baseline_bytes"],
            load=result["load"], maps_path=Path(f"{maps_path}.{i}"),
        )
        for i, run in enumerate(result["variants"])
    ]


def max_abs_diff(maps: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float | None:
    """Largest |difference| over the compared maps both hold, on the images both hold."""
    diffs = []
    for name, dim in COMPARED.items():
        if name in maps and name in reference:
            n = min(maps[name].shape[dim], reference[name].shape[dim])
            a, b = maps[name].narrow(dim, 0, n), reference[name].narrow(dim, 0, n)
            diffs.append((a.double() - b.double()).abs().max().item())
    return max(diffs) if diffs else None


def compare(results: list[Measurement], reference: dict[str, torch.Tensor] | None) -> None:
    """Fill ``max_abs_diff`` of every method against the reference maps (seed's, or hooks')."""
    for m in results:
        if m.maps_path is not None and reference is not None and m.method != "plain":
            m.max_abs_diff = max_abs_diff(torch.load(m.maps_path, weights_only=True), reference)


def reference_maps(results: list[Measurement]) -> dict[str, torch.Tensor] | None:
    """The maps of (b), else of (c): what the others are compared with."""
    for method in EAGER:
        for m in results:
            if m.method == method and m.maps_path is not None:
                return torch.load(m.maps_path, weights_only=True)
    return None


def machine() -> str:
    """One line on the hardware and software the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"model name\s*:\s*(.*)", f.read())
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import transformers

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, Python "
            f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")


def format_rows(spec: ModelSpec, batch: int, dtype: str, results: list[Measurement]) -> list[str]:
    """Markdown rows: images/s, × (a), × (b), peak memory, max |Δ| vs the reference, rounds, load."""
    seed = next((m for m in results if m.method == "seed" and m.ratio), None)
    rows = []
    for m in results:
        label = LABELS[m.method] + (f" [{m.kernel}]" if m.kernel else "")
        if m.seconds is None:
            rows.append(f"| {spec.label} | {batch} | {dtype} | {label} | {m.note} | | | | | | |")
            continue
        vs_seed = f"{m.ratio / seed.ratio:.2f}" if seed else "–"
        diff = "–" if m.max_abs_diff is None else f"{m.max_abs_diff:.1e}"
        load = "–" if not m.load else f"{max(m.load):.1f}"
        rows.append(
            f"| {spec.label} | {batch} | {dtype} | {label} | {batch / m.seconds:.2f} | {m.ratio:.2f} | "
            f"{vs_seed} | {m.peak_bytes / GB:.2f} | {diff} | {m.runs} | {load} |"
        )
    return rows


HEADER = (
    "| model | batch | dtype | method | images/s | × (a) | × (b) | peak {mem} (GB) | max abs diff vs (b) | rounds "
    "| load |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


TARGETS = {("cls", None): 0.97, ("full", "DINOv2-S/14"): 0.85, ("full", "DINOv2-L/14"): 0.90,
           ("full", "DINOv2-S/14@1022"): 0.70, ("rollout", "DINOv2-S/14"): 0.90}
"""(workload, model or None for every model) -> the least ratio to the plain forward (issue 22), batch 1 and 8
for the CLS family, batch 8 for rollout and the full workload (batch 1 at 1022 px)."""


def check_targets(table: dict[tuple[str, int, str], dict[str, Measurement]], device: str) -> list[str]:
    """The targets, each as a line saying met or missed, with the numbers; and the full workload against (b)."""
    lines = []
    for (name, batch, dtype), by in table.items():
        for (method, model), goal in TARGETS.items():
            m = by.get(method)
            wanted_batch = 1 if name.endswith("@1022") else 8
            if m is None or m.ratio is None or model not in (None, name) or (method != "cls" and batch != wanted_batch):
                continue
            lines.append(f"- {name} b{batch} {dtype} {method}: {m.ratio:.2f}× (a), target ≥ {goal:.2f}: "
                         f"{'met' if m.ratio >= goal else 'MISSED'}")
        seed, full = by.get("seed"), by.get("full")
        if seed and full and seed.ratio and full.ratio:
            lines.append(f"- {name} b{batch} {dtype} full: {full.ratio / seed.ratio:.2f}× the speed of (b)")
    return lines


def run_benchmark(cfg: Config, echo: Callable[[str], None] = print) -> str:
    """Measure every model × batch × dtype × method; return the markdown report (also echoed row by row)."""
    mem = "RSS" if cfg.device == "cpu" else "CUDA allocated"
    lines = [f"Machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}.", "",
             HEADER.format(mem=mem)]
    echo("\n".join(lines))
    table: dict[tuple[str, int, str], dict[str, Measurement]] = {}
    references: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    with tempfile.TemporaryDirectory(prefix="vitprobe_bench_") as tmp:
        workdir = cfg.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for spec, dtype, batch in itertools.product(cfg.models, cfg.dtypes, sorted(cfg.batches)):
            results = [m for method in cfg.methods for m in measure(spec, batch, method, dtype, cfg, workdir)]
            reference = reference_maps(results)
            if reference is not None:
                references.setdefault((spec.name, dtype), reference)
            compare(results, reference or references.get((spec.name, dtype)))
            rows = format_rows(spec, batch, dtype, results)
            lines += rows
            echo("\n".join(rows))
            table[(spec.name, batch, dtype)] = {}
            for m in results:  # a method's first kernel under its name, the others under method@kernel
                table[(spec.name, batch, dtype)].setdefault(m.method, m)
                table[(spec.name, batch, dtype)].setdefault(f"{m.method}@{m.kernel}", m)
    targets = check_targets(table, cfg.device)
    lines += ["", f"Load average at end {os.getloadavg()[0]:.1f}.", "", "Targets:", *targets]
    echo("\n".join(lines[-len(targets) - 4:]))
    return "\n".join(lines)


def update_results(path: Path, device: str, report: str) -> None:
    """Replace the text between ``<!-- bench:DEVICE:begin -->`` and ``<!-- bench:DEVICE:end -->`` in ``path``."""
    begin, end = f"<!-- bench:{device}:begin -->", f"<!-- bench:{device}:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{report}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default=None, help="default float32 on CPU, float32,float16,bfloat16 on GPU")
    parser.add_argument("--methods", default=",".join(WORKLOADS))
    parser.add_argument("--kernels", default="auto", help="comma-separated VITPROBE_KERNEL values, each timed in "
                        "the same process: auto, cpp, triton, torch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cap-gib", type=float, default=20.0, help="memory cap of each child (RLIMIT_AS)")
    parser.add_argument("--update", type=Path, default=None, help="write the table into this RESULTS.md")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    """A Config from command-line values (shared by ``python -m vitprobe.bench`` and ``vitprobe bench``)."""
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if set(methods) - set(WORKLOADS):
        raise ValueError(f"methods must be among {', '.join(WORKLOADS)}, got {args.methods!r}")
    kernel_names = [k.strip().lower() for k in args.kernels.split(",") if k.strip()]
    if not kernel_names or set(kernel_names) - set(KERNELS):
        raise ValueError(f"kernels must be among {', '.join(KERNELS)}, got {args.kernels!r}")
    default_dtypes = "float32" if args.device == "cpu" else "float32,float16,bfloat16"
    return Config(
        models=[MODELS[n] for n in names],
        batches=[int(b) for b in args.batches.split(",")],
        device=args.device,
        dtypes=[d.strip() for d in (args.dtypes or default_dtypes).split(",")],
        methods=methods,
        kernels=kernel_names,
        repeats=args.repeats,
        cap_bytes=int(args.cap_gib * 2**30),
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return
    cfg = config_from(args)
    report = run_benchmark(cfg)
    if args.update:
        update_results(args.update, cfg.device, report)


if __name__ == "__main__":
    main()
