"""Record every layer's self-attention in one forward pass, also under fused SDPA/flash kernels.

Hooks on each layer's query and key projections take q and k as the model computes them; the
attention probabilities softmax(q·kᵀ·scale) are recomputed from them in float32 and reduced as
the forward streams, so the model keeps its fast fused kernel and all layers × heads × T × T
never sit in memory at once. The arithmetic of a layer is a kernel's (``kernels/``: torch ops, a
compiled C++ kernel, Triton), chosen per layer for the device and the request (``VITPROBE_KERNEL``).

Only the CLS row costs one extra (1, T) row per head. A layer whose every row is needed (head
fusion, reducers, full maps) would compute its attention twice, once in the model's kernel and
once here; so when the model calls ``F.scaled_dot_product_attention`` for such a layer, the
recorder answers that call itself: the same probability blocks it reduces give the output P·V
(float32, equal to the fused kernel's to rounding). Models that do not call it (eager
attention, custom kernels) are reduced from the hooked q and k as before.

Some models change q and k after the projections or add to the logits inside attention (a rotary
position embedding, a relative position bias). Their sites name that (``in_kernel``), and the
recorder reads q, k and the additive mask from the model's own SDPA call, so the maps hold exactly
what the kernel softmaxes; a forward that makes no such call is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.overrides import TorchFunctionMode

from .fusion import FUSIONS
from .io.preprocess import Geometry
from .kernels import select_kernel
from .kernels.base import LayerRequest, RowReducer, RowStatReducer
from .kernels.buffers import empty_buffer
from .kernels.torch_ops import attention_probs, from_probs, query_row_probs
from .layout import TokenLayout

Reducer = Callable[[torch.Tensor, TokenLayout], torch.Tensor]
"""Per-layer reduction: attention (B, heads, T, T) and the layout -> any tensor with batch first. Besides
such functions a capture takes ``RowStatReducer``s (per-row statistics, on every kernel) and
``RowReducer``s (fed block by block, on the torch-op kernel)."""

_SDPA = F.scaled_dot_product_attention  # the kernel itself, also when a caller wraps the F attribute


class CaptureError(RuntimeError):
    """A layer recorded zero or several attention maps, or the model cannot be captured."""


@dataclass(frozen=True)
class AttentionSite:
    """One self-attention layer: the modules whose outputs are the flat q and k (B, T, heads·d), or q
    and k already split per head (B, heads, T, d).

    ``qk_transform`` (optional) maps (q, k) shaped (B, heads, T, d) to the q, k that enter the
    softmax, for models that normalise or rotate them after the projection. ``in_kernel`` (optional)
    names what the model applies inside its attention call (e.g. "a relative position bias"): q, k
    and the additive mask are then read from that ``scaled_dot_product_attention`` call. ``packed``:
    ``query`` is an ``nn.MultiheadAttention`` (``key`` the same module) whose one in-projection gives q
    and k from the inputs of each call. ``qkv``: ``query`` is one linear layer (``key`` the same module)
    whose output (B, T, 3·heads·d) holds q, k and v side by side.

    ``joint`` (optional): the layer's attention is not one softmax over the model's sequence but one per
    group of tokens (TimeSformer's divided attention: per frame, or per patch over the frames). The hooked
    q and k are then those of the groups, (B·groups, heads, n, d), and ``joint`` writes their probabilities
    (B·groups, heads, n, n) as one (B, heads, T, T) attention in the model's token order, which the
    capture reduces like any other. ``joint_cls`` (optional, with ``joint``): the joint CLS row (B, heads, T)
    from the probabilities of each group's first query row (B·groups, heads, n), so a capture that needs
    only CLS rows does not build the whole joint attention.
    """

    query: nn.Module
    key: nn.Module
    num_heads: int
    head_dim: int
    scale: float
    qk_transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    in_kernel: str | None = None
    packed: bool = False
    qkv: bool = False
    joint: Callable[[torch.Tensor], torch.Tensor] | None = None
    joint_cls: Callable[[torch.Tensor], torch.Tensor] | None = None


def shape_of(value: torch.Tensor | None) -> str:
    """(a, b, c) of a tensor, for short reprs; "none" without one."""
    return "none" if value is None else "(" + ", ".join(str(n) for n in value.shape) + ")"


@dataclass(repr=False)
class Capture:
    """What one capture recorded, stacked over the recorded layers.

    - ``cls``: (L, B, heads, T) the CLS token's attention row in each layer (None without CLS);
    - ``fused``: name -> (L, B, T, T) head-fused attention ("mean" / "max" / "min"), for rollout;
    - ``full``: layer -> (B, heads, T, T) complete attention of the layers asked for in full;
    - ``reduced``: name -> (L, B, ...) outputs of the extra reducers;
    - ``token_norms``: (L, B, T) L2 norm of each layer's output tokens (when asked for);
    - ``pool``: (B, heads, T) the attention-pooling head's probe attention over every token (SigLIP);
    - ``temporal``: a model with divided space-time attention (TimeSformer): what the same options recorded
      of every layer's temporal attention, as a Capture of its own in the same joint layout (its ``cls`` is
      None: the CLS token takes no part in it), when the capture asks for more than CLS rows; None for every
      other model;
    - ``images``: the part of each original image the model saw, ``geometry`` how it was mapped;
    - ``logits``: (B, classes) when the model has a classification head;
    - ``pixels``: (B, 3, H, W) the preprocessed model input (for methods that run the model again);
    - ``n_layers``: how many layers the model has (negative layer indices count back from it);
    - ``kernels``: the attention kernels that computed the layers needing every row ("cpp", "torch", ...;
      empty when only CLS rows were read).
    """

    layout: TokenLayout
    layers: list[int]
    model_name: str
    cls: torch.Tensor | None = None
    fused: dict[str, torch.Tensor] = field(default_factory=dict)
    full: dict[int, torch.Tensor] = field(default_factory=dict)
    reduced: dict[str, torch.Tensor] = field(default_factory=dict)
    images: list[Image.Image] = field(default_factory=list)
    geometry: list[Geometry] = field(default_factory=list)
    logits: torch.Tensor | None = None
    token_norms: torch.Tensor | None = None
    pool: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    n_layers: int | None = None
    kernels: tuple[str, ...] = ()
    temporal: Capture | None = None

    def __repr__(self) -> str:
        parts = [f"images={self.batch_size}", f"layers={_span(self.layers)}", f"grid={self.layout.map_shape}",
                 f"prefix={self.layout.prefix_names}", f"cls={shape_of(self.cls)}"]
        parts += [f"fused[{how!r}]={shape_of(t)}" for how, t in self.fused.items()]
        if self.full:
            parts.append(f"full={_span(sorted(self.full))}: {shape_of(next(iter(self.full.values())))}")
        parts += [f"reduced[{name!r}]={shape_of(t)}" for name, t in self.reduced.items()]
        if self.token_norms is not None:
            parts.append(f"token_norms={shape_of(self.token_norms)}")
        if self.pool is not None:
            parts.append(f"pool={shape_of(self.pool)}")
        if self.logits is not None:
            parts.append(f"logits={shape_of(self.logits)}")
        if self.temporal is not None:
            parts.append("temporal=" + repr(self.temporal))
        return f"Capture({self.model_name!r}, " + ", ".join(parts) + ")"

    @property
    def batch_size(self) -> int:
        if self.geometry:
            return len(self.geometry)
        if self.pool is not None:
            return self.pool.shape[0]
        tensors = list(self._tensors())
        if tensors:
            return tensors[0].shape[1]
        return next(iter(self.full.values())).shape[0]

    def _tensors(self):
        if self.cls is not None:
            yield self.cls
        yield from self.fused.values()
        yield from self.reduced.values()

    def resolve_layer(self, layer: int) -> int:
        """The model layer index of ``layer`` (negative counts back from the model's last layer)."""
        total = self.n_layers if self.n_layers is not None else max(self.layers) + 1
        index = layer + total if layer < 0 else layer
        if not 0 <= index < total:
            raise ValueError(f"layer {layer} does not exist: {self.model_name} has {total} layers")
        return index

    def layer_position(self, layer: int) -> int:
        """Position of a model layer (negative counts from the model's last layer) in the stacked tensors."""
        index = self.resolve_layer(layer)
        if index not in self.layers:
            raise KeyError(f"layer {index} was not recorded (recorded: {self.layers})")
        return self.layers.index(index)


def _span(values: Sequence[int]) -> str:
    """[0, 1, 2, 3] -> "0..3"; anything else as a list."""
    values = list(values)
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}..{values[-1]}"
    return str(values)


def _split_heads(x: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """(B, T, heads·d) -> (B, heads, T, d); q or k already split (B, heads, T, d) pass through."""
    if x.dim() == 4:
        return x
    b, t, _ = x.shape
    return x.view(b, t, num_heads, head_dim).transpose(1, 2)


def additive_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """An SDPA ``attn_mask`` as a float32 bias added to the logits: float masks as they are, boolean ones
    (True: attend) as 0 or a large negative number (finite, so entropies stay defined)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, torch.finfo(torch.float32).min / 2)
    return mask.float()


class AttentionRecorder:
    """Context manager that hooks q/k of the chosen layers and reduces each layer as it is computed.

    Per forward pass every hooked layer must produce exactly one q and one k; ``finish`` raises
    ``CaptureError`` otherwise. Hooks are removed on exit, also when the forward raises. With
    ``answer_sdpa`` (default) a layer that needs every row is computed once: its
    ``F.scaled_dot_product_attention`` call is answered from the blocks the recorder reduces. Sites
    with ``in_kernel`` are always read from that call (the kernel still runs where nothing is answered).
    """

    def __init__(
        self,
        sites: Sequence[AttentionSite],
        layout_for: Callable[[int], TokenLayout],
        layers: Sequence[int],
        *,
        cls: bool = True,
        fuse: Sequence[str] = (),
        full_layers: Sequence[int] = (),
        reducers: dict[str, Reducer] | None = None,
        blocks: Sequence[nn.Module] | None = None,
        answer_sdpa: bool = True,
    ) -> None:
        self.sites = sites
        self.layout_for = layout_for
        self.layers = list(layers)
        self.want_cls = cls
        self.fuse = tuple(fuse)
        unknown = [how for how in self.fuse if how not in FUSIONS]
        if unknown:
            raise ValueError(f"unknown head fusion {unknown[0]!r}; use one of {FUSIONS}")
        self.full_layers = set(full_layers)
        self.reducers = dict(reducers or {})
        self.blocks = blocks
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.answers_sdpa = answer_sdpa
        self._mode: _AnswerSdpa | None = None  # only while entered: no reference cycle after exit
        self._reset()

    def _reset(self) -> None:
        self._q: dict[int, torch.Tensor] = {}
        self._k: dict[int, torch.Tensor] = {}
        self._count: dict[int, int] = dict.fromkeys(self.layers, 0)
        self._pending: int | None = None  # q and k hooked, waiting for the layer's SDPA call
        self.sdpa_answered = 0
        self.kernels: set[str] = set()  # which kernels computed the layers that needed every row
        self.layout: TokenLayout | None = None
        self.cls_rows: dict[int, torch.Tensor] = {}
        self.fused: dict[str, dict[int, torch.Tensor]] = {how: {} for how in self.fuse}
        self._fused_stack: dict[str, torch.Tensor] = {}
        self.full: dict[int, torch.Tensor] = {}
        self.reduced: dict[str, dict[int, torch.Tensor]] = {name: {} for name in self.reducers}
        self.token_norms: dict[int, torch.Tensor] = {}

    def __enter__(self) -> AttentionRecorder:
        for layer in self.layers:
            site = self.sites[layer]
            if site.qkv:
                self._handles.append(site.query.register_forward_hook(self._qkv_hook(layer)))
            elif site.packed:
                self._handles.append(site.query.register_forward_pre_hook(self._packed_hook(layer), with_kwargs=True))
            else:
                self._handles.append(site.query.register_forward_hook(self._hook(layer, self._q)))
                self._handles.append(site.key.register_forward_hook(self._hook(layer, self._k)))
            if self.blocks is not None:
                self._handles.append(self.blocks[layer].register_forward_hook(self._norm_hook(layer)))
        if self.answers_sdpa or any(self.sites[layer].in_kernel for layer in self.layers):
            self._mode = _AnswerSdpa(self.answer_sdpa)
            self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)
            self._mode = None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: int, store: dict[int, torch.Tensor]):
        def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            self._arrive(layer, store, output.detach())

        return hook

    def _qkv_hook(self, layer: int):
        site = self.sites[layer]

        def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            qkv = output.detach().unflatten(-1, (3, site.num_heads, site.head_dim))  # (B, T, 3, heads, d)
            self._arrive(layer, self._q, qkv[:, :, 0].transpose(1, 2))
            self._arrive(layer, self._k, qkv[:, :, 1].transpose(1, 2))

        return hook

    def _packed_hook(self, layer: int):
        def hook(mha: nn.MultiheadAttention, args: tuple, kwargs: dict) -> None:
            query = args[0] if args else kwargs["query"]
            key = args[1] if len(args) > 1 else kwargs["key"]
            q, k = packed_qk(mha, query.detach(), key.detach())
            self._arrive(layer, self._q, q)
            self._arrive(layer, self._k, k)

        return hook

    def _arrive(self, layer: int, store: dict[int, torch.Tensor], value: torch.Tensor) -> None:
        """A layer's q (or k) was computed: reduce the layer once both are here, or wait for its SDPA call."""
        self._flush_pending()  # the pending layer's SDPA call never came: reduce it from q, k
        if layer in store:
            self._count[layer] += 1  # a second q (or k) before the layer was reduced
            return
        store[layer] = value
        if layer in self._q and layer in self._k:
            site = self.sites[layer]
            wait = site.joint is None and (site.in_kernel or (self.answers_sdpa and self._needs_all_rows(layer)))
            if self._mode is not None and wait:
                self._pending = layer
            else:
                self._reduce(layer)

    def _needs_all_rows(self, layer: int) -> bool:
        return bool(self.fuse or self.reducers) or layer in self.full_layers

    def _flush_pending(self) -> None:
        if self._pending is not None:
            layer, self._pending = self._pending, None
            if self.sites[layer].in_kernel:
                raise CaptureError(
                    f"layer {layer}: the model applies {self.sites[layer].in_kernel} inside its attention and made "
                    "no scaled_dot_product_attention call to read it from; load it with attn_implementation='sdpa'"
                )
            self._reduce(layer)

    def answer_sdpa(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor | None:
        """The output of the pending layer's attention call (B, heads, T, d), reduced on the way from
        the call's own q, k and additive mask; None (the model's kernel runs) when no layer waits, the
        call is not self-attention with that layer's q shape, or the layer needs no output (only read,
        ``in_kernel``: its CLS rows, or gradients are wanted)."""
        layer = self._pending
        if layer is None or dropout_p or is_causal or enable_gqa:
            return None
        site = self.sites[layer]
        hooked = _split_heads(self._q[layer], site.num_heads, site.head_dim)
        if query.shape != hooked.shape or key.shape != query.shape or value.shape[:3] != query.shape[:3]:
            return None
        grads = torch.is_grad_enabled() and any(x.requires_grad for x in (query, key, value))
        if grads and not site.in_kernel:
            return None  # reduced from the hooks
        self._pending = None
        del self._q[layer], self._k[layer]
        self._count[layer] += 1
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        answer = self.answers_sdpa and not grads and self._needs_all_rows(layer)
        output = self._reduce_qk(layer, query.detach(), key.detach(), scale, values=value if answer else None,
                                 bias=additive_mask(attn_mask))
        if not answer:
            return None
        self.sdpa_answered += 1
        return output.to(query.dtype)

    def _norm_hook(self, layer: int):
        def hook(_module: nn.Module, _inputs, output) -> None:
            tokens = output[0] if isinstance(output, tuple) else output
            self.token_norms[layer] = tokens.detach().float().norm(dim=-1).cpu()

        return hook

    def _reduce(self, layer: int) -> None:
        """Reduce ``layer`` from its hooked q and k."""
        site = self.sites[layer]
        q = _split_heads(self._q.pop(layer), site.num_heads, site.head_dim)
        k = _split_heads(self._k.pop(layer), site.num_heads, site.head_dim)
        self._count[layer] += 1
        if site.qk_transform is not None:
            q, k = site.qk_transform(q, k)
        if site.joint is not None:
            if site.joint_cls is not None and not self._needs_all_rows(layer):
                row = site.joint_cls(query_row_probs(q[:, :, 0], k, site.scale))  # (B, heads, T)
                layout = self.layout = self.layout_for(row.shape[-1])
                if self.want_cls and layout.has_cls:
                    self.cls_rows[layer] = row.cpu()
                return
            self._reduce_probs(layer, site.joint(attention_probs(q, k, site.scale)))
            return
        self._reduce_qk(layer, q, k, site.scale)

    def _reduce_qk(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, scale: float, values: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Record ``layer`` from q, k (B, heads, T, d) as they enter the softmax and the additive ``bias``
        (broadcastable to (B, heads, T, T)); with ``values`` return the attention output (B, heads, T, d)
        in float32."""
        layout = self.layout_for(q.shape[2])
        self.layout = layout
        if not self._needs_all_rows(layer):
            if self.want_cls and layout.has_cls:
                i = layout.cls_index
                row_bias = bias[..., i : i + 1, :] if bias is not None and bias.shape[-2] > 1 else bias
                self.cls_rows[layer] = query_row_probs(q[:, :, i], k, scale, row_bias).cpu()
            return None
        batch, heads, t, _ = q.shape
        request = self._request(layer, layout, batch, heads, t, q.device)
        result = select_kernel(q.device, request)(q, k, scale, request, values, bias)
        return self._record(layer, layout, request, result)

    def _reduce_probs(self, layer: int, probs: torch.Tensor) -> None:
        """Record ``layer`` from its attention probabilities (B, heads, T, T) in float32 (``AttentionSite.joint``)."""
        layout = self.layout_for(probs.shape[-1])
        self.layout = layout
        batch, heads, t, _ = probs.shape
        if not self._needs_all_rows(layer):
            if self.want_cls and layout.has_cls:
                self.cls_rows[layer] = probs[:, :, layout.cls_index].cpu()
            return
        request = self._request(layer, layout, batch, heads, t, probs.device)
        self._record(layer, layout, request, from_probs(probs, request))

    def _request(self, layer: int, layout: TokenLayout, batch: int, heads: int, t: int,
                 device: torch.device) -> LayerRequest:
        """What ``layer`` is reduced to, the reducers asked and started."""
        streamed = [r for r in self.reducers.values() if isinstance(r, RowReducer)]
        whole = [r for r in self.reducers.values() if not isinstance(r, (RowReducer, RowStatReducer))]
        request = LayerRequest(
            cls_index=layout.cls_index if self.want_cls and layout.has_cls else None,
            fuse={how: self._fused_slot(how, layer, (batch, t, t), device) for how in self.fuse},
            full=bool(whole) or layer in self.full_layers,
            block_reducers=streamed,
        )
        for reducer in self.reducers.values():
            if isinstance(reducer, RowStatReducer):
                reducer.ask(request, layout, device)
        for reducer in streamed:
            reducer.start(batch, heads, layout, device)
        return request

    def _record(self, layer: int, layout: TokenLayout, request: LayerRequest, result) -> torch.Tensor | None:
        """Keep what ``result`` (a kernel's ``LayerResult`` for ``request``) holds of ``layer``; its output P·V."""
        streamed = {name: r for name, r in self.reducers.items() if isinstance(r, RowReducer)}
        statistics = {name: r for name, r in self.reducers.items() if isinstance(r, RowStatReducer)}
        whole = {name: r for name, r in self.reducers.items() if name not in streamed and name not in statistics}
        self.kernels.add(result.kernel)
        if result.cls is not None:
            self.cls_rows[layer] = result.cls.cpu()
        for how, out in request.fuse.items():
            self.fused[how][layer] = out.cpu()
        if layer in self.full_layers:
            self.full[layer] = result.full.cpu()
        for name, reducer in statistics.items():
            self.reduced[name][layer] = reducer.reduce(result, layout).cpu()
        for name, reducer in streamed.items():
            self.reduced[name][layer] = reducer.finish().cpu()
        for name, reducer in whole.items():
            self.reduced[name][layer] = reducer(result.full, layout).cpu()
        return result.output

    def _fused_slot(self, how: str, layer: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The (B, T, T) slice of ``layer`` in one (L, B, T, T) tensor per fusion, so stacking copies nothing."""
        stack = self._fused_stack.get(how)
        if stack is None or stack.shape[1:] != shape:
            stack = self._fused_stack[how] = empty_buffer((len(self.layers), *shape), device)
        return stack[self.layers.index(layer)]

    def finish(self) -> None:
        """Check that every recorded layer produced exactly one map in this forward pass."""
        self._flush_pending()
        leftover = sorted(set(self._q) | set(self._k))
        bad = {layer: n for layer, n in self._count.items() if n != 1}
        if leftover or bad:
            parts = [f"layer {layer}: {n} maps" for layer, n in sorted(bad.items())]
            parts += [f"layer {layer}: q or k without its partner" for layer in leftover]
            raise CaptureError(
                "attention capture expected exactly one map per layer, got " + "; ".join(parts)
            )


class _AnswerSdpa(TorchFunctionMode):
    """While active, hands ``F.scaled_dot_product_attention`` calls to ``answer`` (the recorder's
    ``answer_sdpa``) and runs the model's kernel only where that returns None."""

    def __init__(self, answer: Callable[..., torch.Tensor | None]) -> None:
        super().__init__()
        self.answer = answer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _SDPA:
            output = self.answer(*args, **kwargs)
            if output is not None:
                return output
        return func(*args, **kwargs)


def packed_qk(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k (B, heads, T, d) in float32 of an ``nn.MultiheadAttention`` with one packed in-projection,
    from its query and key inputs ((B, T, D) batch first, else (T, B, D))."""
    if not mha._qkv_same_embed_dim:
        raise CaptureError("nn.MultiheadAttention with separate q, k, v projections is not supported")
    if not mha.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    d = mha.embed_dim
    weight, bias = mha.in_proj_weight.float(), mha.in_proj_bias
    q = F.linear(query.float(), weight[:d], None if bias is None else bias[:d].float())
    k = F.linear(key.float(), weight[d : 2 * d], None if bias is None else bias[d : 2 * d].float())
    heads, head_dim = mha.num_heads, d // mha.num_heads
    q = q.view(q.shape[0], q.shape[1], heads, head_dim).transpose(1, 2)
    k = k.view(k.shape[0], k.shape[1], heads, head_dim).transpose(1, 2)
    return q, k


def probe_attention(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Per-head attention (B, heads, Tq, T) of an ``nn.MultiheadAttention`` for query (B, Tq, D) and key
    (B, T, D), in float32: softmax(q·kᵀ/√d) of its own projections; the module itself returns only the
    mean over heads."""
    q, k = packed_qk(mha, query, key)
    return attention_probs(q, k, q.shape[-1] ** -0.5)


@dataclass(frozen=True)
class PoolSite:
    """An attention-pooling head: ``module`` and ``probe(module, args, kwargs)`` -> the attention (B, heads, T)
    of its first learned query over the tokens it pools, from the inputs of one call (float32)."""

    module: nn.Module
    probe: Callable[[nn.Module, tuple, dict], torch.Tensor]


def mha_pool_site(mha: nn.MultiheadAttention) -> PoolSite:
    """An ``nn.MultiheadAttention`` pooling head (SigLIP's): the probe is its query, the tokens its keys."""
    if not mha.batch_first:
        raise CaptureError("the pooling head's attention is not batch-first")

    def probe(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> torch.Tensor:
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs["key"]
        return probe_attention(module, query.detach(), key.detach())[:, :, 0]

    return PoolSite(mha, probe)


class PoolingRecorder:
    """Context manager that records a pooling head's probe attention (B, heads, T) from the inputs of
    each call; with ``site`` None it records nothing."""

    def __init__(self, site: PoolSite | None) -> None:
        self.site = site
        self._maps: list[torch.Tensor] = []
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> PoolingRecorder:
        if self.site is not None:
            self._handle = self.site.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._maps.append(self.site.probe(module, args, kwargs).float().cpu())

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def attention(self) -> torch.Tensor:
        """The probe's attention (B, heads, T) of the one call in the forward pass."""
        if len(self._maps) != 1:
            raise CaptureError(f"the pooling head ran {len(self._maps)} times in one forward pass, expected once")
        return self._maps[0]


def stack_layers(per_layer: dict[int, torch.Tensor], layers: Sequence[int]) -> torch.Tensor:
    """Stack {layer: (B, ...)} into (L, B, ...) in the order of ``layers``.

    When the tensors already are the consecutive slices of one (L, B, ...) tensor (the recorder
    writes head-fused maps that way) that tensor is returned as it is, without a copy.
    """
    tensors = [per_layer[layer] for layer in layers]
    base = tensors[0]._base
    if (
        base is not None
        and base.is_contiguous()
        and base.shape == (len(tensors), *tensors[0].shape)
        and all(x.is_contiguous() and x.data_ptr() == base[i].data_ptr() for i, x in enumerate(tensors))
    ):
        return base
    return torch.stack(tensors)
