"""What a gradient method explains: a class of the model's head, by index or label.

``attention_gradients`` runs the model once more with eager attention (a fused kernel never
materialises the probabilities) and takes ``torch.autograd.grad`` of the target's score with
respect to every layer's own probabilities, so gradients and attention are paired by layer index,
never by the order in which backward hooks fire. No parameter's ``.grad`` is touched.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .models.base import VitModel

Target = int | str | None


@dataclass(frozen=True)
class Gradients:
    """Per-layer attention ``attentions[l]`` and ``grads[l]`` = ∂y/∂A, each (B, heads, T, T) float32,
    the ``logits`` (B, classes) of that pass and the class ``targets`` each image's y is the logit of."""

    attentions: list[torch.Tensor]
    grads: list[torch.Tensor]
    logits: torch.Tensor
    targets: list[int]


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


def attention_gradients(model: VitModel, pixels: torch.Tensor, target: Target = None) -> Gradients:
    """Attention and ∂y/∂A of every layer for pixels (B, 3, H, W).

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
    return Gradients([a.detach().float() for a in attns], [g.float() for g in grads], logits.detach().float(),
                     chosen.tolist())
