"""Bring your own attention: a Capture built from per-layer attention arrays of any framework.

A TensorFlow/Keras, JAX or PyTorch model that returns its attention probabilities (for example
the ``attention_score_dict`` of the Keras ViT ports: ``{"transformer_block_0_att": (B, heads,
T, T), ...}``) gets every vitprobe analysis and renderer without vitprobe depending on that
framework: convert nothing, pass the arrays (anything ``numpy.asarray`` reads) and the token
layout to ``from_attentions``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .analysis.maps import FUSIONS, fuse_heads
from .capture import Capture, Reducer
from .io.images import load_image
from .kernels.base import AttentionBlock, LayerRequest, LayerResult, RowReducer, RowStatReducer
from .kernels.torch_ops import allocate_statistics, block_statistics
from .layout import TokenLayout
from .models.base import ImageInput

ROW_SUM_TOLERANCE = 1e-2  # bf16/fp16 softmax rows sum to 1 within about 1e-2


def _natural_key(name: str) -> tuple:
    """Sort key reading digit runs as numbers: "block_2" before "block_10"."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _float_tensor(array: Any) -> torch.Tensor:
    """A float32 CPU tensor from a torch tensor or anything ``numpy.asarray`` reads (TF, JAX, lists);
    ``ValueError`` for anything that is not real numbers (complex, strings, objects)."""
    if isinstance(array, torch.Tensor):
        if array.is_complex():
            raise ValueError("attention must be real numbers, got a complex tensor")
        return array.detach().to("cpu", torch.float32)
    values = np.asarray(array)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"attention must be real numbers, got an array of {values.dtype}")
    return torch.from_numpy(values.astype(np.float32))


def _as_tensor(array: Any, where: str) -> torch.Tensor:
    tensor = _float_tensor(array)
    if tensor.dim() == 3:
        tensor = tensor[None]
    if tensor.dim() != 4 or tensor.shape[-1] != tensor.shape[-2] or tensor.numel() == 0:
        raise ValueError(f"{where}: expected attention (B, heads, T, T) or (heads, T, T), got {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{where}: attention holds NaN or infinity; rows must be probabilities (softmax outputs)")
    return tensor


def _prefix_names(prefix_tokens: int | Sequence[str]) -> tuple[str, ...]:
    if isinstance(prefix_tokens, int):
        if prefix_tokens < 0:
            raise ValueError(f"prefix_tokens must be >= 0, got {prefix_tokens}")
        return () if prefix_tokens == 0 else ("cls", *(f"prefix{i}" for i in range(1, prefix_tokens)))
    return tuple(prefix_tokens)


def _grid(n_patches: int, grid_hw: tuple[int, int] | None) -> tuple[int, int]:
    if n_patches < 1:
        raise ValueError(f"the attention has {max(n_patches, 0)} patch tokens after the prefix; it needs at least one")
    if grid_hw is not None:
        if grid_hw[0] * grid_hw[1] != n_patches:
            raise ValueError(f"grid_hw {tuple(grid_hw)} does not hold the attention's {n_patches} patch tokens")
        return tuple(grid_hw)
    side = round(n_patches**0.5)
    if side * side != n_patches:
        raise ValueError(f"{n_patches} patch tokens are not a square grid; give grid_hw=(H, W)")
    return side, side


def _single_block(attn: torch.Tensor) -> AttentionBlock:
    """The whole (B, heads, T, T) as one block, log p as its scores (zeros as the smallest log), so that
    shifted = log p − log max p; log_z from the row sums, which need not be exactly 1."""
    tiny = torch.finfo(torch.float32).tiny
    log_p = attn.clamp_min(tiny).log()
    log_z = attn.sum(dim=-1).clamp_min(tiny).log() - log_p.amax(dim=-1)
    batch, _, t, _ = attn.shape
    return AttentionBlock(slice(0, batch), slice(0, t), attn, log_p, log_z)


def from_attentions(
    attentions: Sequence[Any] | Mapping[str, Any],
    *,
    prefix_tokens: int | Sequence[str] = 1,
    grid_hw: tuple[int, int] | None = None,
    patch_size: int = 16,
    images: Sequence[ImageInput] | ImageInput | None = None,
    fuse: Sequence[str] = FUSIONS,
    reducers: dict[str, Reducer | RowReducer | RowStatReducer] | None = None,
    logits: Any = None,
    model_name: str = "from_attentions",
) -> Capture:
    """A Capture from per-layer attention probabilities, in forward (layer) order.

    ``attentions``: a list with one array per layer, (B, heads, T, T) or (heads, T, T), numpy,
    torch or anything ``numpy.asarray`` reads; or a dict name -> array, ordered by the numbers in
    the names ("transformer_block_2_att" before "transformer_block_10_att"; in insertion order
    when a name has no number). Rows must be softmax
    outputs (non-negative, summing to 1 within 1e-2).

    ``prefix_tokens``: how many tokens precede the patches (the first is taken as CLS; 0 for
    models without one), or their names, e.g. ``("cls", "distillation")``. ``grid_hw``: the patch
    grid (H, W), height first; inferred when the patches form a square. ``patch_size`` in input
    pixels (for distances and overlays). ``images``: the B images the model saw, for overlays.

    Kept: CLS rows (L, B, heads, T), head-fused ``fuse`` matrices (L, B, T, T) and every layer in
    full; ``reducers`` run per layer as in ``VitModel.capture``; ``logits`` (B, classes) if given.
    """
    if isinstance(attentions, Mapping):
        named = list(attentions.items())
        if all(re.search(r"\d", str(name)) for name, _ in named):
            named.sort(key=lambda item: _natural_key(str(item[0])))
        layers = [_as_tensor(array, f"attention {name!r}") for name, array in named]
    else:
        layers = [_as_tensor(array, f"layer {i}") for i, array in enumerate(attentions)]
    if not layers:
        raise ValueError("from_attentions needs at least one layer of attention")
    shapes = {tuple(a.shape) for a in layers}
    if len(shapes) > 1:
        raise ValueError(f"layers differ in shape: {sorted(shapes)}")
    stack = torch.stack(layers)  # (L, B, heads, T, T)
    if stack.min() < 0 or not torch.allclose(stack.sum(-1), torch.ones(()), atol=ROW_SUM_TOLERANCE, rtol=0):
        sums = stack.sum(-1)
        raise ValueError(
            "attention rows must be probabilities (softmax outputs): "
            f"minimum {float(stack.min()):.3g}, row sums {float(sums.min()):.4g}..{float(sums.max()):.4g}"
        )
    names = _prefix_names(prefix_tokens)
    n_tokens = stack.shape[-1]
    layout = TokenLayout(names, _grid(n_tokens - len(names), grid_hw), patch_size)
    unknown = [how for how in fuse if how not in FUSIONS]
    if unknown:
        raise ValueError(f"unknown head fusion {unknown[0]!r}; use one of {FUSIONS}")
    batch = stack.shape[1]
    views = [] if images is None else [load_image(img) for img in _as_list(images)]
    if views and len(views) != batch:
        raise ValueError(f"{len(views)} images for attention of batch size {batch}")
    return Capture(
        layout=layout,
        layers=list(range(len(layers))),
        model_name=model_name,
        cls=stack[:, :, :, layout.cls_index] if layout.has_cls else None,
        fused={how: fuse_heads(stack, how, dim=2) for how in fuse},
        full=dict(enumerate(stack)),
        reduced={name: torch.stack([_reduce(r, a, layout) for a in stack]) for name, r in (reducers or {}).items()},
        images=views,
        logits=None if logits is None else _float_tensor(logits).reshape(batch, -1),
        n_layers=len(layers),
    )


def _reduce(reducer: Reducer | RowReducer | RowStatReducer, attn: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    if isinstance(reducer, RowStatReducer):
        request, result = LayerRequest(), LayerResult("torch")
        reducer.ask(request, layout, attn.device)
        allocate_statistics(request, result, attn.shape[:3], attn.device)
        block_statistics(_single_block(attn), request, result)
        return reducer.reduce(result, layout)
    if isinstance(reducer, RowReducer):
        reducer.start(attn.shape[0], attn.shape[1], layout, attn.device)
        reducer.update(_single_block(attn))
        return reducer.finish()
    return reducer(attn, layout)


def _as_list(images: Sequence[ImageInput] | ImageInput) -> list[ImageInput]:
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]

