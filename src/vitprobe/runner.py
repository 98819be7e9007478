"""Dataset runs: probe statistics of every image, batch by batch, resumable, sharded over ranks.

The image list is cut into global batches of ``batch_size`` images in listing order; rank R of K
takes the batches b with b % K == R (RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them). Each
finished batch is written atomically with its per-image records, its failures and the states of
the dataset accumulators (``io.store``), so an interrupted run restarted with the same command
recomputes at most the batches that were in flight. When every rank is done, rank 0 merges the
batches in global order: the results do not depend on how many processes ran them, nor on
interruptions.

Per image and layer (and head where it applies) the records hold:

| metric | per | meaning |
|---|---|---|
| ``mean_attention_distance`` | head | pixels, prefix mass counted as distance 0 (``analysis.distance``) |
| ``mean_attention_distance_renormalized`` | head | pixels, rows renormalised over the patches |
| ``entropy_cls`` | head | CLS row over all tokens, nats |
| ``entropy_rows`` | head | mean over all query rows, each over all tokens, nats |
| ``entropy_cls_map`` | layer | head-mean CLS map over the patch grid, renormalised, nats |
| ``entropy_rollout_map`` | layer | rollout (head mean) through layers 0..l over the grid, renormalised, nats |
| ``token_norm_outlier_share`` | layer | share of patch tokens with outlier output norm |
| ``token_norm_max_over_median`` | layer | largest / median patch-token norm |
| ``cls_isolated_peak_share`` | layer | share of patches that are isolated peaks of the head-mean CLS map |
| ``outliers_in_cls_peaks_share`` | layer | share of outlier tokens that are such peaks (NaN: no outlier) |

Images from a table with ``ClassLabel`` columns (``io.datasets``) carry their class names in one more
column per label column (named like it; ``label_<name>`` where that name is a record column), and the
aggregates hold per-class means (``classes``).

Memory stays bounded by one batch: attention is reduced per layer as the forward streams; the only
(T, T) maps kept are the head means (L, B, T, T) that rollout multiplies. A batch that runs out of memory
goes through the model in halves (``memory.BatchSize``: one warning, the smaller size kept); an image that
does not fit alone is recorded in the failures with the memory it asked for, and the run goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import resource
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .analysis.accumulate import Accumulator, Moments
from .analysis.distance import MeanDistance, distance_bound, uniform_distance
from .analysis.entropy import RowEntropy, SpreadLevels, map_entropy
from .analysis.maps import cls_maps, to_grid
from .analysis.rollout import rollout_rows_by_depth
from .analysis.tokens import ArtifactCounts, artifact_counts
from .io.datasets import Listing, MemberError, class_names, is_dataset, labels_of, reading_column, scan
from .io.files import jsonable
from .io.images import IMAGE_SUFFIXES, ImageLoadError, list_images, load_image, printable
from .io.preprocess import PreprocessSpec, preprocess
from .io.store import (
    RECORD_COLUMNS,
    RunLocked,
    RunStore,
    atomic_write_bytes,
    atomic_write_text,
    records_table,
    table_bytes,
    write_failures_csv,
)
from .memory import BatchSize, OutOfMemory
from .models.base import VitModel

log = logging.getLogger(__name__)

HEAD_METRICS = (
    "mean_attention_distance",
    "mean_attention_distance_renormalized",
    "entropy_cls",
    "entropy_rows",
)
LAYER_METRICS = (
    "entropy_cls_map",
    "entropy_rollout_map",
    "token_norm_outlier_share",
    "token_norm_max_over_median",
    "cls_isolated_peak_share",
    "outliers_in_cls_peaks_share",
)
NAN_POLICY = {
    "records.parquet": "outliers_in_cls_peaks_share is NaN for an image and layer without outlier tokens (no share "
                       "to take); every other metric is defined for every analysed image",
    "metrics": "mean and std over every analysed image, NaN counted: a NaN value would make its entry NaN (null "
               "in JSON); none of these metrics can be NaN for softmax attention",
    "artifacts": "shares of counts pooled over the dataset; outliers_in_peaks is null for a layer where no image "
                 "has an outlier token",
    "classes": "per label column, class and layer: the mean of a metric over the class's images (and heads), NaN "
               "values left out (null when none is left); images without a label are counted as unlabelled",
}
"""How undefined values are handled, written into aggregates.json."""

COUNT_METRIC = "token_norm_outlier_share"
"""A per-layer metric of every analysed image, whatever the model: its records count the images."""
CLS_METRICS = ("entropy_cls", "entropy_cls_map", "entropy_rollout_map", "cls_isolated_peak_share",
               "outliers_in_cls_peaks_share")
LIST_COMMENT = "#"


@dataclass(frozen=True)
class AnalyzeOptions:
    """How a dataset run is cut and measured (all but ``workers`` and ``progress`` are in the manifest).

    ``size``: resize every image to (H, W) instead of the model's preprocessing; ``spread_layer``:
    the layer whose ``entropy_cls_map`` sorts images into spread levels (negative: from the end);
    ``image_column``: the column images are read from in tables (None: the one ``io.datasets`` finds).
    """

    batch_size: int = 16
    limit: int | None = None
    size: tuple[int, int] | None = None
    spread_layer: int = -1
    outlier_ratio: float = 4.0
    peak_ratio: float = 3.0
    workers: int = 0
    progress: bool = True
    image_column: str | None = None


@dataclass(frozen=True)
class Ranks:
    """This process's place in a (possibly) distributed run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def ranks_from_env() -> Ranks:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them; a single process without them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return Ranks(rank, world, int(os.environ.get("LOCAL_RANK", str(rank))))


def default_device(ranks: Ranks) -> str:
    """cuda:LOCAL_RANK where CUDA is available, else cpu."""
    return f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else "cpu"


def init_distributed(ranks: Ranks, device: torch.device) -> None:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU); a no-op for one process."""
    import torch.distributed as dist

    if ranks.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # ranks wait for each other at the end of long runs: a generous timeout
        dist.init_process_group(backend, timeout=timedelta(hours=48), device_id=device if backend == "nccl" else None)


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier()


def read_image_list(source: Path, splits: Sequence[str] | None = None, image_column: str | None = None) -> list[Path]:
    """A folder (searched recursively, sorted), a text file with one image path per line, or dataset
    containers (``io.datasets``: tar shards, a ``{a..b}`` range of them, Parquet, a ``save_to_disk`` folder
    of a ``Dataset`` or a ``DatasetDict``, of which ``splits`` picks splits; ``image_column`` the column
    of images in tables).

    In a list file, blank lines and lines starting with ``#`` are skipped and relative paths are
    taken relative to the list file's folder. Raises ``ImageLoadError`` (one line naming ``source``).
    """
    return read_source(source, splits, image_column).items


def read_source(source: Path, splits: Sequence[str] | None = None, image_column: str | None = None) -> Listing:
    """``read_image_list`` with what was found (``io.datasets.Listing``: splits, image and label columns)."""
    if is_dataset(source):
        try:
            return scan(source, IMAGE_SUFFIXES, splits, image_column)
        except (MemberError, FileNotFoundError, ValueError) as err:
            raise ImageLoadError(source, str(err).removeprefix(f"{source}: ")) from None
    source = Path(source)
    if splits:
        raise ImageLoadError(source, "splits can only be picked in a DatasetDict folder (one with "
                                     "dataset_dict.json)")
    if image_column is not None:
        raise ImageLoadError(source, "an image column can only be chosen in Parquet files and Hugging Face "
                                     "datasets")
    if source.is_dir():
        return Listing(list_images([source]))
    if not source.is_file():
        raise ImageLoadError(source, "no such file or directory")
    paths = []
    for line in source.read_text().splitlines():
        entry = line.strip()
        if entry and not entry.startswith(LIST_COMMENT):
            path = Path(entry).expanduser()
            paths.append(path if path.is_absolute() else source.parent / path)
    return Listing(paths)


class _BatchLoader(Dataset):
    """Item i: (global batch index, [(image index, pixels (3, H, W))], [(file, reason)]) of batch i."""

    def __init__(self, batches: list[tuple[int, list[tuple[int, Path]]]], spec: PreprocessSpec, patch: int,
                 image_column: str | None = None) -> None:
        self.batches, self.spec, self.patch, self.image_column = batches, spec, patch, image_column

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        index, members = self.batches[i]
        loaded, failures = [], []
        with reading_column(self.image_column):  # set here too: worker processes start without it
            for image_index, path in members:
                try:
                    image = load_image(path, draft_side=self.spec.decode_side())
                    loaded.append((image_index, preprocess(image, self.spec, self.patch)[0]))
                except ImageLoadError as err:
                    failures.append((printable(path), err.reason))
                except Exception as err:  # any other reason a file cannot be used: recorded, never stops the run
                    failures.append((printable(path), f"{type(err).__name__}: {err}"))
        return index, loaded, failures


class _InputSizes(Accumulator):
    """The (H, W) model input of every analysed image: ``compute`` gives the distinct sizes and counts."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("hw", torch.zeros(0, 2, dtype=torch.int64), "cat")

    def update(self, hw: tuple[int, int], n: int) -> None:
        self._add("hw", torch.tensor([hw] * n, dtype=torch.int64).view(-1, 2))

    def compute(self) -> dict[str, torch.Tensor]:
        sizes, counts = torch.unique(self.state("hw"), dim=0, return_counts=True)
        return {"sizes": sizes, "counts": counts}


def make_accumulators(n_layers: int, n_heads: int, has_cls: bool) -> dict[str, Accumulator]:
    """The dataset statistics of a run (fresh, empty)."""
    accs: dict[str, Accumulator] = {
        name: Moments((n_layers, n_heads)) for name in HEAD_METRICS if has_cls or name not in CLS_METRICS
    }
    for name in ("entropy_cls_map", "entropy_rollout_map", "token_norm_max_over_median"):
        if has_cls or name not in CLS_METRICS:
            accs[name] = Moments((n_layers,))
    accs["artifacts"] = ArtifactCounts(n_layers)
    accs["input_hw"] = _InputSizes()
    if has_cls:
        accs["spread"] = SpreadLevels()
    return accs


def flat_states(accs: dict[str, Accumulator]) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value for name, acc in accs.items() for key, value in acc.state_dict().items()}


def merge_flat(accs: dict[str, Accumulator], flat: dict[str, torch.Tensor]) -> None:
    for name, acc in accs.items():
        acc.merge({key.split(".", 1)[1]: value for key, value in flat.items() if key.split(".", 1)[0] == name})


def probe_pixels(model: VitModel, pixels: torch.Tensor, opts: AnalyzeOptions) -> tuple[dict[str, torch.Tensor], dict]:
    """One forward pass over pixels (B, 3, H, W): per-image metrics and the artifact counts.

    Attention is reduced block by block as each layer is computed (``MeanDistance``, ``RowEntropy``, the
    head mean for rollout), so no (B, heads, T, T) tensor is allocated. Returns
    ({metric: (L, B, heads) or (L, B) float64}, counts from ``artifact_counts`` plus the ``layout`` under the
    key ``"layout"``).
    """
    reducers = {
        "mean_attention_distance": MeanDistance(renormalize=False),
        "mean_attention_distance_renormalized": MeanDistance(renormalize=True),
        "row_entropy": RowEntropy(),
    }
    cap = model.capture_pixels(
        pixels, fuse=("mean",) if "cls" in model.prefix_names else (), full_layers=(), reducers=reducers,
        token_norms=True, batch_size=pixels.shape[0],
    )
    layout = cap.layout
    rows = cap.reduced.pop("row_entropy").double()  # (L, B, heads, T)
    metrics = {name: value.double() for name, value in cap.reduced.items()}
    metrics["entropy_rows"] = rows.mean(dim=-1)
    head_mean = None
    if cap.cls is not None:
        metrics["entropy_cls"] = rows[..., layout.cls_index]
        head_mean = cls_maps(cap.cls, layout).mean(dim=2)  # (L, B, H, W)
        metrics["entropy_cls_map"] = map_entropy(head_mean).double()
        fused = cap.fused.pop("mean")
        depths = to_grid(rollout_rows_by_depth(fused, layout), layout)  # (L, B, H, W)
        metrics["entropy_rollout_map"] = map_entropy(depths).double()
    counts = artifact_counts(cap.token_norms, layout, head_mean, opts.outlier_ratio, opts.peak_ratio)
    n = layout.n_patches
    metrics["token_norm_outlier_share"] = counts["outliers"].double() / n
    metrics["token_norm_max_over_median"] = counts["max_over_median"]
    if head_mean is not None:
        metrics["cls_isolated_peak_share"] = counts["peaks"].double() / n
        outliers = counts["outliers"].double()
        metrics["outliers_in_cls_peaks_share"] = torch.where(
            outliers > 0, counts["outlier_peaks"].double() / outliers.clamp_min(1), torch.nan
        )
    counts["layout"] = layout
    return metrics, counts


def probe_group(model: VitModel, pixels: list[torch.Tensor], opts: AnalyzeOptions, sizer: BatchSize,
                names: list[str], failures: list[tuple[str, str]]) -> list[tuple[slice, tuple[dict, dict]]]:
    """``probe_pixels`` over images (3, H, W) of one size, ``sizer.size`` at a time: [(slice of the images,
    (metrics, counts))]. An image that does not fit in memory alone is added to ``failures`` (named from
    ``names``) with one warning, and left out."""
    stack = torch.stack(pixels)

    def too_large(i: int, err: OutOfMemory) -> None:
        log.warning("%s: %s", names[i], err)
        failures.append((names[i], str(err)))

    return sizer.run(len(pixels), lambda span: probe_pixels(model, stack[span], opts), too_large)


def long_records(names: Sequence[str], layers: Sequence[int], metrics: dict[str, torch.Tensor]) -> dict[str, list]:
    """Per-image metrics {name: (L, B, heads) or (L, B)} -> long columns image, layer, head, metric, value.

    Rows run image by image, then metric (in the module table's order), layer, head.
    """
    cols: dict[str, list] = {key: [] for key in RECORD_COLUMNS}
    order = [m for m in (*HEAD_METRICS, *LAYER_METRICS) if m in metrics]
    for b, image in enumerate(names):
        for metric in order:
            values = metrics[metric][:, b]
            per_head = values.ndim == 2
            flat = values.reshape(-1).tolist()
            n_heads = values.shape[1] if per_head else 1
            for k, value in enumerate(flat):
                layer_pos, head = divmod(k, n_heads)
                cols["image"].append(image)
                cols["layer"].append(layers[layer_pos])
                cols["head"].append(head if per_head else None)
                cols["metric"].append(metric)
                cols["value"].append(value)
    return cols


def label_column(name: str) -> str:
    """The records' column of a label column: its name, ``label_<name>`` where that is a record column."""
    return f"label_{name}" if name in RECORD_COLUMNS else name


def add_labels(labels: dict[str, list], images: Sequence[Path], before: int, per_image: int) -> None:
    """Extend the label columns of a batch's records (``before`` rows so far) by the class names of
    ``images`` (``io.datasets.labels_of``), ``per_image`` rows each; a column first seen here is filled
    with None for the rows before."""
    for image in images:
        found = {label_column(k): v for k, v in labels_of(image).items()}
        for key in found:
            labels.setdefault(key, [None] * before)
        for key, values in labels.items():
            values.extend([found.get(key)] * per_image)
    for values in labels.values():
        values.extend([None] * (before + per_image * len(images) - len(values)))


def update_accumulators(
    accs: dict[str, Accumulator], metrics: dict[str, torch.Tensor], counts: dict, indices: list[int], spread_pos: int
) -> None:
    for name, acc in accs.items():
        if isinstance(acc, Moments):
            acc.update(metrics[name].transpose(0, 1))  # (B, L, ...)
    layout = counts["layout"]
    accs["artifacts"].update(counts, layout.n_patches)
    accs["input_hw"].update(layout.input_hw, len(indices))
    if "spread" in accs:
        accs["spread"].update(torch.tensor(indices), metrics["entropy_cls_map"][spread_pos])


def manifest_for(model: VitModel, images: list[Path], opts: AnalyzeOptions, ranks: Ranks) -> dict:
    """What must stay the same for a resumed run to continue this one."""
    listing = hashlib.sha256("\n".join(map(str, images)).encode("utf-8", "surrogateescape")).hexdigest()
    kept = {k: v for k, v in asdict(opts).items() if k not in ("workers", "progress")}
    kept["size"] = list(opts.size) if opts.size else None
    return {
        "format": "vitprobe-analyze-1",
        "model": model.name,
        "preprocess": model.preprocess.to_dict(),
        "images": len(images),
        "images_sha256": listing,
        "world_size": ranks.world,
        **kept,
    }


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class CtrlC:
    """Ctrl-C (SIGINT) stops a run at once with KeyboardInterrupt, as Python's own handler does, and
    remembers it: where the exception cannot propagate (Python swallows it when it lands in a finalizer
    run by the garbage collector), ``check`` raises it again at the next batch boundary. Installed only
    in the main thread, the only one that receives signals."""

    def __init__(self) -> None:
        self.requested = False
        self._installed = False
        self._previous: object = signal.SIG_DFL

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._previous = signal.SIG_DFL if previous is None else previous  # None: set outside Python
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, _signum: int, _frame: object) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


def run_shard(
    model: VitModel, images: list[Path], store: RunStore, opts: AnalyzeOptions, ranks: Ranks
) -> dict:
    """Analyse this rank's unfinished batches; returns timing facts of this session for this rank."""
    spec = model.preprocess.with_size(opts.size) if opts.size else model.preprocess
    n_batches = math.ceil(len(images) / opts.batch_size)
    done = store.done_batches(ranks.world)
    todo = []
    for b in range(ranks.rank, n_batches, ranks.world):
        if b not in done:
            start = b * opts.batch_size
            todo.append((b, list(enumerate(images[start : start + opts.batch_size], start))))
    mine = sum(len(images[b * opts.batch_size : (b + 1) * opts.batch_size])
               for b in range(ranks.rank, n_batches, ranks.world))
    left = sum(len(members) for _, members in todo)
    spread_pos = model.resolve_layers([opts.spread_layer])[0]
    loader = DataLoader(
        _BatchLoader(todo, spec, model.patch_size, opts.image_column), batch_size=None, shuffle=False,
        num_workers=opts.workers,
    )
    desc = "analyze" if not ranks.distributed else f"analyze rank {ranks.rank}/{ranks.world}"
    bar = tqdm(total=mine, initial=mine - left, desc=desc, unit="image", disable=not opts.progress,
               position=ranks.rank if ranks.distributed else None)
    layers = list(range(model.num_layers))
    sizer = BatchSize(opts.batch_size, "analyze")
    processed, start = 0, time.perf_counter()
    with bar, CtrlC() as ctrl_c:
        for index, loaded, failures in loader:
            accs = make_accumulators(model.num_layers, model.num_heads, "cls" in model.prefix_names)
            columns: dict[str, list] = {key: [] for key in RECORD_COLUMNS}
            labels: dict[str, list] = {}
            by_size: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
            for image_index, pixels in loaded:
                by_size.setdefault(tuple(pixels.shape[-2:]), []).append((image_index, pixels))
            for group in by_size.values():
                names = [printable(images[i]) for i, _ in group]
                for span, (metrics, counts) in probe_group(model, [p for _, p in group], opts, sizer, names,
                                                           failures):
                    indices = [i for i, _ in group[span]]
                    update_accumulators(accs, metrics, counts, indices, spread_pos)
                    part = long_records([printable(images[i]) for i in indices], layers, metrics)
                    add_labels(labels, [images[i] for i in indices], len(columns["image"]),
                               len(part["image"]) // max(1, len(indices)))
                    for key in columns:
                        columns[key].extend(part[key])
            columns.update(labels)
            store.write_batch(ranks.rank, ranks.world, index, columns, failures, flat_states(accs))
            processed += len(loaded) + len(failures)
            bar.update(len(loaded) + len(failures))
            ctrl_c.check()
    elapsed = time.perf_counter() - start
    return {"rank": ranks.rank, "images": processed, "seconds": elapsed, "peak_rss_mb": _peak_rss_mb()}


def finalize(model: VitModel, images: list[Path], store: RunStore, opts: AnalyzeOptions, world: int) -> dict:
    """Merge every finished batch in global order into records.parquet, failures.csv, aggregates.json."""
    import pyarrow as pa

    accs = make_accumulators(model.num_layers, model.num_heads, "cls" in model.prefix_names)
    tables, failures = [], []
    for _, folder in store.iter_batches(world):
        table, batch_failures, states = store.read_batch(folder)
        tables.append(table)
        failures.extend(batch_failures)
        merge_flat(accs, states)
    records = (pa.concat_tables(tables, promote_options="default") if tables
               else records_table({k: [] for k in RECORD_COLUMNS}))
    atomic_write_bytes(store.root / "records.parquet", table_bytes(records))
    write_failures_csv(store.root / "failures.csv", failures)
    aggregates = aggregate_summary(model, images, accs, failures, opts)
    classes = class_summary(records, class_names(images))
    if classes:
        aggregates["classes"] = jsonable(classes)
    atomic_write_text(store.root / "aggregates.json", json.dumps(aggregates, indent=1))
    return aggregates


def class_summary(records, names: dict[str, list[str]]) -> dict:
    """Per label column (``names``: its class names in label order): the images of each class and, per
    metric and layer, the mean of the class's values over its images and heads, NaN left out.

    {column: {"images": {class: n}, "unlabelled": n, "metrics": {metric: {class: [per layer]}}}}, classes
    in label order (names missing from ``names`` after them, sorted)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out: dict[str, dict] = {}
    value = records.column("value")
    value = pc.if_else(pc.is_nan(value), pa.scalar(None, pa.float64()), value)  # NaN left out of the means
    for name, known in names.items():
        column = label_column(name)
        if column not in records.column_names:
            continue
        table = pa.table({"label": records.column(column), "metric": records.column("metric"),
                          "layer": records.column("layer"), "value": value}).unify_dictionaries()
        # one thread: the sums run in record order, so the means do not depend on the machine's threads
        groups = table.group_by(["label", "metric", "layer"], use_threads=False).aggregate(
            [("value", "mean"), ([], "count_all")]).to_pylist()
        first = min((g["layer"] for g in groups), default=0)
        counted = [g for g in groups if g["metric"] == COUNT_METRIC and g["layer"] == first]  # a record per image
        counts = {g["label"]: g["count_all"] for g in counted if g["label"] is not None}
        order = [c for c in known if c in counts] + sorted(set(counts) - set(known))
        n_layers = max((g["layer"] for g in groups), default=-1) + 1
        metrics: dict[str, dict[str, list]] = {}
        for g in groups:
            if g["label"] is not None:
                per_layer = metrics.setdefault(g["metric"], {}).setdefault(g["label"], [math.nan] * n_layers)
                per_layer[g["layer"]] = math.nan if g["value_mean"] is None else g["value_mean"]
        ordered = {m: {c: metrics[m].get(c, [math.nan] * n_layers) for c in order}
                   for m in (*HEAD_METRICS, *LAYER_METRICS) if m in metrics}
        out[name] = {"column": column, "images": {c: counts[c] for c in order},
                     "unlabelled": sum(g["count_all"] for g in counted if g["label"] is None), "metrics": ordered}
    return out


def aggregate_summary(
    model: VitModel, images: list[Path], accs: dict[str, Accumulator], failures: list, opts: AnalyzeOptions
) -> dict:
    """The dataset aggregates as a JSON-ready dict."""
    sizes = accs["input_hw"].compute()
    input_sizes = [{"input_hw": hw, "images": n} for hw, n in zip(sizes["sizes"].tolist(), sizes["counts"].tolist(),
                                                                     strict=True)]
    metrics = {}
    for name, acc in accs.items():
        if isinstance(acc, Moments):
            stats = acc.compute()
            metrics[name] = {"shape": "(layers, heads)" if len(acc.shape) == 2 else "(layers,)",
                             "mean": stats["mean"], "std": stats["std"], "images": int(stats["count"])}
    out = {
        "model": model.describe(),
        "nan_policy": NAN_POLICY,
        "images": {"listed": len(images), "analysed": int(accs["artifacts"].state("images")),
                   "failed": len(failures)},
        "input_sizes": input_sizes,
        "layers": list(range(model.num_layers)),
        "metrics": metrics,
        "artifacts": {"outlier_ratio": opts.outlier_ratio, "peak_ratio": opts.peak_ratio,
                      **{k: v for k, v in accs["artifacts"].compute().items() if k != "images"}},
    }
    if input_sizes:
        grid = model.layout(tuple(input_sizes[0]["input_hw"]))
        out["distance_bound_px"] = distance_bound(grid)
        out["distance_uniform_px"] = uniform_distance(grid)
        out["entropy_max_nats"] = {"row": math.log(grid.n_tokens), "map": math.log(grid.n_patches)}
    if "spread" in accs:
        spread = accs["spread"].compute()
        levels: dict[str, list] = {}
        for index, value, level in zip(spread["index"].tolist(), spread["value"].tolist(), spread["level"].tolist(),
                                       strict=True):
            levels.setdefault(str(level), []).append({"image": str(images[index]), "entropy_cls_map": value})
        out["spread_levels"] = {
            "metric": "entropy_cls_map",
            "layer": model.resolve_layers([opts.spread_layer])[0],
            "edges": spread["edges"],
            "levels": {k: sorted(levels[k], key=lambda m: m["entropy_cls_map"]) for k in sorted(levels)},
        }
    return jsonable(out)


def run_analysis(
    model: VitModel, images: list[Path], out: Path, opts: AnalyzeOptions, ranks: Ranks | None = None
) -> dict | None:
    """Analyse ``images`` into ``out`` (resuming what a previous run of the same command finished).

    Every rank runs its shard; rank 0 then merges all parts and returns the aggregates, with this
    session's ``timing`` (images/s, peak memory per rank; also written to ``timing.json``, apart from
    the results, which do not depend on the session) added; other ranks return None.
    """
    ranks = ranks or Ranks()
    if opts.batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {opts.batch_size}")
    images = images[: opts.limit] if opts.limit is not None else list(images)
    with hold(out, ranks), reading_column(opts.image_column):
        return _run_locked(model, images, RunStore(out), opts, ranks)


@contextlib.contextmanager
def hold(out: Path, ranks: Ranks) -> Iterator[None]:
    """Hold the output folder for this run: rank 0 takes its lock for all the ranks of the run, and every
    rank raises ``RunLocked`` (naming the holder) when another run has it. Nested holds are free."""
    with contextlib.ExitStack() as held:
        refused = None
        if ranks.rank == 0:
            try:
                held.enter_context(RunStore(out).lock())
            except RunLocked as err:
                refused = str(err)
        refused = agree(ranks, refused)
        if refused:
            raise RunLocked(refused)
        yield


def agree(ranks: Ranks, value: str | None) -> str | None:
    """Rank 0's ``value`` on every rank (one process: the value itself)."""
    if not ranks.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _run_locked(
    model: VitModel, images: list[Path], store: RunStore, opts: AnalyzeOptions, ranks: Ranks
) -> dict | None:
    """``run_analysis`` once the folder is this run's."""
    manifest = manifest_for(model, images, opts, ranks)
    if ranks.rank == 0:
        store.claim(manifest)
    barrier(ranks)
    if ranks.rank != 0:
        store.claim(manifest)  # written by rank 0: only checks
    store.clean_partial(ranks.rank, ranks.world)
    store.verify_part(ranks.rank, ranks.world)
    barrier(ranks)
    timing = run_shard(model, images, store, opts, ranks)
    atomic_write_text(store.part_dir(ranks.rank, ranks.world) / "timing.json", json.dumps(timing))
    barrier(ranks)
    if ranks.rank != 0:
        return None
    aggregates = finalize(model, images, store, opts, ranks.world)
    per_rank = [json.loads((store.part_dir(r, ranks.world) / "timing.json").read_text()) for r in range(ranks.world)]
    seconds = max(t["seconds"] for t in per_rank)
    done = sum(t["images"] for t in per_rank)
    aggregates["timing"] = {
        "images_this_session": done,
        "seconds": seconds,
        "images_per_second": done / seconds if seconds > 0 else None,
        "peak_rss_mb_per_rank": [t["peak_rss_mb"] for t in per_rank],
    }
    atomic_write_text(store.root / "timing.json", json.dumps(aggregates["timing"], indent=1))
    return aggregates
