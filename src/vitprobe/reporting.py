"""What a dataset run's report shows besides its statistics, computed with the model: spread-level and
example maps through ``attribute``, patch filters and position-embedding similarity. ``render.report``
then only draws."""

from __future__ import annotations

from pathlib import Path

from .analysis.embeddings import filter_components, patch_filters, position_similarity
from .io.images import ImageLoadError
from .methods import attribute
from .models.base import VitModel
from .render.report import ExampleImage, LevelImage, ReportInputs, ReportOptions

MAX_FILTERS = 128
FILTER_COMPONENTS = 28


def _pick(items: list, k: int) -> list:
    """k items spread evenly over the list (first and last included)."""
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if k > 1 else [items[len(items) // 2]]


def report_inputs(model: VitModel, aggregates: dict, opts: ReportOptions) -> ReportInputs:
    """Maps of a few images per spread level (``cls`` of the spread layer, heads fused by mean), of
    ``opts.examples`` example images (``layers`` and ``rollout``), and the model's embeddings."""
    inputs = ReportInputs(levels={}, examples=[], missing=[])
    spread = aggregates.get("spread_levels")
    if spread:
        for level, members in spread["levels"].items():
            shown = inputs.levels.setdefault(level, [])
            for member in _pick(members, opts.per_level):
                try:
                    result = attribute(model, member["image"], method="cls", size=opts.size, layer=spread["layer"])
                except ImageLoadError as err:
                    inputs.missing.append(str(err))
                    continue
                shown.append(LevelImage(member["image"], member["entropy_cls_map"], result.images[0], result.maps[0]))
        medians = [members[len(members) // 2]["image"] for members in spread["levels"].values()]
        for path in medians[: opts.examples]:
            try:
                layers, rolled = attribute(model, path, method=["layers", "rollout"], size=opts.size)
            except ImageLoadError as err:
                inputs.missing.append(str(err))
                continue
            panels = [(label, m[0]) for label, m in layers.panels + rolled.panels]
            inputs.examples.append(ExampleImage(str(Path(path)), layers.images[0], panels))
    if model.patch_weight is not None:
        weight = model.patch_weight.float().cpu()
        inputs.filters = patch_filters(weight)[:MAX_FILTERS]
        inputs.filter_count = int(weight.shape[0])
        components, ratio = filter_components(weight, k=FILTER_COMPONENTS)
        inputs.components, inputs.explained = components, float(ratio.sum())
    if model.position_grid is not None:
        inputs.similarity = position_similarity(model.position_grid.float().cpu())
        inputs.used = [model.layout(tuple(s["input_hw"])).grid_hw for s in aggregates["input_sizes"]]
    return inputs
