"""The one block interface every attention kernel implements: what a layer asks for, and what it gets.

A kernel takes one layer's q, k (B, heads, T, d) as they enter the softmax, the scale, an optional
additive bias and values, and a ``LayerRequest``; it computes each (image, query-row tile) of
softmax(q·kᵀ·scale + bias) once and makes from it exactly what the request names: the CLS row,
head-fused rows, the full maps, per-row statistics (entropy, weighted row sums, masses) and the
attention output P·V. Reducers say what they read (``RowStatReducer.ask``) and turn the per-row
statistics into their result (``reduce``), so the same reducer runs on every kernel.

``RowReducer`` is the open form: it is handed each ``AttentionBlock`` of probabilities as it streams,
for reductions no kernel knows; only the torch-op kernel serves it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from ..layout import TokenLayout


@dataclass
class LayerRequest:
    """What one layer's attention (B, heads, T, T) is reduced to; everything is optional.

    - ``cls_index``: keep this query row of every head -> ``LayerResult.cls`` (B, heads, T);
    - ``fuse``: how ("mean" / "max" / "min") -> a (B, T, T) float32 tensor the kernel fills with the
      head-fused attention (the caller owns it, e.g. a slice of an (L, B, T, T) stack);
    - ``full``: return every probability (B, heads, T, T);
    - ``entropy``: −Σ p·log p of every row (B, heads, T);
    - ``dots``: name -> weights W (T, T) float32: Σ_t p[t]·W[row, t] of every row (B, heads, T);
    - ``masses``: start columns c: Σ_{t ≥ c} p[t] of every row (B, heads, T);
    - ``block_reducers``: ``RowReducer``s fed every block (the torch-op kernel only).
    """

    cls_index: int | None = None
    fuse: dict[str, torch.Tensor] = field(default_factory=dict)
    full: bool = False
    entropy: bool = False
    dots: dict[str, torch.Tensor] = field(default_factory=dict)
    masses: set[int] = field(default_factory=set)
    block_reducers: list[RowReducer] = field(default_factory=list)

    @property
    def row_statistics(self) -> bool:
        """Whether any per-row statistic is asked for."""
        return self.entropy or bool(self.dots) or bool(self.masses)


@dataclass
class LayerResult:
    """What a kernel computed for a ``LayerRequest``, float32 on the input's device; ``kernel`` names it."""

    kernel: str
    output: torch.Tensor | None = None
    cls: torch.Tensor | None = None
    full: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    dots: dict[str, torch.Tensor] = field(default_factory=dict)
    masses: dict[int, torch.Tensor] = field(default_factory=dict)


class RowStatReducer(ABC):
    """A per-layer reduction built from per-row statistics, which every kernel computes in its one pass.

    ``ask`` adds what it reads to the layer's request (entries shared with other reducers are computed
    once); ``reduce`` makes the layer's result (B, ...) from the kernel's ``LayerResult``.
    """

    @abstractmethod
    def ask(self, request: LayerRequest, layout: TokenLayout, device: torch.device) -> None: ...

    @abstractmethod
    def reduce(self, result: LayerResult, layout: TokenLayout) -> torch.Tensor: ...


class AttentionBlock:
    """Query rows ``rows`` of images ``images`` of one layer's attention, all heads, in float32.

    ``probs`` (b, heads, r, T) are softmax rows of ``scores`` (b, heads, r, T). Computed on first use,
    so a reducer pays only for what it reads: ``shifted``, the scores minus their row maximum
    (in place, in the scores' buffer), and ``log_z`` (b, heads, r), log Σ exp(shifted), so a row's
    entropy is ``log_z − Σ probs·shifted``. The buffers are reused: a block is valid until the next one.
    """

    def __init__(self, images: slice, rows: slice, probs: torch.Tensor, scores: torch.Tensor,
                 log_z: torch.Tensor | None = None) -> None:
        self.images = images
        self.rows = rows
        self.probs = probs
        self._scores = scores
        self._is_shifted = False
        self._log_z = log_z

    @property
    def shifted(self) -> torch.Tensor:
        if not self._is_shifted:
            self._scores.sub_(self._scores.amax(dim=-1, keepdim=True))
            self._is_shifted = True
        return self._scores

    @property
    def log_z(self) -> torch.Tensor:
        if self._log_z is None:
            self._log_z = self.probs.amax(dim=-1).log_().neg_()  # the largest probability is exp(0) / z
        return self._log_z


class RowReducer(ABC):
    """A per-layer reduction fed the attention block by block, so (B, heads, T, T) is never held.

    For each layer the recorder calls ``start``, then ``update`` once per block (the blocks cover
    every query row of every image once), then ``finish`` for the layer's result (B, ...).
    ``update`` may run in several threads at once, each with its own block: it must write only
    to its block's (images, rows) entries. A capture with such a reducer runs the torch-op kernel.
    """

    @abstractmethod
    def start(self, batch: int, heads: int, layout: TokenLayout, device: torch.device) -> None: ...

    @abstractmethod
    def update(self, block: AttentionBlock) -> None: ...

    @abstractmethod
    def finish(self) -> torch.Tensor: ...
