"""Class-specific maps of a model with a classification head: gradient rollout and Chefer et al. 2021b.

The gradients need the attention probabilities inside the autograd graph, which a fused kernel
never materialises. So the adapter's ``attention_forward`` runs the model once more with eager
(non-fused) attention, and ``torch.autograd.grad`` of the target logits gives ∂y_c/∂A for every
layer's own probabilities: gradients and attention are paired by layer index, never by the order
in which backward hooks fire. No parameter's ``.grad`` is touched.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from matplotlib.figure import Figure
from PIL import Image

from . import render
from .analysis import gradients
from .io.preprocess import Geometry
from .layout import NO_CLS_MESSAGE, TokenLayout
from .models.base import ImageInput, VitModel

Target = int | str | None


@dataclass
class ClassMaps:
    """Class-specific maps of a batch: ``maps`` (B, H, W) on the patch grid for classes ``targets``.

    ``probs`` (B, classes) are the softmax of the model's logits; ``labels`` the head's class names.
    """

    maps: torch.Tensor
    method: str
    targets: list[int]
    probs: torch.Tensor
    layout: TokenLayout
    labels: dict[int, str] = field(default_factory=dict)
    images: list[Image.Image] = field(default_factory=list)
    geometry: list[Geometry] = field(default_factory=list)

    def label(self, index: int) -> str:
        return self.labels.get(index, f"class {index}")

    def top(self, image: int = 0, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` most probable classes of one image as (index, label, probability)."""
        values, indices = torch.topk(self.probs[image], min(k, self.probs.shape[-1]))
        return [(int(i), self.label(int(i)), float(p)) for p, i in zip(values, indices, strict=True)]


def resolve_target(target: int | str, labels: dict[int, str], n_classes: int) -> int:
    """A class index from an index, a string of digits, or a label.

    A label matches case-insensitively either a whole class name or one of its comma-separated
    synonyms ("tabby" matches "tabby, tabby cat"); several matching classes are an error.
    """
    if isinstance(target, str) and target.strip().isdigit():
        target = int(target)
    if isinstance(target, int):
        if not 0 <= target < n_classes:
            raise ValueError(f"target class {target} is outside the head's {n_classes} classes")
        return target
    wanted = target.strip().lower()
    hits = [i for i, name in labels.items()
            if name.lower() == wanted or wanted in (part.strip().lower() for part in name.split(","))]
    if len(hits) == 1:
        return hits[0]
    if hits:
        listed = "; ".join(f"{i}: {labels[i]}" for i in hits)
        raise ValueError(f"label {target!r} names several classes ({listed}); give the index")
    if not labels:
        raise ValueError(f"this model's head has no class names; give the target as an index in [0, {n_classes})")
    close = difflib.get_close_matches(wanted, [name.lower() for name in labels.values()], n=3)
    hint = f"; close: {', '.join(close)}" if close else ""
    raise ValueError(f"no class is labelled {target!r}{hint}")


def attention_gradients(
    model: VitModel, pixels: torch.Tensor, target: Target = None
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, list[int]]:
    """Per-layer attention A and ∂y/∂A, each (B, heads, T, T) float32, logits (B, classes) and the targets.

    y is the sum over the batch of each image's target logit: ``target`` (index or label) for every
    image, or each image's top prediction when None. Images do not interact, so each image's
    gradients are its own.
    """
    if model.attention_forward is None:
        raise ValueError(f"{model.name}: its adapter cannot materialise attention for gradients")
    pixels = pixels.to(model.device, model.dtype).requires_grad_(True)  # a graph even for frozen weights
    with torch.enable_grad():
        logits, attns = model.attention_forward(pixels)
        if logits is None:
            raise ValueError(f"{model.name} has no classification head, so class-specific maps are undefined")
        if target is None:
            chosen = logits.argmax(dim=-1)
        else:
            index = resolve_target(target, model.labels, logits.shape[-1])
            chosen = torch.full_like(logits[:, 0], index, dtype=torch.long)
        score = logits.gather(1, chosen[:, None]).sum()
        grads = torch.autograd.grad(score, attns)
    return [a.detach().float() for a in attns], [g.float() for g in grads], logits.detach().float(), chosen.tolist()


def class_maps(
    model: VitModel,
    images: ImageInput | Sequence[ImageInput],
    *,
    method: str = "chefer",
    target: Target = None,
    size: tuple[int, int] | None = None,
    discard_ratio: float = 0.0,
) -> ClassMaps:
    """Class-specific maps (B, H, W) of ``images`` for ``target`` (index or label; None: each image's
    top prediction) by ``method`` "chefer" or "gradrollout" (``discard_ratio`` as in rollout)."""
    pixels, views, geometry = model.prepare(images, size)
    result = class_maps_pixels(model, pixels, method=method, target=target, discard_ratio=discard_ratio)
    result.images, result.geometry = views, geometry
    return result


def class_maps_pixels(
    model: VitModel, pixels: torch.Tensor, *, method: str = "chefer", target: Target = None,
    discard_ratio: float = 0.0,
) -> ClassMaps:
    """``class_maps`` from ready model input pixels (B, 3, H, W)."""
    if method not in gradients.METHODS:
        raise ValueError(f"unknown class-map method {method!r}; use one of {gradients.METHODS}")
    layout = model.layout(tuple(pixels.shape[-2:]))
    if not layout.has_cls:
        raise ValueError(NO_CLS_MESSAGE)
    attns, grads, logits, targets = attention_gradients(model, pixels, target)
    if len(attns) != model.num_layers or attns[0].shape[-1] != layout.n_tokens:
        raise ValueError(f"{model.name}: attention of {len(attns)} layers over {attns[0].shape[-1]} tokens, "
                         f"expected {model.num_layers} over {layout.n_tokens}")
    maps = gradients.class_map(attns, grads, layout, method, discard_ratio)
    return ClassMaps(maps.cpu(), method, targets, logits.softmax(dim=-1).cpu(), layout, dict(model.labels))


def classmap_figure(
    result: ClassMaps, image: int = 0, k: int = 5, title: str = "", cmap: str = "inferno", alpha: float = 0.5,
    upsample: str = "bilinear",
) -> Figure:
    """The map over the image the model saw, with the top-``k`` predictions beside it.

    The target class is drawn in colour, in a row of its own below the others when it is not
    among the top ``k``. Bars are scaled to the largest probability shown, which is written out.
    """
    view = result.images[image]
    panel = render.overlay(view, result.maps[image], alpha=alpha, cmap=cmap, upsample=upsample)
    target = result.targets[image]
    rows = result.top(image, k)
    if target not in [i for i, _, _ in rows]:
        rows.append((target, result.label(target), float(result.probs[image, target])))
    height_in, bars_in, labels_in, gap_in, title_in = 3.2, 1.6, 1.7, 0.15, 0.45
    img_in = height_in * view.width / view.height
    width_in = img_in + gap_in + labels_in + bars_in + 0.55
    fig = Figure(figsize=(width_in, height_in + title_in))
    ax_img = fig.add_axes((0.0, 0.0, img_in / width_in, height_in / (height_in + title_in)))
    ax_img.imshow(panel)
    ax_img.set_axis_off()
    ax_img.set_title(f"{result.method} map of {short_label(result.label(target))} ({target})", fontsize=9)
    left = (img_in + gap_in + labels_in) / width_in
    ax_bar = fig.add_axes((left, 0.1, bars_in / width_in, 0.72 * height_in / (height_in + title_in)))
    n_top = min(k, result.probs.shape[-1])
    ypos = [float(n_top - n) for n in range(n_top)] + [-0.2] * (len(rows) - n_top)  # a target row sits apart
    values = [p for _, _, p in rows]
    ax_bar.barh(ypos, values, color=["tab:orange" if i == target else "tab:gray" for i, _, _ in rows])
    ax_bar.set_yticks(ypos, [f"{short_label(label)} ({i})" for i, label, _ in rows], fontsize=8)
    top_value = max(values) or 1.0
    ax_bar.set_xlim(0, top_value * 1.45)
    for y, value in zip(ypos, values, strict=True):
        ax_bar.text(value + 0.03 * top_value, y, f"{value:.3f}", va="center", fontsize=7)
    ax_bar.set_xticks([])
    ax_bar.spines[["top", "right", "bottom"]].set_visible(False)
    ax_bar.set_title(f"top {k} predictions", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10, y=0.995)
    return fig


def short_label(label: str, width: int = 24) -> str:
    """First synonym of a label, cut to ``width`` characters."""
    first = label.split(",")[0].strip()
    return first if len(first) <= width else first[: width - 1] + "…"
