"""What a gradient method explains: a class of the model's head, or the model's pooled embedding.

``target`` (one parameter for every gradient method):

- a class index or label ("tabby" matches "tabby, tabby cat"): the logit of that class;
- ``"self"``: the image's own embedding e, relative to the embedding e₀ of a blank image (the
  normalisation's mean colour, zeros at the model's input): the score is the projection ⟨e, r/‖r‖⟩ on
  r = e − e₀, what makes this embedding differ from a blank image's. Projecting on e's own direction
  would differentiate ‖e‖, nearly constant after a final LayerNorm (√D for unit gains), whose gradient
  is rounding noise;
- ``"image:PATH"``: another image's embedding r, the same projection ⟨e, r/‖r‖⟩ (where in this image is
  what matches that one);
- ``"text:PROMPT"``, or any other string for a vision-language model without a class head (CLIP,
  MetaCLIP 2, SigLIP): the image–text logit the model itself computes for that prompt (its logit scale
  times the cosine of the image and text embeddings, plus SigLIP's bias);
- None: the top class of a model with a head, else ``"self"``.

``gradient_pass`` runs the model once more with eager attention (a fused kernel never materialises
the probabilities) and keeps every layer's attention and output tokens in the autograd graph;
``attention_gradients`` takes ``torch.autograd.grad`` of the target's score with respect to every
layer's own probabilities, so gradients and attention are paired by layer index, never by the order
in which backward hooks fire. No parameter's ``.grad`` is touched.

Every pass through the module here (forwards, readouts, the similarity) holds the model's ``lock``, so
gradient passes and captures from several threads on one model run one at a time.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .models.base import VitModel

Target = int | str | None
Embedding = Callable[[torch.Tensor], torch.Tensor]
"""Any layer's tokens (B, T, D) -> an image embedding (B, D)."""
SELF = "self"
IMAGE_PREFIX = "image:"
TEXT_PREFIX = "text:"


@dataclass
class GradientPass:
    """One eager forward in the autograd graph: per layer ``attentions`` (B, heads, T, T) and output
    ``tokens`` (B, T, D); ``logits`` (B, classes) or None (detached); ``score(tokens)`` -> (B,) the
    target's score computed from any layer's tokens through the model's readout; ``targets`` the class
    each image's score is the logit of (None for embedding targets) and ``words`` what is explained.
    ``rescore(embed)``, for a prompt or embedding target: the target's score (B,) of an embedding (B, D)
    given by ``embed`` (tokens (B, T, D) -> (B, D)) in place of the readout, the reference of ``self`` or
    ``image:PATH`` taken with ``embed`` too; None for a class target."""

    attentions: list[torch.Tensor]
    tokens: list[torch.Tensor]
    logits: torch.Tensor | None
    score: Callable[[torch.Tensor], torch.Tensor]
    targets: list[int] | None
    words: str
    rescore: Callable[[Embedding], Callable[[torch.Tensor], torch.Tensor]] | None = None


@dataclass(frozen=True)
class Gradients:
    """Per-layer attention ``attentions[l]`` and ``grads[l]`` = ∂y/∂A, each (B, heads, T, T) float32,
    the ``logits`` (B, classes) of that pass (or None), the class ``targets`` (None for embeddings) and
    the ``words`` saying what y is."""

    attentions: list[torch.Tensor]
    grads: list[torch.Tensor]
    logits: torch.Tensor | None
    targets: list[int] | None
    words: str


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


def _passes(model: VitModel) -> None:
    if model.attention_forward is None or model.readout is None:
        raise ValueError(f"{model.name}: its adapter cannot materialise attention for gradients")


def _last_tokens(model: VitModel, pixels: torch.Tensor, then: Callable[[torch.Tensor], object],
                 gradients: bool) -> object:
    """``then`` of the last block's output tokens (B, T, D) of model-input pixels (B, 3, H, W): the model's
    own forward (its fused attention kernel), the tokens caught by a hook; in the autograd graph when
    ``gradients`` (and grad mode is on), else without gradients."""
    caught: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _inputs, output) -> None:
        caught.append(output[0] if isinstance(output, tuple) else output)

    with model.lock:
        handle = model.blocks[-1].register_forward_hook(keep)
        try:
            with torch.set_grad_enabled(gradients and torch.is_grad_enabled()):
                model.forward(pixels.to(model.device, model.dtype))
                return then(caught[-1])
        finally:
            handle.remove()


def readout_forward(model: VitModel, pixels: torch.Tensor, *,
                    gradients: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pooled embedding (B, D), logits (B, classes) or None) of model-input pixels (B, 3, H, W), float32:
    the last block's output tokens of the model's own forward taken through the readout; in the autograd
    graph when ``gradients``, for the methods that differentiate the input or the activations."""
    if model.readout is None:
        raise ValueError(f"{model.name}: its adapter has no readout to score a target from")
    embedding, logits = _last_tokens(model, pixels, model.readout, gradients)
    return embedding.float(), None if logits is None else logits.float()


def embed(model: VitModel, pixels: torch.Tensor, embedding: Embedding | None = None) -> torch.Tensor:
    """The pooled embedding (B, D) of model-input pixels, as the readout gives it (or ``embedding`` of the last
    block's tokens), without gradients."""
    if embedding is None:
        return readout_forward(model, pixels)[0]
    return _last_tokens(model, pixels, embedding, False).float()


def is_embedding_target(target: Target) -> bool:
    """Whether ``target`` names an embedding (``self`` or ``image:PATH``) rather than a class."""
    return isinstance(target, str) and (target == SELF or target.startswith(IMAGE_PREFIX))


def text_prompt(model: VitModel, target: Target) -> str | None:
    """The prompt a target names for ``model``: ``text:PROMPT``, or a plain string (not digits, ``self`` or
    ``image:PATH``) when the model has a text tower and no class head; None for any other target."""
    if not isinstance(target, str) or is_embedding_target(target):
        return None
    if target.startswith(TEXT_PREFIX):
        prompt = target.removeprefix(TEXT_PREFIX).strip()
    elif model.similarity is not None and not model.labels and not target.strip().isdigit():
        prompt = target.strip()
    else:
        return None
    if model.similarity is None:
        raise ValueError(f"{model.name} has no text tower, so a text prompt cannot be a target")
    if not prompt:
        raise ValueError("a text target needs a prompt: text:PROMPT")
    return prompt


def reference_embedding(model: VitModel, pixels: torch.Tensor, own: torch.Tensor, target: Target,
                        embedding: Embedding | None = None) -> torch.Tensor:
    """The unit reference direction (B, D) of an embedding target for pixels (B, 3, H, W): each image's
    ``own`` embedding (B, D) minus that of a blank image of the same size (``self``), or the embedding
    of the image named by ``image:PATH`` (preprocessed as the model's own), repeated for every image;
    embeddings by the readout, or by ``embedding`` of the last block's tokens."""
    if target is None or target == SELF:
        reference = own.detach().float() - embed(model, torch.zeros_like(pixels[:1]), embedding)
    else:
        other, _, _ = model.prepare(target.removeprefix(IMAGE_PREFIX))
        reference = embed(model, other, embedding).expand(len(own), -1)
    return F.normalize(reference, dim=-1)


def gradient_pass(model: VitModel, pixels: torch.Tensor, target: Target = None) -> GradientPass:
    """The eager pass of pixels (B, 3, H, W) with the score of ``target`` (see the module docstring)."""
    _passes(model)
    pixels = pixels.to(model.device, model.dtype).requires_grad_(True)  # a graph even for frozen weights
    with model.lock, torch.enable_grad():
        logits, attns, tokens = model.attention_forward(pixels)
    detached = None if logits is None else logits.detach().float()
    prompt = text_prompt(model, target)

    def readout_embedding(layer_tokens: torch.Tensor) -> torch.Tensor:
        with model.lock:
            return model.readout(layer_tokens)[0]

    if prompt is not None:
        def prompt_of(embedding: torch.Tensor) -> torch.Tensor:
            with model.lock:
                return model.similarity(embedding, [prompt])[:, 0]

        return GradientPass(list(attns), list(tokens), detached, lambda t: prompt_of(readout_embedding(t)), None,
                            f'the prompt "{prompt}"', lambda _embed: prompt_of)
    if is_embedding_target(target) or (target is None and logits is None):
        def projection(embedding_of: Embedding) -> Callable[[torch.Tensor], torch.Tensor]:
            with model.lock:
                own = embedding_of(tokens[-1])
            reference = reference_embedding(model, pixels.detach(), own, target, embedding_of)
            return lambda embedding: (embedding.float() * reference).sum(dim=-1)

        on_readout = projection(readout_embedding)
        words = ("its own embedding" if target in (None, SELF)
                 else f"the embedding of {target.removeprefix(IMAGE_PREFIX)}")
        return GradientPass(list(attns), list(tokens), detached, lambda t: on_readout(readout_embedding(t)), None,
                            words, projection)
    if logits is None:
        raise ValueError(f"{model.name} has no classification head: give target='self' or 'image:PATH' "
                         "(an embedding) instead of a class")
    if target is None:
        chosen = logits.argmax(dim=-1)
    else:
        index = resolve_target(target, model.labels, logits.shape[-1])
        chosen = torch.full_like(logits[:, 0], index, dtype=torch.long)

    def class_score(layer_tokens: torch.Tensor) -> torch.Tensor:
        with model.lock:
            layer_logits = model.readout(layer_tokens)[1]
        return layer_logits.float().gather(1, chosen[:, None].to(layer_logits.device))[:, 0]

    return GradientPass(list(attns), list(tokens), detached, class_score, chosen.tolist(), "the class")


def attention_gradients(model: VitModel, pixels: torch.Tensor, target: Target = None,
                        run: GradientPass | None = None) -> Gradients:
    """Attention and ∂y/∂A of every layer for pixels (B, 3, H, W); y is the sum over the batch of each
    image's score of ``target`` from the last layer's tokens (images do not interact, so each image's
    gradients are its own). ``run``: a ``gradient_pass`` to reuse (its graph is kept)."""
    run = run or gradient_pass(model, pixels, target)
    with torch.enable_grad():
        grads = torch.autograd.grad(run.score(run.tokens[-1]).sum(), run.attentions, retain_graph=True)
    return Gradients([a.detach().float() for a in run.attentions], [g.float() for g in grads], run.logits,
                     run.targets, run.words)
