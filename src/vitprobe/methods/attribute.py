"""The one verb: ``attribute(model, images, method=..., **params)``, one forward pass for all methods."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .base import Attribution, Context, Method, MissingCapture, Needs, get_method

if TYPE_CHECKING:
    from ..capture import Capture, Reducer
    from ..kernels.base import RowReducer, RowStatReducer
    from ..models.base import ImageInput, VitModel

MethodSpec = str | tuple[str, dict[str, Any]]
"""A method by name, or (name, its own parameters) to run one method several times with different ones."""

DEFAULT_METHOD = "rollout"
"""The method ``attribute`` and ``capture_for`` take when none is named (the same one, so that
``attribute(capture_for(model, images))`` draws what was recorded)."""


def _is_single(method: MethodSpec | Sequence[MethodSpec]) -> bool:
    return isinstance(method, str) or (isinstance(method, tuple) and len(method) == 2 and isinstance(method[1], dict))


def _specs(method: MethodSpec | Sequence[MethodSpec], params: dict[str, Any]) -> list[tuple[Method, dict[str, Any]]]:
    """(method, complete parameters) per requested method. Shared ``params`` go to every method that
    takes them; a parameter no requested method takes is an error (a typo must not pass silently)."""
    items = [method] if _is_single(method) else list(method)
    if not items:
        raise ValueError("no method given; vp.methods() lists them")
    chosen = []
    for item in items:
        name, own = (item, {}) if isinstance(item, str) else item
        impl = get_method(name)
        shared = {k: v for k, v in params.items() if k in {p.name for p in impl.params}}
        chosen.append((impl, impl.resolve({**shared, **own})))
    taken = {p.name for impl, _ in chosen for p in impl.params}
    unused = sorted(set(params) - taken)
    if unused:
        names = ", ".join(impl.name for impl, _ in chosen)
        raise ValueError(f"no chosen method ({names}) takes the parameter {unused[0]!r}; vp.methods() lists them")
    return chosen


def _prepare(model: VitModel, images, size: tuple[int, int] | None):
    """(pixels (B, 3, H, W), views, geometry): images loaded and preprocessed, or a tensor of model input
    taken as it is (no views, no geometry)."""
    import torch

    if isinstance(images, torch.Tensor) and images.dim() == 4:
        if size is not None:
            raise ValueError("size applies to images, not to model-input pixels (B, 3, H, W)")
        return images, [], []
    return model.prepare(images, size)


def _is_capture(subject: object) -> bool:
    from ..capture import Capture

    return isinstance(subject, Capture)


def _context(subject: VitModel | Capture, layout) -> Context:
    if _is_capture(subject):
        recorded = [t for t in (subject.cls, *subject.full.values()) if t is not None]
        heads = recorded[0].shape[2 if recorded[0] is subject.cls else 1] if recorded else None
        return Context(layout, subject.n_layers or max(subject.layers) + 1, subject.model_name, heads,
                       capture=subject, pixels=subject.pixels)
    return Context(layout, subject.num_layers, subject.name, subject.num_heads, model=subject)


def _plan(ctx: Context, chosen: list[tuple[Method, dict[str, Any]]], has_classifier: bool | None) -> Needs:
    """The union of the methods' needs, after checking the model has what each requires and that every
    head and layer parameter exists."""
    needs = Needs()
    for impl, p in chosen:
        impl.check_model(ctx.layout, has_classifier)
        for param in impl.params:
            head = p[param.name] if param.kind == "head" else None
            if head is not None and ctx.n_heads is not None and head >= ctx.n_heads:
                raise ValueError(f"head {head} does not exist: the model has {ctx.n_heads} heads")
        needs = needs | impl.needs(ctx, p)
    return needs


def check(model: VitModel, method: MethodSpec | Sequence[MethodSpec], **params: Any) -> None:
    """Raise ``ValueError`` (one line) when ``attribute(model, ..., method, **params)`` would refuse them:
    an unknown method or parameter, a value out of range, a layer or head the model lacks, or a model
    without what the method requires. Runs nothing; the input size is not known here, so a query patch
    outside the grid is found only when images are attributed."""
    chosen = _specs(method, params)
    layout = model.layout((model.patch_size, model.patch_size))
    _plan(_context(model, layout), chosen, bool(model.labels) or None)


def capture_for(
    model: VitModel,
    images: ImageInput | Sequence[ImageInput],
    method: MethodSpec | Sequence[MethodSpec] | None = DEFAULT_METHOD,
    *,
    size: tuple[int, int] | None = None,
    batch_size: int = 8,
    progress: bool = False,
    full_layers: Sequence[int] = (),
    reducers: dict[str, Reducer | RowReducer | RowStatReducer] | None = None,
    **params: Any,
) -> Capture:
    """One capture (one forward pass; gradients are not part of it) planned from what ``method`` needs,
    so ``attribute(capture, method=..., **params)`` draws those methods later without running the model.

    The one way to each capture choice:

    - CLS rows only, (L, B, heads, T) in ``cap.cls``: ``method="layers"`` (every layer) or
      ``method="cls", layer=k`` (one layer); nothing of size T×T is kept;
    - head-fused matrices of every layer, (L, B, T, T) in ``cap.fused``: ``method="rollout"``
      (``head_fusion=`` picks the fusion);
    - full attention (B, heads, T, T) of some layers in ``cap.full``: ``full_layers=[k, ...]``
      (negative: from the end), beside whatever the methods need (``method="query", layer=k`` keeps
      layer k in full too);
    - streamed reductions of every layer, (L, B, ...) in ``cap.reduced[name]``: ``reducers={name:
      reducer}``, each a ``vp.RowReducer`` (fed block by block: no T×T map is held, as ``vp.MeanDistance``
      and ``vp.RowEntropy``), a ``vp.RowStatReducer`` or a function ``(attn (B, heads, T, T), layout) ->
      (B, ...)``; they run on every layer.

    ``method=None`` records only what ``full_layers`` and ``reducers`` ask for (CLS rows come with every
    recorded layer).
    """
    pixels, views, geometry = _prepare(model, images, size)
    chosen = [] if method is None else _specs(method, params)
    if method is None and params:
        raise ValueError(f"method=None takes no method parameters (got {sorted(params)[0]!r})")
    ctx = _context(model, model.layout(tuple(pixels.shape[-2:])))
    needs = _plan(ctx, chosen, bool(model.labels) or None)
    needs = needs | Needs(full_layers=frozenset(model.resolve_layers(full_layers)))
    if not needs.forward and not reducers:
        raise ValueError("nothing to capture: name a method, full_layers or reducers")
    kwargs = needs.capture_kwargs()
    if reducers:
        kwargs["layers"] = None  # reducers run on every layer
    return model.capture_pixels(pixels, views=views, geometry=geometry, batch_size=batch_size, progress=progress,
                                reducers=reducers, **kwargs)


def attribute(
    subject: VitModel | Capture,
    images: ImageInput | Sequence[ImageInput] | None = None,
    method: MethodSpec | Sequence[MethodSpec] = DEFAULT_METHOD,
    *,
    size: tuple[int, int] | None = None,
    batch_size: int = 8,
    progress: bool = False,
    **params: Any,
) -> Attribution | list[Attribution]:
    """Maps of ``images`` by ``method`` (a registered name; ``vp.methods()`` lists them).

    ``subject`` is a loaded model (``images`` as ``capture`` takes them: paths, PIL images, arrays,
    one or many; ``size=(H, W)`` resizes the whole image instead of the model's preprocessing; or
    model-input pixels (B, 3, H, W) already preprocessed, which then have no views or geometry) or a
    ``Capture`` already recorded (then ``images`` is None and no model runs; it must hold what the
    methods need). ``params`` are the methods' keyword parameters (``layer=-1``,
    ``discard_ratio=0.9``, ``target="tabby"``, ...). Several methods — a list of names, or
    (name, parameters) pairs — share one forward pass planned from the union of their needs and
    give a list of ``Attribution`` in the same order; one method gives one ``Attribution``.
    """
    chosen = _specs(method, params)
    if _is_capture(subject):
        if images is not None:
            raise ValueError("attribute(capture, ...) draws what the capture recorded; pass no images")
        cap, ctx = subject, _context(subject, subject.layout)
        needs = _plan(ctx, chosen, None if subject.logits is None else True)
        lacking = needs.missing(cap)
        if lacking:
            raise MissingCapture(f"this capture lacks what {', '.join(i.name for i, _ in chosen)} needs: capture it "
                                 "with " + ", ".join(lacking))
        views, geometry, logits, labels = cap.images, cap.geometry, cap.logits, {}
    else:
        if images is None:
            raise ValueError("attribute(model, images, ...) needs images")
        model = subject
        pixels, views, geometry = _prepare(model, images, size)
        ctx = _context(model, model.layout(tuple(pixels.shape[-2:])))
        ctx.pixels = pixels
        needs = _plan(ctx, chosen, bool(model.labels) or None)
        cap = None
        if needs.forward:
            cap = model.capture_pixels(pixels, views=views, geometry=geometry, batch_size=batch_size,
                                       progress=progress, **needs.capture_kwargs())
        ctx.capture = cap
        logits, labels = (cap.logits if cap is not None else None), dict(model.labels)
    out = []
    for impl, p in chosen:
        result = impl.compute(ctx, p)
        out.append(Attribution(
            method=impl.name, params=p, maps=result.maps.float(), title=result.title, layout=ctx.layout,
            detail=result.detail, panels=result.panels or [(impl.name, result.maps)],  # Panels: built when read
            images=list(views),
            geometry=list(geometry), logits=result.logits if result.logits is not None else logits, labels=labels,
            targets=result.targets, marks=result.marks,
        ))
    return out[0] if _is_single(method) else out


def spec_labels(specs: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """A file-name label per method instance: its name, plus the parameters that tell apart several
    instances of one method (``cls_layer5``, ``cls_layer11``)."""
    labels = []
    for name, params in specs:
        twins = [p for n, p in specs if n == name]
        differing = sorted({k for p in twins for k in p if any(q.get(k) != p.get(k) for q in twins)})
        suffix = "".join(f"_{k.replace('_', '')}{_token(params.get(k))}" for k in differing)
        labels.append(name + suffix)
    return labels


def _token(value: Any) -> str:
    if isinstance(value, tuple):
        return "-".join(str(v) for v in value)
    return str(value).replace(" ", "-").replace("/", "-")
