"""``faithfulness(model, images, methods)``: how well each method's map tracks what the model uses.

Per image and method (and two baselines run through the same pipeline: a random map and a centre
Gaussian), with the protocols of ``analysis.perturbation``:

- deletion and insertion curves and their AUC (RISE), positive and negative perturbation AUC
  (Chefer et al. 2021), all on the target score re-evaluated for each perturbed image (batched);
- the cascading model-randomisation check (Adebayo et al. 2018): the blocks are re-initialised from
  the top block down, one more per step (each parameter tensor redrawn from a normal distribution with
  its own mean and standard deviation, seeded), the maps computed again, and the Spearman rank
  correlation of each with the original map recorded per step. The random baseline is redrawn at
  every step (the ρ of an unrelated map, ≈ 0); the centre Gaussian never changes (ρ = 1: a map that
  ignores the model passes nothing). The weights are restored afterwards.

The score: for a classifier (a class target, or none), the softmax probability of the class (the
given one, else the unperturbed image's top class, also given to the gradient methods so that
randomised models explain the same class); for an embedding target (``self``, ``image:PATH``, or
none on a model without head), the cosine similarity of the perturbed image's pooled embedding to
the unperturbed image's own, or to the other image's. Deletion: lower AUC is more faithful;
insertion: higher; positive perturbation: lower; negative: higher.

The summary gives each metric's mean over the images with a 95 % percentile bootstrap interval
(``scipy.stats.bootstrap``, 10 000 resamples of the images, seeded) and each method's seconds per
image (its original maps only, the randomised models not counted).

Perturbed images that run out of memory together are scored in halves (``memory.BatchSize``, one
warning); an image that does not fit alone is recorded in the failures with the memory it asked for.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import ConstantInputWarning, bootstrap, spearmanr
from tqdm.auto import tqdm

from .analysis import perturbation as pt
from .io.files import atomic_write_text
from .memory import BatchSize, OutOfMemory, one_item
from .methods.attribute import MethodSpec, _is_single, attribute, check, spec_labels
from .methods.base import default_faithfulness_methods, get_method
from .models.base import ImageInput, VitModel
from .targets import IMAGE_PREFIX, SELF, Target, embed, is_embedding_target, readout_forward, resolve_target

BASELINES = ("baseline-random", "baseline-centre")
CURVES = ("deletion", "insertion", "positive", "negative")
METRICS = ("deletion_auc", "insertion_auc", "positive_auc", "negative_auc", "randomisation_rho")
CONFIDENCE = 0.95
RESAMPLES = 10_000
SUMMARY_COLUMNS = ("method", "images", *(f"{m}{end}" for m in METRICS for end in ("", "_low", "_high")),
                   "seconds_per_image")


@dataclass(frozen=True)
class Record:
    """One image's results for one method: the score ``curves`` (name -> (K + 1,) or (9,)), ``rho``
    (S,) the Spearman correlation with the original map after 1..S blocks re-initialised, and the
    ``seconds`` its original maps took (NaN for the baselines)."""

    image: str
    method: str
    curves: dict[str, np.ndarray]
    rho: np.ndarray
    seconds: float = math.nan

    def metrics(self, fractions: np.ndarray) -> dict[str, float]:
        """The AUC of each curve and the mean ρ over the randomisation steps (NaN without them)."""
        out = {f"{name}_auc": pt.auc(self.curves[name], fractions if name in ("deletion", "insertion")
                                     else np.asarray(pt.PERTURBATION_FRACTIONS))
               for name in CURVES}
        out["randomisation_rho"] = float(np.mean(self.rho)) if len(self.rho) else math.nan
        return out


@dataclass
class Faithfulness:
    """The results of ``faithfulness``: one ``Record`` per (image, method), baselines included, the
    deletion/insertion ``fractions`` (K + 1,), and ``score`` saying what was measured."""

    model: str
    score: str
    fractions: np.ndarray
    records: list[Record] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.records))

    @property
    def images(self) -> list[str]:
        return list(dict.fromkeys(r.image for r in self.records))

    def rows(self) -> list[dict[str, Any]]:
        """One row per image and method: image, method and the ``METRICS``."""
        return [{"image": r.image, "method": r.method, **r.metrics(self.fractions)} for r in self.records]

    def summary(self) -> list[dict[str, Any]]:
        """One row per method (``SUMMARY_COLUMNS``): the number of images, each metric's mean over them with
        its 95 % bootstrap interval (``_low``, ``_high``; NaN with fewer than two images), and the mean
        seconds per image of the method's own maps."""
        out = []
        seed = int(self.options.get("seed", 0))
        for method in self.methods:
            records = [r for r in self.records if r.method == method]
            row: dict[str, Any] = {"method": method, "images": len(records)}
            metrics = [r.metrics(self.fractions) for r in records]
            for key in METRICS:
                row.update(zip((key, f"{key}_low", f"{key}_high"),
                               mean_interval(np.array([m[key] for m in metrics]), seed), strict=True))
            seconds = [r.seconds for r in records if not math.isnan(r.seconds)]
            row["seconds_per_image"] = float(np.mean(seconds)) if seconds else math.nan
            out.append(row)
        return out

    def mean_curve(self, method: str, curve: str) -> np.ndarray:
        return np.mean([r.curves[curve] for r in self.records if r.method == method], axis=0)

    def mean_rho(self, method: str) -> np.ndarray:
        return np.mean([r.rho for r in self.records if r.method == method], axis=0)

    def to_json(self) -> dict[str, Any]:
        def clean(values) -> list[float | None]:
            return [None if math.isnan(v) else round(float(v), 6) for v in np.asarray(values, dtype=float)]

        return {
            "model": self.model, "score": self.score, "options": self.options,
            "fractions": clean(self.fractions), "perturbation_fractions": list(pt.PERTURBATION_FRACTIONS),
            "summary": [{k: (clean([v])[0] if isinstance(v, float) else v) for k, v in row.items()}
                        for row in self.summary()],
            "records": [{"image": r.image, "method": r.method, **{k: clean([v])[0] for k, v in
                                                                  r.metrics(self.fractions).items()},
                         "seconds": clean([r.seconds])[0],
                         "curves": {k: clean(v) for k, v in r.curves.items()}, "rho": clean(r.rho)}
                        for r in self.records],
            "failures": [{"image": image, "error": error} for image, error in self.failures],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Faithfulness:
        """The results ``to_json`` wrote (the curves, ρ and seconds of every record)."""
        def array(values) -> np.ndarray:
            return np.array([math.nan if v is None else v for v in values], dtype=float)

        records = [Record(r["image"], r["method"], {k: array(v) for k, v in r["curves"].items()}, array(r["rho"]),
                          math.nan if r.get("seconds") is None else float(r["seconds"])) for r in data["records"]]
        return cls(data["model"], data["score"], array(data["fractions"]), records,
                   [(f["image"], f["error"]) for f in data["failures"]], dict(data["options"]))

    @classmethod
    def read(cls, out: Path) -> Faithfulness:
        """The results ``write`` left in folder ``out`` (its faithfulness.json)."""
        return cls.from_json(json.loads((Path(out) / "faithfulness.json").read_text()))

    @classmethod
    def combine(cls, reports: Sequence[Faithfulness]) -> Faithfulness:
        """One table of several runs over other images with the same model, score rule and options
        (e.g. one run per image or shard): records and failures concatenated."""
        if not reports:
            raise ValueError("combine needs at least one faithfulness result")
        first = reports[0]
        for other in reports[1:]:
            if (other.model, other.options, list(other.fractions)) != (first.model, first.options,
                                                                       list(first.fractions)):
                raise ValueError("faithfulness results of another model or other options cannot be combined")
        return cls(first.model, first.score, first.fractions, [r for rep in reports for r in rep.records],
                   [f for rep in reports for f in rep.failures], dict(first.options))

    def write(self, out: Path) -> list[Path]:
        """faithfulness.csv (per image and method), summary.csv (per method), faithfulness.json
        (everything, curves included) and curves.png under ``out``; returns the paths."""
        from .render.figures import save_figure
        from .render.plots import faithfulness_figure

        out.mkdir(parents=True, exist_ok=True)
        written = [_write_csv(out / "faithfulness.csv", ["image", "method", *METRICS], self.rows()),
                   _write_csv(out / "summary.csv", SUMMARY_COLUMNS, self.summary())]
        written.append(atomic_write_text(out / "faithfulness.json", json.dumps(self.to_json(), indent=1),
                                         "the faithfulness results"))
        if self.records:
            figure = faithfulness_figure(
                self.fractions, {m: self.mean_curve(m, "deletion") for m in self.methods},
                {m: self.mean_curve(m, "insertion") for m in self.methods}, {m: self.mean_rho(m) for m in self.methods},
                self.score, f"Faithfulness of {self.model}'s maps, mean over {len(self.images)} image(s)")
            written.append(save_figure(figure, out / "curves.png"))
        return written


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> Path:
    import csv
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return atomic_write_text(path, text.getvalue(), "a faithfulness table")


ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def mean_interval(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` (N,) (NaNs left out) and its 95 % percentile bootstrap
    interval over 10 000 resamples (NaN bounds with fewer than two values; equal bounds when all agree)."""
    kept = values[~np.isnan(values)]
    if len(kept) == 0:
        return math.nan, math.nan, math.nan
    mean = float(kept.mean())
    if len(kept) < 2:
        return mean, math.nan, math.nan
    if np.all(kept == kept[0]):
        return mean, mean, mean
    result = bootstrap((kept,), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method="percentile",
                       rng=np.random.default_rng(seed))
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


def target_score(model: VitModel, pixels: torch.Tensor, target: Target) -> tuple[ScoreFn, str, Target]:
    """The score of the module docstring for one image's pixels (1, 3, H, W): (score of perturbed
    pixels (M, 3, H, W) -> (M,), its description, the target to give the gradient methods)."""
    own, logits = readout_forward(model, pixels)
    if is_embedding_target(target) or (target is None and logits is None):
        if target is None or target == SELF:
            reference, words, method_target = own[0], "cosine to the unperturbed image's embedding", SELF
        else:
            other, _, _ = model.prepare(target.removeprefix(IMAGE_PREFIX))
            reference = embed(model, other)[0]
            words, method_target = f"cosine to the embedding of {target.removeprefix(IMAGE_PREFIX)}", target

        def cosine(batch: torch.Tensor) -> torch.Tensor:
            return F.cosine_similarity(readout_forward(model, batch)[0], reference[None], dim=-1).cpu()

        return cosine, words, method_target
    if logits is None:
        raise ValueError(f"{model.name} has no classification head: give target='self' or 'image:PATH'")
    index = int(logits[0].argmax()) if target is None else resolve_target(target, model.labels, logits.shape[-1])
    label = model.labels.get(index)

    def probability(batch: torch.Tensor) -> torch.Tensor:
        return readout_forward(model, batch)[1].softmax(-1)[:, index].cpu()

    return probability, f"probability of class {index}" + (f" ({label})" if label else ""), index


@contextmanager
def cascading_randomisation(model: VitModel, seed: int) -> Iterator[Callable[[int], None]]:
    """Yields ``randomise(k)``: re-initialise block L − k (call with k = 1, 2, ... for the cascade from the
    top); every tensor of the block redrawn from N(its mean, its std²), seeded by (seed, k). The
    blocks' weights are restored on exit."""
    saved: dict[int, dict[str, torch.Tensor]] = {}

    def randomise(k: int) -> None:
        index = model.num_layers - k
        block = model.blocks[index]
        saved.setdefault(index, copy.deepcopy(block.state_dict()))
        generator = torch.Generator().manual_seed(seed * 1000 + k)
        with torch.no_grad():
            for tensor in block.parameters():
                if tensor.numel() > 1:
                    noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
                    tensor.copy_(noise * tensor.double().std().cpu() + tensor.double().mean().cpu())

    try:
        yield randomise
    finally:
        for index, state in saved.items():
            model.blocks[index].load_state_dict(state)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(spearmanr(a.flatten().double().numpy(), b.flatten().double().numpy()).statistic)


def _with_target(specs: list[tuple[str, dict[str, Any]]], target: Target) -> list[tuple[str, dict[str, Any]]]:
    """Each spec with ``target`` set where the method takes one (a spec's own target wins)."""
    out = []
    for name, params in specs:
        takes = "target" in {p.name for p in get_method(name).params}
        out.append((name, {"target": target, **params} if takes else dict(params)))
    return out


def _normalised(methods: MethodSpec | Sequence[MethodSpec]) -> list[tuple[str, dict[str, Any]]]:
    items = [methods] if _is_single(methods) else list(methods)
    return [(item, {}) if isinstance(item, str) else (item[0], dict(item[1])) for item in items]


def faithfulness(
    model: VitModel,
    images: ImageInput | Sequence[ImageInput],
    methods: MethodSpec | Sequence[MethodSpec] | None = None,
    *,
    target: Target = None,
    size: tuple[int, int] | None = None,
    steps: int = 20,
    randomisation_steps: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> Faithfulness:
    """Deletion, insertion, positive/negative perturbation and cascading randomisation for each image
    and method, beside the two baselines (see the module docstring).

    ``methods``: registry names or (name, parameters) pairs (None: ``default_faithfulness_methods()``, every
    method whose ``measured_by_default`` is set); ``target``: a class, ``"self"``,
    ``"image:PATH"`` or None (top class, or ``self`` without head), given to every method that takes
    one and defining the score; ``size=(H, W)`` resizes every image; ``steps``: K of the deletion and
    insertion curves; ``randomisation_steps``: blocks re-initialised in the cascade (None: all, 0: no
    check); ``batch_size``: perturbed images per forward pass (halved where they do not fit); ``seed``: ties,
    the random baseline and the re-initialisation. An image that cannot be read, or does not fit in memory,
    is recorded in ``failures`` and skipped.
    """
    from .io.images import ImageLoadError

    specs = _normalised(default_faithfulness_methods() if methods is None else methods)
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be at least 1")
    depth = model.num_layers if randomisation_steps is None else randomisation_steps
    if not 0 <= depth <= model.num_layers:
        raise ValueError(f"randomisation_steps takes 0..{model.num_layers} (the model's blocks), got {depth}")
    check(model, _with_target(specs, target))
    labels = spec_labels(specs)
    singles = [images] if isinstance(images, (str, Path)) or not isinstance(images, Sequence) else list(images)
    report = Faithfulness(model.name, "", pt.removal_counts(steps, steps) / steps,
                          options={"steps": steps, "randomisation_steps": depth, "seed": seed, "size": size,
                                   "target": target, "methods": labels})
    bar = tqdm(total=len(singles) * (1 + depth), desc="faithfulness", unit="step", disable=not progress)
    sizer = BatchSize(batch_size, "faithfulness")
    for number, image in enumerate(singles):
        name = str(image) if isinstance(image, (str, Path)) else f"image{number}"
        try:
            pixels, _, _ = model.prepare(image, size)
        except ImageLoadError as err:
            report.failures.append((name, str(err)))
            bar.update(1 + depth)
            continue
        before = bar.n
        try:
            with one_item():
                score, report.score, method_target = target_score(model, pixels, target)
                chosen = _with_target(specs, method_target)
                maps, seconds = {}, {}
                for label, spec in zip(labels, chosen, strict=True):
                    start = time.perf_counter()
                    result = attribute(model, pixels, method=spec[0], **spec[1])
                    seconds[label] = time.perf_counter() - start
                    maps[label], grid_hw = result.maps[0], result.layout.grid_hw
                maps[BASELINES[0]] = pt.random_map(grid_hw, seed, number)
                maps[BASELINES[1]] = pt.centre_map(grid_hw)
                ties = pt.tie_keys(grid_hw[0] * grid_hw[1], seed, number)
                curves = _curves(pixels[0], maps, score, grid_hw, steps, ties, sizer)
                bar.update()
                rho = _randomisation(model, pixels, chosen, labels, maps, depth, seed, number, bar.update)
        except OutOfMemory as err:
            report.failures.append((name, f"{name}: {err}"))
            bar.update(before + 1 + depth - bar.n)
            continue
        report.records.extend(Record(name, label, curves[label], rho[label], seconds.get(label, math.nan))
                              for label in maps)
    bar.close()
    return report


def _curves(image: torch.Tensor, maps: dict[str, torch.Tensor], score: ScoreFn, grid_hw: tuple[int, int],
            steps: int, ties: np.ndarray, sizer: BatchSize) -> dict[str, dict[str, np.ndarray]]:
    """Every curve of every map of one image (3, H, W), the perturbed images scored ``sizer.size`` at a
    time: label -> curve name -> scores."""
    n = grid_hw[0] * grid_hw[1]
    zeros, blur = torch.zeros_like(image), pt.blurred(image)
    deletion, fractions = pt.removal_counts(n, steps), pt.fraction_counts(n)
    plan = []  # (label, curve, substrate, mask rows (M, N) marking the patches taken from the substrate)
    for label, grid_map in maps.items():
        most, least = pt.patch_order(grid_map, ties), pt.patch_order(grid_map, ties, most_first=False)
        plan += [(label, "deletion", zeros, pt.chosen_masks(most, deletion)),
                 (label, "insertion", blur, ~pt.chosen_masks(most, deletion)),
                 (label, "positive", zeros, pt.chosen_masks(most, fractions)),
                 (label, "negative", zeros, pt.chosen_masks(least, fractions))]
    rows = [(k, m) for k, (_, _, _, masks) in enumerate(plan) for m in range(len(masks))]

    def score_rows(span: slice) -> torch.Tensor:
        batch = torch.cat([pt.compose(image, plan[k][2], plan[k][3][m:m + 1], grid_hw) for k, m in rows[span]])
        return score(batch)

    scores = torch.empty(len(rows))
    for span, values in sizer.run(len(rows), score_rows):
        scores[span] = values
    out: dict[str, dict[str, np.ndarray]] = {label: {} for label in maps}
    offset = 0
    for label, curve, _, masks in plan:
        out[label][curve] = scores[offset:offset + len(masks)].double().numpy()
        offset += len(masks)
    return out


def _randomisation(model: VitModel, pixels: torch.Tensor, chosen: list[tuple[str, dict[str, Any]]],
                   labels: list[str], maps: dict[str, torch.Tensor], depth: int, seed: int, number: int,
                   on_step: Callable[[], Any]) -> dict[str, np.ndarray]:
    """ρ (depth,) per map label: Spearman of each cascade step's map with the original."""
    rho: dict[str, list[float]] = {label: [] for label in maps}
    if depth == 0:
        return {label: np.zeros(0) for label in maps}
    grid_hw = tuple(maps[BASELINES[1]].shape)
    with cascading_randomisation(model, seed) as randomise:
        for k in range(1, depth + 1):
            randomise(k)
            results = attribute(model, pixels, method=chosen)
            results = results if isinstance(results, list) else [results]
            for label, result in zip(labels, results, strict=True):
                rho[label].append(_spearman(result.maps[0], maps[label]))
            rho[BASELINES[0]].append(_spearman(pt.random_map(grid_hw, seed * 1000 + k, number), maps[BASELINES[0]]))
            rho[BASELINES[1]].append(_spearman(pt.centre_map(grid_hw), maps[BASELINES[1]]))
            on_step()
    return {label: np.asarray(values) for label, values in rho.items()}
