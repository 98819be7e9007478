"""What vitprobe must know of one Hugging Face model family, and the registry of families."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Readout = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
"""Any layer's tokens (B, T, D) -> (pooled embedding (B, D), logits (B, classes) or None)."""
Similarity = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]
"""Image embeddings (B, D) from the readout and text prompts -> the model's image–text logits (B, P)."""
Feature = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
"""Any layer's tokens (B, T, D) -> (LeGrad's image feature (B, D), the pooling head's probabilities
(B, heads, Q, T) of that feature or None); see ``VitModel.feature``."""


def _whole(module: nn.Module) -> nn.Module:
    return module


def _plain_run(module: nn.Module, pixels: torch.Tensor, **kwargs: Any) -> Any:
    return module(pixel_values=pixels, **kwargs)


def _nothing(_module: nn.Module) -> None:
    return None


@contextmanager
def eager_attention(module: nn.Module) -> Iterator[None]:
    """The model computes its attention probabilities in the open (``output_attentions`` works) inside,
    and returns to its own implementation (SDPA) after."""
    previous = module.config._attn_implementation
    module.set_attn_implementation("eager")
    try:
        yield
    finally:
        module.set_attn_implementation(previous)


@dataclass(frozen=True)
class HfFamily:
    """One family of transformers models: how to find its parts and run its image tower.

    - ``title``: the family as the docs name it; ``model_types``: the config ``model_type`` values;
      ``classes``: the transformers classes a checkpoint's ``architectures`` may name;
      ``checkpoint``: a real checkpoint of the family (for listings and the README);
    - ``prefix_names(vision_config)``: the tokens before the patch grid, e.g. ("cls",) or (); ``tokens``
      says them in words for listings ("CLS", "CLS + registers", "none");
    - ``vision(module)``: the image tower (where the attention layers are searched);
    - ``run(module, pixels (B, 3, H, W), **kwargs)``: the forward the model's own users call, returning
      the model output (with ``logits`` where the model has a classification head);
    - ``patch_weight(vision)`` (D, 3, P, P) and ``position_grid(vision)`` (gh, gw, D) or None;
    - ``readout(module)``: any layer's tokens through the final norm, pooling and head;
    - ``in_kernel``: what the model applies inside attention (rotary embedding, position bias), so q,
      k and the mask are read from its SDPA call; ``pool(module)``: the attention-pooling head
      (``nn.MultiheadAttention``, a learned probe as its query) or None; ``similarity(module, processor
      directory)``: the image–text logits of a dual model, or None; ``prepare(module)`` adjusts a loaded
      model for capture (e.g. MAE runs unmasked); ``eager(module)``: a context in which its attention is
      computed in the open, for gradient methods; ``feature(module)``: LeGrad's per-layer image feature as its
      authors compute it for the family (``VitModel.feature``), or None; ``video``: what a video family
      adds (``VideoFamily``), None for image families.
    """

    title: str
    model_types: tuple[str, ...]
    classes: tuple[str, ...]
    checkpoint: str
    prefix_names: Callable[[Any], tuple[str, ...]]
    patch_weight: Callable[[nn.Module], torch.Tensor]
    readout: Callable[[nn.Module], Readout]
    vision: Callable[[nn.Module], nn.Module] = _whole
    run: Callable[..., Any] = _plain_run
    position_grid: Callable[[nn.Module], torch.Tensor | None] = _nothing
    in_kernel: str | None = None
    pool: Callable[[nn.Module], nn.MultiheadAttention | None] = _nothing
    similarity: Callable[[nn.Module, str], Similarity | None] | None = None
    prepare: Callable[[nn.Module], None] = _nothing
    tokens: str = "CLS"
    eager: Callable[[nn.Module], AbstractContextManager] = eager_attention
    feature: Callable[[nn.Module], Feature | None] = _nothing
    gives: str = ""
    video: VideoFamily | None = None


    @property
    def has_cls(self) -> bool:
        return self.tokens.startswith("CLS")

    @property
    def has_pool(self) -> bool:
        return self.pool is not _nothing


FAMILIES: dict[str, HfFamily] = {}


def register_hf_family(family: HfFamily) -> HfFamily:
    """Make ``family`` loadable under each of its model types."""
    for model_type in family.model_types:
        FAMILIES[model_type] = family
    return family


def square_grid(table: torch.Tensor, n_prefix: int) -> torch.Tensor | None:
    """The patch rows of a learned position table (1, n_prefix + gh·gw, D) or (n, D) as (g, g, D)."""
    patches = table.detach().reshape(-1, table.shape[-1])[n_prefix:]
    side = int(round(patches.shape[0] ** 0.5))
    return patches.reshape(side, side, -1) if side * side == patches.shape[0] else None


@dataclass(frozen=True)
class VideoFamily:
    """What a video transformer adds to its family: its clip and where its attention lies.

    - ``frames(config)``: input frames per clip F; ``tubelet(config)``: frames per tubelet step;
      ``grid(config)``: the patch grid (H, W); ``patch(config)``: the patch side in pixels — all read from
      the model's config, never assumed;
    - ``time_last``: patch tokens in (row, col, step) order (TimeSformer) instead of (step, row, col);
    - ``sites(vision, config)``: the attention sites where q and k are not found as separate projections
      (None: the usual search); ``temporal_sites(vision, config)``: the temporal attention of divided
      space-time attention, or None;
    - ``rescale_offset(processor dict)``: what the processor adds after rescaling (ViViT: −1);
    - ``why_not(config)``: why a config of the family cannot be captured (one line), or None.
    """

    frames: Callable[[Any], int]
    tubelet: Callable[[Any], int]
    grid: Callable[[Any], tuple[int, int]]
    patch: Callable[[Any], int]
    time_last: bool = False
    sites: Callable[[nn.Module, Any], list] | None = None
    temporal_sites: Callable[[nn.Module, Any], list] | None = None
    rescale_offset: Callable[[dict], float] = lambda _proc: 0.0
    why_not: Callable[[Any], str | None] = lambda _config: None
