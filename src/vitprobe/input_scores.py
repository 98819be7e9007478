"""A target's score as a function of the model's input pixels, for the methods that differentiate or
perturb the input and the token activations themselves (the Grad-CAM family, Captum's attributions).

The same ``target`` vocabulary as ``targets.gradient_pass`` (a class, ``self``, ``image:PATH``, a text
prompt), but the scores come from the model's own forward (its fused attention kernel; gradients flow
through it), and they are a matrix: ``scores(pixels)`` is (N, K) for any batch of N images and
``index`` (B,) picks image b's column. So a library that repeats or perturbs the batch (Captum's
integration steps, occlusion windows, Score-CAM's masked copies) scores every copy of image b with
b's own target: its class logit (K = classes), the projection of its embedding on its reference
direction (K = B, one direction per image), or its logit for the prompt (K = 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .targets import (
    IMAGE_PREFIX,
    SELF,
    Target,
    is_embedding_target,
    readout_forward,
    reference_embedding,
    resolve_target,
    text_prompt,
)

if TYPE_CHECKING:
    from .models.base import VitModel


@dataclass(frozen=True)
class InputScores:
    """``scores(pixels (N, 3, H, W)) -> (N, K)`` float32 (in the autograd graph when gradients are on);
    ``index`` (B,) the column of each image's target; ``targets`` the class of each image (None for
    embedding and prompt targets); ``words`` what the score is; ``logits`` (B, classes) of the
    unperturbed images or None."""

    scores: Callable[[torch.Tensor], torch.Tensor]
    index: torch.Tensor
    targets: list[int] | None
    words: str
    logits: torch.Tensor | None

    def own(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B,) each of the B images' score of its own target."""
        values = self.scores(pixels)
        return values.gather(1, self.index[:, None].to(values.device))[:, 0]


def input_scores(model: VitModel, pixels: torch.Tensor, target: Target = None) -> InputScores:
    """The scores of ``target`` for the images ``pixels`` (B, 3, H, W) (see the module docstring)."""
    own, logits = readout_forward(model, pixels, gradients=True)
    own, logits = own.detach(), None if logits is None else logits.detach()
    batch = len(pixels)
    prompt = text_prompt(model, target)
    if prompt is not None:
        def prompt_scores(x: torch.Tensor) -> torch.Tensor:
            embedding = readout_forward(model, x, gradients=True)[0]
            with model.lock:
                return model.similarity(embedding, [prompt]).float()

        return InputScores(prompt_scores, torch.zeros(batch, dtype=torch.long), None, f'the prompt "{prompt}"',
                           logits)
    if is_embedding_target(target) or (target is None and logits is None):
        directions = reference_embedding(model, pixels, own, target)  # (B, D) unit rows

        def embedding_scores(x: torch.Tensor) -> torch.Tensor:
            return readout_forward(model, x, gradients=True)[0] @ directions.to(own.device).T

        words = ("its own embedding" if target in (None, SELF)
                 else f"the embedding of {str(target).removeprefix(IMAGE_PREFIX)}")
        return InputScores(embedding_scores, torch.arange(batch), None, words, logits)
    if logits is None:
        raise ValueError(f"{model.name} has no classification head: give target='self' or 'image:PATH' "
                         "(an embedding) instead of a class")
    if target is None:
        chosen = logits.argmax(dim=-1).cpu()
    else:
        chosen = torch.full((batch,), resolve_target(target, model.labels, logits.shape[-1]), dtype=torch.long)

    def class_scores(x: torch.Tensor) -> torch.Tensor:
        return readout_forward(model, x, gradients=True)[1]

    return InputScores(class_scores, chosen, chosen.tolist(), "the class", logits)
