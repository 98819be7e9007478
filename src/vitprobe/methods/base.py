"""What a method is: its parameters, what it needs from the forward pass, and what it returns.

A method is one class in one file of ``vitprobe/methods/``, decorated with ``register_method``:

- ``name`` (the one short name used in Python, the CLI, the web demo and the docs), ``summary``
  (one line), ``params`` (``Param``s: typed keyword arguments with defaults and one-line docs,
  the same ``Param`` object wherever two methods share a parameter) and ``requires`` (what the
  model must have: ``"cls"``, ``"classifier"``; ``"gradients"`` when it runs a backward pass,
  ``"model"`` when it runs the model itself without one, so no capture can stand in for it);
- ``needs(subject, params)`` says what one forward pass must record (``Needs``);
- ``compute(ctx, params)`` turns what was recorded into a ``Result``: maps (B, H, W) on the
  patch grid, named detail tensors, the labelled panels a figure shows, and a title.

Every front end lists, plans and draws methods from the registry only, so a new file here
appears in ``vp.methods()``, ``vitprobe methods``, ``explain``, ``keypoints``, ``evaluate``,
``video`` and the web demo without an edit elsewhere.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..layout import NO_CLS_MESSAGE, TokenLayout

if TYPE_CHECKING:  # the registry itself imports no torch: listing methods and parsing options stay fast
    import torch
    from PIL import Image

    from ..capture import Capture
    from ..io.preprocess import Geometry
    from ..models.base import VitModel
    from ..targets import GradientPass, Gradients

PARAM_KINDS = ("int", "float", "choice", "layer", "head", "patch", "point", "target")


class MissingCapture(ValueError):
    """A capture lacks what a method needs (capture again with the options the message names)."""


class MissingExtra(ImportError, ValueError):
    """A method's optional library is not installed; the message is the one-line install hint. A
    ``ValueError`` too, so every front end reports it as the other refusals of a method."""


def import_extra(module: str, extra: str, what: str) -> Any:
    """Import ``module`` of the ``extra`` (``pip install 'vitprobe[extra]'``), or raise ``MissingExtra``."""
    from ..extras import require_extra

    return require_extra(module, extra, what, MissingExtra)


@dataclass(frozen=True)
class Param:
    """One method parameter: ``name`` (Python keyword; the CLI option is ``--name-with-dashes``),
    ``default``, one-line ``doc`` and ``kind``:

    - ``"layer"``: a layer index, negative counting back from the last layer;
    - ``"head"``: one head index, or None (heads fused);
    - ``"patch"``: a patch (row, col) on the grid, or None (the grid centre);
    - ``"point"``: a position (x, y) in pixels of the original image, or None;
    - ``"target"``: what a gradient method explains: a class index or label, or None (top class);
    - ``"choice"``: one of ``choices``; ``"int"`` / ``"float"``: a number in [``low``, ``high``]
      (``high`` excluded when ``high_open``).
    """

    name: str
    default: Any
    doc: str
    kind: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    high_open: bool = False

    def __post_init__(self) -> None:
        if self.kind not in PARAM_KINDS:
            raise ValueError(f"parameter {self.name!r}: unknown kind {self.kind!r}; use one of {PARAM_KINDS}")

    @property
    def option(self) -> str:
        """The command-line option: ``--discard-ratio`` for ``discard_ratio``."""
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """What values it takes, for listings: ``mean|max|min``, ``[0, 1)``, ``ROW,COL``, ..."""
        if self.kind == "choice":
            return "|".join(self.choices)
        if self.kind in ("int", "float") and (self.low is not None or self.high is not None):
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            return f"[{low}, {high}{')' if self.high_open else ']'}"
        return {"layer": "INT (negative: from the end)", "head": "INT or none (heads fused)",
                "patch": "ROW,COL or STEP,ROW,COL (default: grid centre)",
                "point": "X,Y (pixels of the original image)",
                "target": "INDEX, LABEL, self, image:PATH or text:PROMPT",
                "int": "INT", "float": "FLOAT"}[self.kind]

    def parse(self, text: str) -> Any:
        """A value from command-line or form text; raises ``ValueError`` naming the option."""
        text = str(text).strip()
        try:
            if self.kind == "int" and self.default is None and text.lower() in ("", "none"):
                return None
            if self.kind in ("layer", "int"):
                return self.check(int(text))
            if self.kind == "float":
                return self.check(float(text))
            if self.kind == "head":
                return self.check(None if text.lower() in ("", "none", "fused") else int(text))
            if self.kind == "patch":
                if text.lower() in ("", "none", "centre", "center"):
                    return None
                return self.check(tuple(int(v) for v in text.split(",")))
            if self.kind == "point":
                if text.lower() in ("", "none"):
                    return None
                x, y = (float(v) for v in text.split(","))
                return self.check((x, y))
            if self.kind == "target":
                if text.lower() in ("", "none", "top"):
                    return None
                return self.check(int(text) if text.isdigit() else text)
            return self.check(text)
        except ValueError as err:
            if str(err).startswith(self.option):
                raise
            raise ValueError(f"{self.option} takes {self.describe()}, got {text!r}") from None

    def check(self, value: Any) -> Any:
        """``value`` if it is valid for this parameter, else ``ValueError`` (one line naming the option)."""
        bad = ValueError(f"{self.option} takes {self.describe()}, got {value!r}")
        if self.kind == "choice":
            if value not in self.choices:
                raise bad
            return value
        if value is None and self.default is None and self.kind in ("int", "float"):
            return None  # an optional number left out
        if self.kind in ("layer", "int"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise bad
            value = float(value)
        elif self.kind == "head":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise bad
            return value
        elif self.kind == "patch":
            if value is None:
                return None
            if not (isinstance(value, Sequence) and len(value) in (2, 3) and all(isinstance(v, int) for v in value)):
                raise bad
            return tuple(int(v) for v in value)
        elif self.kind == "point":
            if value is None:
                return None
            if not (isinstance(value, Sequence) and len(value) == 2
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)):
                raise bad
            return (float(value[0]), float(value[1]))
        elif self.kind == "target":
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, str))):
                raise bad
            if isinstance(value, str) and value.startswith("image:") and not Path(value[6:]).is_file():
                raise ValueError(f"{self.option} {value}: no such file")
            return value
        if self.kind in ("int", "float"):
            too_low = self.low is not None and value < self.low
            too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
            if too_low or too_high:
                raise bad
        return value


@dataclass(frozen=True)
class Needs:
    """What a method needs from one forward pass (layer indices resolved, in [0, L)).

    ``cls_layers``: layers whose CLS attention rows are recorded; ``fuse``: head fusions of every
    layer's full attention (L, B, T, T), for rollout (all layers are then recorded);
    ``full_layers``: layers kept in full (B, heads, T, T); ``token_norms``: every layer's output
    token norms; ``gradients``: a second, eager pass with the attention's gradient of a target;
    ``pool``: the attention-pooling head's probe attention (models without CLS, e.g. SigLIP).
    """

    cls_layers: frozenset[int] = frozenset()
    fuse: frozenset[str] = frozenset()
    full_layers: frozenset[int] = frozenset()
    token_norms: bool = False
    gradients: bool = False
    pool: bool = False

    def __or__(self, other: Needs) -> Needs:
        return Needs(self.cls_layers | other.cls_layers, self.fuse | other.fuse, self.full_layers | other.full_layers,
                     self.token_norms or other.token_norms, self.gradients or other.gradients,
                     self.pool or other.pool)

    @property
    def forward(self) -> bool:
        """Whether the recorded forward pass is needed at all (gradient-only methods run their own)."""
        return bool(self.cls_layers or self.fuse or self.full_layers or self.token_norms or self.pool)

    def capture_kwargs(self) -> dict[str, Any]:
        """The ``VitModel.capture`` options that record exactly this."""
        layers = None if self.fuse else sorted(self.cls_layers | self.full_layers)
        return {"layers": layers, "fuse": tuple(sorted(self.fuse)), "full_layers": tuple(sorted(self.full_layers)),
                "token_norms": self.token_norms, "pool": self.pool}

    def missing(self, cap: Capture) -> list[str]:
        """What ``cap`` lacks of these needs, as ``capture(...)`` options to ask for (empty: nothing)."""
        every = set(range(cap.n_layers or max(cap.layers) + 1))
        layers = every if self.fuse else set(self.cls_layers | self.full_layers)
        out = [f"layers={sorted(layers)}"] if layers - set(cap.layers) else []
        if self.fuse - set(cap.fused):
            out.append(f"fuse={tuple(sorted(self.fuse))}")
        if self.full_layers - set(cap.full):
            out.append(f"full_layers={sorted(self.full_layers)}")
        if self.token_norms and cap.token_norms is None:
            out.append("token_norms=True")
        if self.pool and cap.pool is None:
            out.append("pool=True")
        return out


@dataclass
class Result:
    """What ``Method.compute`` returns: ``maps`` (B, H, W) on the patch grid, ``detail`` named tensors
    (shapes in the method's docstring), ``panels`` the labelled (B, H, W) maps a figure shows, and a
    ``title`` naming what the maps are. ``targets``: the class each image's map explains (gradient
    methods); ``logits`` (B, classes) of the pass that explained them; ``marks``: per image, the
    grid positions (row, col) a figure marks (e.g. the query point; fractional, patch centres at
    integers)."""

    maps: torch.Tensor
    title: str
    detail: dict[str, torch.Tensor] = field(default_factory=dict)
    panels: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    targets: list[int] | None = None
    logits: torch.Tensor | None = None
    marks: list[list[tuple[float, float]]] = field(default_factory=list)


@dataclass
class Context:
    """What ``compute`` reads: the ``capture`` of the forward pass (None when no method needed one),
    the ``layout``, the model's layer and head counts (``n_heads`` None when not known), and the
    ``model`` (None when attributing from an existing capture)."""

    layout: TokenLayout
    n_layers: int
    model_name: str
    n_heads: int | None = None
    capture: Capture | None = None
    model: VitModel | None = None
    pixels: torch.Tensor | None = None
    _passes: dict[Any, GradientPass] = field(default_factory=dict)
    _gradients: dict[Any, Gradients] = field(default_factory=dict)

    def resolve_layer(self, layer: int) -> int:
        """Model layer index of ``layer`` (negative counts back from the last layer)."""
        index = layer + self.n_layers if layer < 0 else layer
        if not 0 <= index < self.n_layers:
            raise ValueError(f"layer {layer} does not exist: {self.model_name} has {self.n_layers} layers")
        return index

    def model_and_pixels(self) -> tuple[VitModel, torch.Tensor]:
        """The model and its input pixels (B, 3, H, W), for methods that run the model themselves."""
        if self.model is None or self.pixels is None:
            raise ValueError("this method runs the model: call vp.attribute(model, images, ...), not on a capture")
        return self.model, self.pixels

    def gradient_pass(self, target: Any) -> GradientPass:
        """The eager pass with ``target``'s score (``targets.gradient_pass``), one per target, shared."""
        from ..targets import gradient_pass

        self.model_and_pixels()
        if target not in self._passes:
            self._passes[target] = gradient_pass(self.model, self.pixels, target)
        return self._passes[target]

    def gradients(self, target: Any) -> Gradients:
        """Per-layer attention and its gradient of ``target``'s score from the last layer (shared)."""
        from ..targets import attention_gradients

        if target not in self._gradients:
            self._gradients[target] = attention_gradients(self.model, self.pixels, target, self.gradient_pass(target))
        return self._gradients[target]


class Method(ABC):
    """Base of every registered method; see the module docstring."""

    name: ClassVar[str]
    summary: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    details: ClassVar[dict[str, str]] = {}
    """Detail key -> "(shape) what it holds" for every tensor compute may put in Result.detail; shapes batch
    first in B, L, heads, H, W, H_in, W_in; end with "only)" for keys present only sometimes."""
    video: ClassVar[bool] = False
    """Whether the method draws maps with a time axis (B, t, H, W) for video models; others refuse them."""
    measured_by_default: ClassVar[bool] = True
    """Whether ``faithfulness`` measures it when no methods are named: False for maps that do not explain the
    image's target (a query point, parts of the model) and for the costly ones (hundreds of forward passes per
    map, again for every randomised model of the cascade, or an extra to install)."""

    @abstractmethod
    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        """What the forward pass must record for parameters ``p`` (complete, validated)."""

    @abstractmethod
    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        """The maps of parameters ``p`` from what was recorded."""

    def check_model(self, layout: TokenLayout, has_classifier: bool | None) -> None:
        """Raise ``ValueError`` (one line) when the model lacks what the method requires
        (``has_classifier`` None: unknown, as for a capture without logits)."""
        if layout.has_time and not self.video:
            raise ValueError(f"method {self.name!r} draws image maps; video models take {', '.join(video_methods())}")
        if "cls" in self.requires and not layout.has_cls:
            raise ValueError(f"method {self.name!r}: {NO_CLS_MESSAGE}")
        if "classifier" in self.requires and has_classifier is False:
            raise ValueError(f"method {self.name!r} explains a class score, and this model has no classification "
                             "head")

    def resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        """Complete and validate keyword parameters: defaults filled in, unknown names refused."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            takes = ", ".join(known) or "no parameters"
            raise ValueError(f"method {self.name!r} has no parameter {unknown[0]!r} (it takes {takes})")
        return {name: param.check(given[name]) if name in given else param.default for name, param in known.items()}


_REGISTRY: dict[str, Method] = {}
_INFRASTRUCTURE = frozenset({"base", "params", "attribute", "artifacts", "cam", "pixel_attribution"})
_LISTED_FIRST = ("cls", "query", "layers", "rollout", "flow", "gradrollout", "chefer", "legrad", "attnlrp", "gradcam",
                 "gradcampp", "scorecam", "eigencam", "integrated_gradients", "input_x_gradient", "occlusion", "pool",
                 "positions", "filters")
"""Modules imported first, so listings read from raw attention to gradient methods; others follow by name."""
_loaded = False


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a method under ``cls.name`` (names are unique, the built-in ones included)."""
    _load_builtin()
    name = getattr(cls, "name", "")
    if not name or not name.replace("_", "").isalnum() or name != name.lower():
        raise ValueError(f"method name {name!r} must be a short lower-case word")
    if name in _REGISTRY and type(_REGISTRY[name]) is not cls:
        raise ValueError(f"a method named {name!r} is already registered ({type(_REGISTRY[name]).__qualname__})")
    _REGISTRY[name] = cls()
    return cls


def _load_builtin() -> None:
    """Import every module of this package once, so their methods register themselves."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = __name__.rsplit(".", 1)[0]
    found = {info.name for info in pkgutil.iter_modules(importlib.import_module(package).__path__)}
    order = {name: i for i, name in enumerate(_LISTED_FIRST)}
    for name in sorted(found - _INFRASTRUCTURE, key=lambda n: (order.get(n, len(order)), n)):
        importlib.import_module(f"{package}.{name}")


def get_method(name: str) -> Method:
    """The registered method called ``name``; ``ValueError`` lists the names when there is none."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; use one of {', '.join(method_names())}")
    return _REGISTRY[name]


def video_methods() -> list[str]:
    """Names of the methods that draw maps with a time axis for video models."""
    return [name for name in method_names() if _REGISTRY[name].video]


def default_faithfulness_methods() -> list[str]:
    """Names of the methods ``faithfulness`` measures when none are named (``Method.measured_by_default``)."""
    return [name for name in method_names() if _REGISTRY[name].measured_by_default]


def method_names() -> list[str]:
    """Names of every registered method: the built-in ones in ``_LISTED_FIRST`` order, then the others in
    registration order (whichever module a program imports first)."""
    _load_builtin()
    order = {name: i for i, name in enumerate(_LISTED_FIRST)}
    return sorted(_REGISTRY, key=lambda name: order.get(name, len(order)))


@dataclass(frozen=True)
class MethodInfo:
    """What ``vp.methods()`` lists for one method."""

    name: str
    summary: str
    params: tuple[Param, ...]
    requires: tuple[str, ...]
    details: dict[str, str] = field(default_factory=dict)
    measured_by_default: bool = True

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{p.name}={p.default!r}' for p in self.params)}): {self.summary}"

    def __str__(self) -> str:
        needs = f" (needs: {', '.join(self.requires)})" if self.requires else ""
        measured = "" if self.measured_by_default else " [faithfulness: only when named]"
        lines = [f"{self.name}: {self.summary}{needs}{measured}"]
        for p in self.params:
            lines.append(f"  {p.option} {p.describe()} = {p.default!r}: {p.doc}")
        for key, doc in self.details.items():
            lines.append(f"  detail {key} {doc}")
        return "\n".join(lines)


class MethodList(list):
    """The list ``methods()`` returns; it prints one line per method (name, parameters with defaults, summary)."""

    def __repr__(self) -> str:
        return "\n".join(map(repr, self))


def methods() -> MethodList:
    """Every registered method: name, one line, parameters with defaults, and what it needs."""
    return MethodList(MethodInfo(m.name, m.summary, m.params, m.requires, dict(m.details), m.measured_by_default)
                      for m in map(get_method, method_names()))


@dataclass(repr=False)
class Attribution:
    """One method's maps of a batch of images.

    - ``maps``: (B, H, W) on the patch grid (height first), float32;
    - ``method`` and ``params`` (every parameter, defaults filled in); ``title`` says what the maps are;
    - ``detail``: the method's per-layer / per-head tensors, e.g. ``"heads"`` (B, heads, H, W);
    - ``panels``: labelled (B, H, W) maps a figure shows beside the image;
    - ``images``: the part of each original image the model saw; ``geometry``: how it was mapped;
    - ``logits`` (B, classes) and ``labels`` when the model has a classification head; ``targets``:
      the class each map explains (gradient methods); ``marks``: per image, grid positions (row, col)
      a figure marks, such as the query point (fractional; patch centres at integers).
    """

    method: str
    params: dict[str, Any]
    maps: torch.Tensor
    title: str
    layout: TokenLayout
    detail: dict[str, torch.Tensor] = field(default_factory=dict)
    panels: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    geometry: list[Geometry] = field(default_factory=list)
    logits: torch.Tensor | None = None
    labels: dict[int, str] = field(default_factory=dict)
    targets: list[int] | None = None
    marks: list[list[tuple[float, float]]] = field(default_factory=list)

    def __repr__(self) -> str:
        from ..capture import shape_of

        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        detail = ", ".join(f"{k}={shape_of(v)}" for k, v in self.detail.items())
        extra = (f", detail: {detail}" if detail else "") + (f", targets={self.targets}" if self.targets else "")
        return (f"Attribution({self.method}({params}): maps={shape_of(self.maps)} on a {self.layout.grid_hw[0]}x"
                f"{self.layout.grid_hw[1]} grid, images={len(self.maps)}{extra}; {self.title!r})")

    @property
    def candidates(self) -> torch.Tensor:
        """Maps to pick the best of per object (DINO's protocol): the per-head maps (B, heads, H, W)
        where the method has them, else the maps themselves (B, 1, H, W)."""
        heads = self.detail.get("heads")
        return heads if heads is not None and heads.dim() == 4 else self.maps[:, None]

    def on_image(self, image: int = 0, mode: str = "bilinear") -> torch.Tensor:
        """Map ``image`` on the original photo's pixels (H0, W0): upsampled into the region the model
        saw; NaN where the model saw nothing (outside a centre crop). A video model's map (t, H, W) gives
        (t, H0, W0) on the clip's frames."""
        import torch

        from ..analysis.upsample import upsample_map

        if not self.geometry:
            raise ValueError("this attribution has no image geometry (built from arrays without images)")
        geo = self.geometry[image]
        top, left, height, width = geo.crop_box
        r0, c0 = round(top), round(left)
        r1, c1 = min(geo.original_hw[0], round(top + height)), min(geo.original_hw[1], round(left + width))
        maps = self.maps[image]
        out = torch.full((*maps.shape[:-2], *geo.original_hw), float("nan"))
        out[..., r0:r1, c0:c1] = upsample_map(maps, (r1 - r0, c1 - c0), mode)
        return out

    def top(self, image: int = 0, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` most probable classes of one image as (index, label, probability); [] without a head."""
        import torch

        if self.logits is None:
            return []
        probs = self.logits[image].float().softmax(-1)
        values, indices = torch.topk(probs, min(k, probs.numel()))
        return [(int(i), self.labels.get(int(i), f"class {int(i)}"), float(p))
                for p, i in zip(values, indices, strict=True)]
