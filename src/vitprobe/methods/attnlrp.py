"""``attnlrp``: AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML 2024), in the gradient × input form of LXT's efficient mode (github.com/rachtibat/
LRP-eXplains-Transformers), applied inside vitprobe's own gradient pass for every family.

The rules, each written as a change of the backward pass only (the forward values are the model's own):

- linear layers and convolutions: the ε-rule with ε → 0, which in gradient × input is the plain gradient
  (biases keep the relevance that falls on them);
- LayerNorm and RMSNorm (and the L2 normalisation of a text-prompt score): the normalising division is a
  constant, so the relevance passes through as through a linear map (the LN rule, "identity" in the paper);
- element-wise activations (GELU, QuickGELU, SiLU, ReLU, ...): the identity rule, ∂ = output / input;
- products of two tensors that both depend on the image (q·kᵀ, A·V, and gated MLPs' element-wise
  products): the uniform rule, each factor gets half of the gradient, so q and k receive ¼ and v ½ as in
  LXT;
- softmax: the plain gradient, which in gradient × input is the paper's softmax rule
  R_in,i = x_i (R_i − s_i Σ_j R_j); it is not conservative (its Taylor bias s_j (1 − x_j + Σ_i s_i x_i) keeps
  some relevance);
- ``variant="cp"`` (CP-LRP, Ali et al. 2022; what LXT applies to ViT attention): the attention
  probabilities are constants, so relevance reaches the tokens through the values only.

Why not LXT's own patches: LXT 2.1 patches ``torch.nn`` classes process-wide (LayerNorm, GELU,
MultiheadAttention), its HF attention patch replaces transformers 5's attention registry with a plain dict
(every attention call then fails), its package imports torchvision (no working CPU build here) and a
transformers name that transformers 5 removed, and open_clip's LayerNorm subclass escapes its LayerNorm
patch. The same rules are applied here for the duration of one pass, on this model only, through a
``TorchFunctionMode`` plus forward hooks on the activation modules; the tests check them against LXT's own
patch functions (1e-4) and check conservation on other families.

Relevance at the input is pixels × ∂y/∂pixels of the model-input pixels (zero at the normalisation's mean
colour): summed over colour channels and over each patch's pixels it is the (B, H, W) map.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..analysis.maps import pixels_to_grid
from .base import Context, Method, Needs, Param, Result, register_method
from .params import TARGET

VARIANTS = ("attnlrp", "cp")
VARIANT = Param("variant", "attnlrp", "attnlrp: the paper's softmax and matmul rules in attention; cp: CP-LRP, "
                "attention probabilities held constant (relevance through the values only)", "choice",
                choices=VARIANTS)


class _IdentityRule(torch.autograd.Function):
    """y = f(x) given as (x, y): the backward is ∂ · y / x (the identity rule in gradient × input)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y / torch.where(x == 0, torch.ones_like(x), x))
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


class _Half(torch.autograd.Function):
    """The identity forward; half of the gradient backward (one factor of a product, the uniform rule)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * 0.5


def _tracked(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.requires_grad


def _product(fn: Callable[..., torch.Tensor], a: torch.Tensor, b: torch.Tensor, *rest: Any,
             **kwargs: Any) -> torch.Tensor:
    """fn(a, b) with the uniform rule when both factors depend on the image (a product with a constant is
    linear and keeps its gradient)."""
    if _tracked(a) and _tracked(b) and a.dim() > 0 and b.dim() > 0:
        a, b = _Half.apply(a), _Half.apply(b)
    return fn(a, b, *rest, **kwargs)


def _identity_rule(fn: Callable[..., torch.Tensor], x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        y = fn(x, *args, **kwargs)
    return _IdentityRule.apply(x, y)


def _last_dims(shape: int | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(range(-(1 if isinstance(shape, int) else len(tuple(shape))), 0))


def _layer_norm(x: torch.Tensor, shape: Any, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    dims = _last_dims(shape)
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    centred = work - work.mean(dims, keepdim=True)
    std = (centred.pow(2).mean(dims, keepdim=True) + eps).sqrt()
    y = (centred / std.detach()).to(x.dtype)
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def _rms_norm(x: torch.Tensor, shape: Any, weight: torch.Tensor | None = None,
              eps: float | None = None) -> torch.Tensor:
    dims = _last_dims(shape)
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    y = x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps).detach()
    return y * weight if weight is not None else y


def _normalize(x: torch.Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out: Any = None) -> torch.Tensor:
    return x / x.norm(p, dim, keepdim=True).clamp_min(eps).detach()


_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm}
_MULS = {torch.mul, torch.multiply, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}
_SOFTMAXES = {F.softmax, torch.softmax, torch.Tensor.softmax}
_ACTIVATIONS = {F.gelu, F.silu, F.relu, F.mish, F.elu, F.leaky_relu, F.hardswish, F.softplus, torch.relu}
_NORMS = {F.layer_norm: _layer_norm, F.rms_norm: _rms_norm, F.normalize: _normalize}
_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)
_SDPA_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _additive(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """A boolean mask (True: attend) or an additive one as the additive float mask of the scores."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(~mask, float("-inf"))


class LrpRules(TorchFunctionMode):
    """The torch functions a ViT's pass calls, with AttnLRP's backward rules (see the module docstring):
    softmax, products of two image-dependent tensors, LayerNorm / RMSNorm / L2 normalisation, element-wise
    activation functions, ``scaled_dot_product_attention`` and ``multi_head_attention_forward`` (written out
    so the rules reach their products). Outside gradient mode everything runs as it is."""

    def __init__(self, variant: str = "attnlrp") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not torch.is_grad_enabled():
            return func(*args, **kwargs)
        if func in _MATMULS or func in _MULS:
            if len(args) == 2:
                return _product(func, *args, **kwargs)
            return func(*args, **kwargs)
        if func in _SOFTMAXES:
            return self._softmax(func(*args, **kwargs))
        if func is torch.einsum:
            operands = args[1:] if len(args) > 2 else tuple(args[1]) if len(args) == 2 else ()
            if len(operands) == 2:
                return _product(lambda a, b: torch.einsum(args[0], a, b), *operands)
            return func(*args, **kwargs)
        if func in _NORMS:
            return _NORMS[func](*args, **kwargs)
        if func in _ACTIVATIONS:
            if not _tracked(args[0] if args else kwargs.get("input")):
                return func(*args, **kwargs)
            rest = tuple(False if isinstance(a, bool) else a for a in args[1:])  # never in place
            return _identity_rule(func, args[0], *rest, **{**kwargs, **({"inplace": False} if "inplace" in kwargs
                                                                          else {})})
        if func is F.scaled_dot_product_attention:
            return self._sdpa(**dict(zip(_SDPA_NAMES, args, strict=False)), **kwargs)
        if func is F.multi_head_attention_forward:
            return self._mha(_MHA_SIGNATURE.bind(*args, **kwargs))
        return func(*args, **kwargs)

    def _softmax(self, probs: torch.Tensor) -> torch.Tensor:
        return probs.detach() if self.variant == "cp" else probs

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(output (..., Tq, d), probabilities (..., Tq, T)) of q (..., Tq, d), k and v (..., T, d)."""
        scores = _product(torch.matmul, q, k.transpose(-2, -1)) * scale
        if mask is not None:
            scores = scores + mask
        probs = self._softmax(scores.softmax(dim=-1))
        return _product(torch.matmul, probs, v), probs

    def _sdpa(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
              dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
              enable_gqa: bool = False) -> torch.Tensor:
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            repeat = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
        mask = _additive(attn_mask, query)
        if is_causal:
            causal = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
            mask = _additive(causal, query) if mask is None else mask + _additive(causal, query)
        return self._attention(query, key, value, mask, query.shape[-1] ** -0.5 if scale is None else scale)[0]

    def _mha(self, bound: inspect.BoundArguments) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``F.multi_head_attention_forward`` written out: query (Tq, B, E), key and value (T, B, E)."""
        bound.apply_defaults()
        a = bound.arguments
        if a["bias_k"] is not None or a["add_zero_attn"] or a["static_k"] is not None or a["is_causal"]:
            raise NotImplementedError("attnlrp: nn.MultiheadAttention with bias_k/v, add_zero_attn, static keys or "
                                      "is_causal is not supported")
        query, key, value, heads = a["query"], a["key"], a["value"], a["num_heads"]
        tq, batch, embed = query.shape
        if a["use_separate_proj_weight"]:
            weights = (a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"])
        else:
            weights = a["in_proj_weight"].chunk(3)
        biases = a["in_proj_bias"].chunk(3) if a["in_proj_bias"] is not None else (None, None, None)
        q, k, v = (F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases, strict=True))
        q, k, v = (x.reshape(x.shape[0], batch * heads, embed // heads).transpose(0, 1) for x in (q, k, v))
        mask = _additive(a["attn_mask"], q)
        if mask is not None and mask.dim() == 2:
            mask = mask[None]
        if a["key_padding_mask"] is not None:
            padding = _additive(a["key_padding_mask"].logical_not() if a["key_padding_mask"].dtype == torch.bool
                                else a["key_padding_mask"], q)
            padding = padding.view(batch, 1, 1, -1).expand(-1, heads, -1, -1).reshape(batch * heads, 1, -1)
            mask = padding if mask is None else mask + padding
        out, probs = self._attention(q, k, v, mask, (embed // heads) ** -0.5)
        out = F.linear(out.transpose(0, 1).reshape(tq, batch, embed), a["out_proj_weight"], a["out_proj_bias"])
        if not a["need_weights"]:
            return out, None
        probs = probs.view(batch, heads, tq, -1)
        return out, probs.mean(dim=1) if a["average_attn_weights"] else probs


_ACTIVATION_MODULES = (nn.GELU, nn.SiLU, nn.ReLU, nn.Mish, nn.ELU, nn.LeakyReLU, nn.Hardswish, nn.Softplus)
_ACTIVATION_HOMES = ("transformers.activations", "timm.layers.activations", "timm.layers.activations_me")
_NOT_ACTIVATIONS = ("Sigmoid", "Tanh", "HardSigmoid", "Softmax", "LinearActivation", "ClassInstantier")


def is_activation(module: nn.Module) -> bool:
    """Whether ``module`` is an element-wise activation (a leaf without parameters): torch's, transformers',
    timm's, or a ``QuickGELU`` (open_clip's), each of which gets the identity rule as a whole."""
    if next(module.children(), None) is not None or next(module.parameters(), None) is not None:
        return False
    cls = type(module)
    if cls.__name__ in _NOT_ACTIVATIONS:
        return False
    return isinstance(module, _ACTIVATION_MODULES) or cls.__module__ in _ACTIVATION_HOMES or cls.__name__ == "QuickGELU"


def _identity_hook(_module: nn.Module, inputs: tuple, output: Any) -> Any:
    if not torch.is_grad_enabled() or not inputs or not _tracked(inputs[0]) or not isinstance(output, torch.Tensor):
        return None
    return _IdentityRule.apply(inputs[0], output.detach())


@contextmanager
def lrp_rules(module: nn.Module, variant: str = "attnlrp") -> Iterator[None]:
    """Inside: passes through ``module`` propagate AttnLRP's relevance (as a gradient to multiply by the
    input): its parameters are constants (relevance flows from the input alone), its activation modules
    follow the identity rule, and the torch functions it calls follow ``LrpRules(variant)``. Everything
    is restored on exit, also when the pass raises."""
    flags = [(param, param.requires_grad) for param in module.parameters()]
    handles = [sub.register_forward_hook(_identity_hook) for sub in module.modules() if is_activation(sub)]
    try:
        for param, _ in flags:
            param.requires_grad_(False)
        with LrpRules(variant):
            yield
    finally:
        for handle in handles:
            handle.remove()
        for param, flag in flags:
            param.requires_grad_(flag)


@register_method
class AttnLRP(Method):
    """Relevance R = x ⊙ ∂y/∂x at the model-input pixels x under AttnLRP's rules (module docstring), summed
    over colour channels and over each patch's pixels: signed, in the units of the score y, Σ R ≈ y less
    what biases and the softmax keep (CP-LRP: biases only). Targets as for the other gradient methods.
    Detail: ``pixels`` (B, H_in, W_in) the relevance of each input pixel (channels summed), ``score`` (B,)
    the target's score y."""

    name = "attnlrp"
    summary = "AttnLRP (Achtibat et al. 2024): layer-wise relevance of a target at the input pixels, per patch"
    params = (TARGET, VARIANT)
    requires = ("gradients",)
    details = {"pixels": "(B, H_in, W_in) the relevance at each input pixel, summed over colour channels",
               "score": "(B,) the explained score"}

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        return Needs(gradients=True)

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        from ..targets import gradient_pass

        model = ctx.model
        if model is None or ctx.pixels is None:
            raise ValueError("gradient methods need the model: call vp.attribute(model, images, ...), not on a capture")
        pixels = ctx.pixels.detach().to(model.device, model.dtype).clone().requires_grad_(True)
        with model.lock, lrp_rules(model.module, p["variant"]):
            run = gradient_pass(model, pixels, p["target"])
            score = run.score(run.tokens[-1])
            (grad,) = torch.autograd.grad(score.sum(), pixels)
        relevance = (pixels.detach().float() * grad.float()).cpu()  # (B, 3, H_in, W_in)
        per_pixel, maps = relevance.sum(dim=1), pixels_to_grid(relevance, ctx.layout.grid_hw)
        rule = "AttnLRP" if p["variant"] == "attnlrp" else "CP-LRP"
        title = f"{rule} relevance of {run.words}"
        return Result(maps, title, {"pixels": per_pixel, "score": score.detach().float().cpu()},
                      [(p["variant"], maps)], targets=run.targets, logits=run.logits)
