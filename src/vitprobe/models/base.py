"""The loaded-model wrapper every adapter returns, and the one-pass capture built on it."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..capture import (
    AttentionRecorder,
    AttentionSite,
    Capture,
    CaptureError,
    PoolingRecorder,
    PoolSite,
    Reducer,
    stack_layers,
)
from ..io.images import load_image
from ..io.preprocess import PreprocessSpec, preprocess
from ..layout import TokenLayout

ImageInput = str | Path | Image.Image | np.ndarray


class UnsupportedModelError(ValueError):
    """The model's attention cannot give the maps vitprobe draws (no global self-attention)."""


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Rebuild:
    """How an adapter wraps a module again: ``wrap(module, **options)`` -> a VitModel whose functions, sites
    and blocks all belong to that module. ``pack(module)`` gives what pickling stores in its place and
    ``unpack`` turns that back into a module (default: the module itself)."""

    wrap: Callable[..., VitModel]
    options: dict[str, Any] = field(default_factory=dict)
    pack: Callable[[nn.Module], Any] = _same
    unpack: Callable[[Any], nn.Module] = _same

    def __call__(self, module: nn.Module) -> VitModel:
        return self.wrap(module, **self.options)


_OWN_FIELDS = ("name", "preprocess", "labels")
"""What a copy keeps from the model it copies rather than reading it from its module again."""


def _keeping(model: VitModel, own: dict[str, Any]) -> VitModel:
    for key, value in own.items():
        setattr(model, key, value)
    return model


def _unpickle(rebuild: Rebuild, packed: Any, own: dict[str, Any]) -> VitModel:
    return _keeping(rebuild(rebuild.unpack(packed)), own)


@dataclass(repr=False)
class VitModel:
    """A ViT ready for capture: the torch module plus everything read from it.

    ``forward(pixels (B, 3, H, W))`` runs the model and returns logits (B, classes) or None.
    ``sites`` lists each layer's attention in order and ``blocks`` each whole transformer layer
    (whose output is the token sequence (B, T, D)); ``prefix_names`` the tokens before the
    patches; ``labels`` the class names of a classification head. ``patch_weight`` is the patch
    projection (D, 3, P, P); ``position_grid`` the learned position table of the patch tokens
    at its native grid (gh, gw, D); either is None where the model has none.
    ``attention_forward(pixels)`` runs the model with its attention probabilities materialised and
    returns (logits or None, per-layer probabilities (B, heads, T, T), per-layer output tokens
    (B, T, D)), all inside the autograd graph, for gradient methods; ``readout(tokens)`` takes any
    layer's tokens through the final norm, pooling and head: (embedding (B, D), logits or None).
    Both are None where the adapter cannot. ``pool`` is the attention-pooling head of a model
    without CLS (SigLIP: a learned probe attends to every token); ``similarity(embeddings (B, D),
    prompts)`` gives a dual model's own image–text logits (B, P); each is None where the model has none.
    ``feature(tokens)``: the image feature LeGrad's authors score any layer's tokens (B, T, D) by, in the
    space ``similarity`` compares (the model's own pooling can differ): (feature (B, D), probs) with probs the
    attention-pooling head's probabilities (B, heads, Q, T) of that feature, in the autograd graph, where
    LeGrad differentiates those instead of the layer's own attention, else None; None where the authors
    have no path for the family (then LeGrad scores the readout).

    Copies: ``copy.deepcopy(model)`` and pickling give an independent model (its own module, and every
    function above bound to it), rebuilt by the adapter through ``rebuild``; ``rewrap(module)`` wraps
    another module the same way. ``temporal_sites``: a model with divided space-time attention (TimeSformer)
    lists there each layer's temporal attention beside its spatial one in ``sites``; a capture then records
    both (``Capture.temporal``). Threads: ``lock`` (re-entrant) is held around every pass that hooks or
    switches the module (captures, the readout, gradient passes), so calls from several threads on one
    model run one at a time, each giving the maps it gives alone; copies have their own lock.
    """

    name: str
    family: str
    module: nn.Module
    sites: list[AttentionSite]
    prefix_names: tuple[str, ...]
    patch_size: int
    preprocess: PreprocessSpec
    forward: Callable[[torch.Tensor], torch.Tensor | None]
    blocks: list[nn.Module] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)
    patch_weight: torch.Tensor | None = None
    position_grid: torch.Tensor | None = None
    attention_forward: Callable[[torch.Tensor], tuple[torch.Tensor | None, list[torch.Tensor], list[torch.Tensor]]] \
        | None = None
    readout: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]] | None = None
    pool: PoolSite | None = None
    similarity: Callable[[torch.Tensor, Sequence[str]], torch.Tensor] | None = None
    feature: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]] | None = None
    rebuild: Rebuild | None = None
    temporal_sites: list[AttentionSite] | None = None
    lock: AbstractContextManager = field(default_factory=threading.RLock, compare=False)

    def rewrap(self, module: nn.Module) -> VitModel:
        """This model's adapter applied to ``module`` (a copy, a fine-tuned twin, the module moved to
        another device or dtype): sites, blocks and functions bound to ``module``, none to this model's."""
        return self._rebuild()(module)

    def _rebuild(self) -> Rebuild:
        if self.rebuild is None:
            raise TypeError(f"{self.name}: this VitModel was built by hand, not by an adapter, so it cannot be "
                            "wrapped again, copied or pickled")
        return self.rebuild

    def _own(self) -> dict[str, Any]:
        return {key: copy.copy(getattr(self, key)) for key in _OWN_FIELDS}

    def __deepcopy__(self, memo: dict) -> VitModel:
        with self.lock:  # no capture's hooks are on the module while it is copied
            module = copy.deepcopy(self.module, memo)
        return _keeping(self.rewrap(module), self._own())

    def __reduce__(self) -> tuple:
        """Pickled as (adapter, packed module, own fields). A pack that holds the module itself is written
        after this returns, outside the lock: pickle such a model while no other thread runs it."""
        rebuild = self._rebuild()
        with self.lock:
            packed = rebuild.pack(self.module)
        return _unpickle, (rebuild, packed, self._own())

    @property
    def num_layers(self) -> int:
        return len(self.sites)

    @property
    def num_heads(self) -> int:
        return self.sites[0].num_heads

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def __repr__(self) -> str:
        head = f", classes={len(self.labels)}" if self.labels else ""
        return (f"VitModel({self.name!r}, family={self.family!r}, layers={self.num_layers}, heads={self.num_heads}, "
                f"patch={self.patch_size}, prefix={self.prefix_names}, input={self.preprocess.describe()}, "
                f"device={self.device}, dtype={str(self.dtype).removeprefix('torch.')}{head})")

    def layout(self, input_hw: tuple[int, int]) -> TokenLayout:
        """Token layout for an input of (H, W) pixels (multiples of the patch size)."""
        grid = (input_hw[0] // self.patch_size, input_hw[1] // self.patch_size)
        return TokenLayout(self.prefix_names, grid, self.patch_size)

    def resolve_layers(self, layers: Sequence[int] | None) -> list[int]:
        """Layer indices in [0, L); negative ones count from the end; None means all."""
        if layers is None:
            return list(range(self.num_layers))
        out = []
        for layer in layers:
            idx = layer + self.num_layers if layer < 0 else layer
            if not 0 <= idx < self.num_layers:
                raise ValueError(f"layer {layer} does not exist: {self.name} has {self.num_layers} layers")
            if idx not in out:
                out.append(idx)
        return sorted(out)

    def prepare(
        self, images: ImageInput | Sequence[ImageInput], size: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, list[Image.Image], list]:
        """Load and preprocess images into (B, 3, H, W) plus the views the model saw and geometries.

        Without ``size`` the model's own preprocessing applies; with ``size=(H, W)`` the whole
        image is resized to exactly that (snapped to the patch size), no crop.
        """
        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            images = [images]
        spec = self.preprocess.with_size(size) if size else self.preprocess
        prepared = [preprocess(load_image(img), spec, self.patch_size) for img in images]
        sizes = {g.input_hw for _, _, g in prepared}
        if len(sizes) > 1:
            raise ValueError(
                f"images preprocess to different sizes {sorted(sizes)}; pass size=(H, W) or capture them one by one"
            )
        pixels = torch.stack([p for p, _, _ in prepared])
        return pixels, [v for _, v, _ in prepared], [g for _, _, g in prepared]

    def capture(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        size: tuple[int, int] | None = None,
        layers: Sequence[int] | None = None,
        fuse: Sequence[str] = ("mean",),
        full_layers: Sequence[int] = (-1,),
        reducers: dict[str, Reducer] | None = None,
        token_norms: bool = False,
        pool: bool = False,
        batch_size: int = 8,
        progress: bool = False,
    ) -> Capture:
        """Run the model once per batch and record attention of ``layers`` (default all).

        Always kept: the CLS rows (L, B, heads, T). ``fuse`` keeps head-fused (L, B, T, T)
        matrices (for rollout); ``full_layers`` keeps (B, heads, T, T) of those layers (for
        query-patch maps); ``reducers`` add per-layer reductions (name -> (L, B, ...));
        ``token_norms`` keeps the L2 norm of every output token of every layer (L, B, T); ``pool`` the
        attention-pooling head's probe attention over every token (B, heads, T).
        """
        pixels, views, geometry = self.prepare(images, size)
        return self.capture_pixels(
            pixels, layers=layers, fuse=fuse, full_layers=full_layers, reducers=reducers,
            token_norms=token_norms, pool=pool, batch_size=batch_size, progress=progress, views=views,
            geometry=geometry,
        )

    def capture_pixels(
        self,
        pixels: torch.Tensor,
        *,
        layers: Sequence[int] | None = None,
        fuse: Sequence[str] = ("mean",),
        full_layers: Sequence[int] = (-1,),
        reducers: dict[str, Reducer] | None = None,
        token_norms: bool = False,
        pool: bool = False,
        batch_size: int = 8,
        progress: bool = False,
        views: list[Image.Image] | None = None,
        geometry: list | None = None,
    ) -> Capture:
        """Capture from ready model input pixels (B, 3, H, W); see ``capture``."""
        layer_ids = self.resolve_layers(layers)
        full_ids = [i for i in self.resolve_layers(full_layers) if i in layer_ids] if full_layers else []
        layout = self.layout(tuple(pixels.shape[-2:]))
        if pool and self.pool is None:
            raise CaptureError(f"{self.name} has no attention-pooling head, so it has no pooling map")

        def layout_for(n_tokens: int) -> TokenLayout:
            if n_tokens != layout.n_tokens:
                raise CaptureError(
                    f"{self.name}: {n_tokens} tokens, expected {layout.n_prefix} prefix + "
                    f"{layout.grid_hw[0]}x{layout.grid_hw[1]} patches = {layout.n_tokens}"
                )
            return layout

        parts: list[AttentionRecorder] = []
        temporal: list[AttentionRecorder] = []
        logits, pooled = [], []
        starts = range(0, pixels.shape[0], batch_size)
        for start in tqdm(starts, desc="capture", unit="batch", disable=not progress or len(starts) < 2):
            batch = pixels[start : start + batch_size].to(self.device, self.dtype)
            recorder = AttentionRecorder(
                self.sites, layout_for, layer_ids, cls=layout.has_cls, fuse=fuse,
                full_layers=full_ids, reducers=reducers, blocks=self.blocks if token_norms else None,
            )
            every_row = bool(fuse or full_ids or reducers)  # the temporal attention holds no CLS row
            beside = AttentionRecorder(self.temporal_sites or [], layout_for,
                                       layer_ids if self.temporal_sites and every_row else [],
                                       cls=False, fuse=fuse, full_layers=full_ids, reducers=reducers,
                                       answer_sdpa=False)
            with self.lock, recorder, beside, PoolingRecorder(self.pool if pool else None) as pooling, \
                    torch.no_grad():
                out = self.forward(batch)
            recorder.finish()
            beside.finish()
            if self.temporal_sites and every_row:
                temporal.append(beside)
            if pool:
                pooled.append(pooling.attention())
            parts.append(recorder)
            if out is not None:
                logits.append(out.float().cpu())

        def cat(get, parts=parts) -> torch.Tensor:
            stacks = [stack_layers(get(r), layer_ids) for r in parts]
            return stacks[0] if len(stacks) == 1 else torch.cat(stacks, dim=1)  # one batch: no copy

        def full_of(parts: list[AttentionRecorder]) -> dict[int, torch.Tensor]:
            return {i: torch.cat([r.full[i] for r in parts]) if len(parts) > 1 else parts[0].full[i] for i in full_ids}

        beside_capture = None
        if temporal:
            beside_capture = Capture(
                layout=layout, layers=layer_ids, model_name=self.name,
                fused={how: cat(lambda r, h=how: r.fused[h], temporal) for how in fuse}, full=full_of(temporal),
                reduced={name: cat(lambda r, n=name: r.reduced[n], temporal) for name in (reducers or {})},
                geometry=list(geometry or []), n_layers=self.num_layers,
                kernels=tuple(sorted(set().union(*(r.kernels for r in temporal)))),
            )
        return Capture(
            layout=layout,
            layers=layer_ids,
            model_name=self.name,
            cls=cat(lambda r: r.cls_rows) if layout.has_cls and layer_ids else None,
            fused={how: cat(lambda r, h=how: r.fused[h]) for how in fuse},
            full=full_of(parts),
            reduced={name: cat(lambda r, n=name: r.reduced[n]) for name in (reducers or {})},
            token_norms=cat(lambda r: r.token_norms) if token_norms else None,
            pool=torch.cat(pooled) if pooled else None,
            images=list(views or []),
            geometry=list(geometry or []),
            logits=torch.cat(logits) if logits else None,
            pixels=pixels,
            n_layers=self.num_layers,
            kernels=tuple(sorted(set().union(*(r.kernels for r in parts)))),
            temporal=beside_capture,
        )

    def describe(self) -> dict:
        """Facts about the model for summaries and listings."""
        return {
            "model": self.name,
            "family": self.family,
            "layers": self.num_layers,
            "heads": self.num_heads,
            "patch_size": self.patch_size,
            "prefix_tokens": list(self.prefix_names),
            "preprocess": self.preprocess.to_dict(),
        }
