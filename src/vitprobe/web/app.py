"""The local web demo: upload or pick a photo, choose model, method and its parameters, click a patch.

``DemoBackend`` holds everything that is not the page (allow-listed models, stored uploads,
cached captures, rendering, downloads) and can be used without gradio. ``build_demo`` lays out
the page and wires its events to ``DemoHandlers``, whose methods take and return plain values,
turn every failure into one line in the status box, and never show a traceback.

The method list and each method's controls come from the registry (``vp.methods()``): every
parameter of every method is one control, shown while the chosen method takes it. Only the
public ``vitprobe`` API is used.

Uploads are decoded with ``vp.load_image`` (size, pixel-count and format checks) and stored as
PNG under a generated name; gradio's own temporary copy is deleted at once. Models are loaded
only from the allow-list, through ``vp.load`` (which never enables ``trust_remote_code``).
"""

import contextlib
import io
import logging
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

import vitprobe as vp

log = logging.getLogger(__name__)

DEFAULT_METHOD = "cls"
COLORMAPS = ("inferno", "viridis", "magma", "plasma", "turbo", "jet", "gray")
DISPLAY_MAX = 768
"""Longest side, in pixels, of the overlay shown on the page."""
MAX_UPLOAD_BYTES = 20 << 20
MAX_PIXELS = 40_000_000
KEPT_FILES = 50
"""Stored uploads and download folders kept; older ones are deleted."""
CACHED_CAPTURES = 6
WAIT_S = 20.0
"""How long a request waits for the model before it is answered "busy"."""
QUEUE_SIZE = 32
"""Requests gradio holds at once; more are refused at once ("queue is full")."""
WORKERS = 4
"""Requests let in to wait for the model at the same time."""
SESSION_TTL_S = 3600.0
"""A session's state (and its stored upload) is dropped this long after it began, at the latest."""
BUSY = "**Busy:** other images are being drawn; try again in a moment."
QUERY_COLOUR = (0, 200, 255)
INSTALL_HINT = "the web demo needs gradio: pip install 'vitprobe[web]'"
"""``vitprobe.extras.missing_message``'s line, written out: the demo imports nothing but the public API."""


class DemoError(ValueError):
    """Something the user can fix; ``str()`` is the one line shown on the page."""


def method_params() -> dict[str, vp.Param]:
    """Every parameter of every registered method, by name (one control each), in registry order."""
    out: dict[str, vp.Param] = {}
    for info in vp.methods():
        for param in info.params:
            out.setdefault(param.name, param)
    return out


@dataclass(frozen=True)
class View:
    """What to draw: ``method`` (a registered name) with ``params`` (its keyword parameters), drawn in
    ``style``, with the ``keypoints`` (components above Otsu's threshold) marked when asked."""

    method: str = DEFAULT_METHOD
    params: dict[str, Any] = field(default_factory=dict)
    style: vp.Style = vp.Style()
    keypoints: bool = False


@dataclass
class Rendered:
    """One rendering: the ``overlay`` shown (longest side at most ``DISPLAY_MAX``), the ``figure`` (the
    method's panels), the ``heat`` map (H, W) drawn, the arrays offered for download, a one-line
    ``caption`` and the ``grid_hw`` (H, W) of the patch grid."""

    overlay: Image.Image
    figure: Figure
    heat: torch.Tensor
    arrays: dict[str, np.ndarray]
    caption: str
    grid_hw: tuple[int, int]


@dataclass
class DemoBackend:
    """Models from an allow-list, uploads under generated names, captures cached per image.

    ``models``: the specs the page may load (the first is the default). ``work_dir``: where
    uploads and downloads go (default: a new temporary folder). Captures run one at a time (a
    capture hooks the shared model), so concurrent sessions queue instead of mixing maps.
    """

    models: Sequence[str] = ("offline",)
    work_dir: Path | None = None
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_pixels: int = MAX_PIXELS
    loader: Callable[[str], vp.VitModel] = vp.load
    _loaded: dict[str, vp.VitModel] = field(default_factory=dict)
    _captures: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        if not self.models:
            raise ValueError("the demo needs at least one model spec")
        self.work_dir = Path(self.work_dir or tempfile.mkdtemp(prefix="vitprobe-web-"))
        for sub in ("uploads", "downloads", "samples"):
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)

    def model(self, spec: str) -> vp.VitModel:
        """The loaded model of an allow-listed spec (loaded once)."""
        if spec not in self.models:
            raise DemoError(f"model {spec!r} is not offered by this demo")
        with self._lock:
            if spec not in self._loaded:
                try:
                    self._loaded[spec] = self.loader(spec)
                except (ValueError, RuntimeError, OSError, ImportError) as err:
                    raise DemoError(f"cannot load model {spec!r}: {_first_line(err)}") from None
            return self._loaded[spec]

    def store_upload(self, path: str | Path) -> str:
        """Check and decode an uploaded file, store it as PNG under a generated name; return its key."""
        path = Path(path)
        size = path.stat().st_size
        if size > self.max_upload_bytes:
            limit = self.max_upload_bytes / 2**20
            raise DemoError(f"the upload is {size / 2**20:.3g} MiB; the limit is {limit:.3g} MiB")
        try:
            image = vp.load_image(path, max_pixels=self.max_pixels)
        except vp.ImageLoadError as err:
            raise DemoError(f"the upload cannot be used: {err.reason}") from None
        key = f"upload:{uuid.uuid4().hex}"
        image.save(self._upload_path(key), format="PNG", compress_level=1)
        _prune(self.work_dir / "uploads", KEPT_FILES)
        return key

    def sample_key(self, name: str) -> str:
        """The key of a sample photo (written once from scikit-image)."""
        if name not in vp.SAMPLE_NAMES:
            raise DemoError(f"unknown sample {name!r}")
        try:
            vp.write_samples(self.work_dir / "samples", [name])
        except RuntimeError as err:
            raise DemoError(str(err)) from None
        return f"sample:{name}"

    def image(self, key: str) -> Image.Image:
        """The stored image of a key from ``store_upload`` or ``sample_key``."""
        kind, _, name = key.partition(":")
        if kind == "sample" and name in vp.SAMPLE_NAMES:
            path = self.work_dir / "samples" / f"{name}.png"
        elif kind == "upload" and name.isalnum():
            path = self._upload_path(key)
        else:
            raise DemoError("no image: upload one or pick a sample")
        if not path.is_file():
            raise DemoError("this image is no longer stored; upload it again")
        return vp.load_image(path)

    def discard(self, key: str | None) -> None:
        """Remove a stored upload (and its cached captures); sample photos and unknown keys are left alone."""
        if not key or not key.startswith("upload:") or not key.partition(":")[2].isalnum():
            return
        with self._lock:
            for cached in [k for k in self._captures if k[1] == key]:
                del self._captures[cached]
        self._upload_path(key).unlink(missing_ok=True)

    def _upload_path(self, key: str) -> Path:
        return self.work_dir / "uploads" / f"{key.partition(':')[2]}.png"

    def attribution(self, spec: str, key: str, method: str, params: dict[str, Any]) -> vp.Attribution:
        """``method``'s maps of image ``key``; drawn from a cached capture when one holds what the method
        needs (a new capture also records every layer's CLS rows, so other layers need no forward)."""
        model = self.model(spec)
        with self._lock:
            if {"gradients", "model"} & set(vp.get_method(method).requires):
                return vp.attribute(model, self.image(key), method=method, **params)
            for cache_key in reversed(self._captures):
                if cache_key[:2] == (spec, key):
                    try:
                        result = vp.attribute(self._captures[cache_key], method=method, **params)
                    except vp.MissingCapture:
                        continue
                    self._captures.move_to_end(cache_key)
                    return result
            wanted: list = [(method, params)] + (["layers"] if "cls" in model.prefix_names else [])
            cap = vp.capture_for(model, self.image(key), method=wanted)
            self._captures[(spec, key, uuid.uuid4().hex)] = cap
            while len(self._captures) > CACHED_CAPTURES:
                self._captures.popitem(last=False)
            return vp.attribute(cap, method=method, **params)

    def render(self, spec: str, key: str, view: View) -> Rendered:
        """Draw ``view`` of image ``key`` with model ``spec``."""
        if view.method not in vp.method_names():
            raise DemoError(f"unknown method {view.method!r}")
        model = self.model(spec)
        result = self.attribution(spec, key, view.method, view.params)
        heat = result.maps[0]
        grid_hw = result.layout.grid_hw
        shown = _thumbnail(result.images[0])
        overlay = vp.render.overlay(shown, heat, view.style)
        if view.keypoints:
            overlay = _mark_keypoints(overlay, heat)
        for row, col in result.marks[0] if result.marks else []:
            overlay = vp.render.annotate(overlay, boxes=[_patch_box(round(row), round(col), grid_hw, overlay.size)],
                                         colour=QUERY_COLOUR)
        figure = vp.render.attribution_figure(result, 0, view.style)
        caption = (f"{model.name}, {grid_hw[0]}×{grid_hw[1]} patches of {model.patch_size} px: {result.title}; "
                   f"values {float(heat.min()):.3g} to {float(heat.max()):.3g}")
        if view.style.clip < 100.0:
            caption += f", colours saturate above the {view.style.clip:g}th percentile"
        arrays = {"map": heat.numpy()} | {name: value[0].float().numpy() for name, value in result.detail.items()}
        return Rendered(overlay, figure, heat, arrays, caption, grid_hw)

    def downloads(self, rendered: Rendered) -> list[Path]:
        """Write ``maps.npz`` and ``figure.png`` of a rendering into a new folder; return both paths."""
        folder = self.work_dir / "downloads" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        np.savez_compressed(folder / "maps.npz", **rendered.arrays)
        figure = vp.render.save_figure(rendered.figure, folder / "figure.png")
        _prune(self.work_dir / "downloads", KEPT_FILES)
        return [folder / "maps.npz", figure]


def _thumbnail(image: Image.Image) -> Image.Image:
    scale = DISPLAY_MAX / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.LANCZOS)


def _patch_box(row: float, col: float, grid_hw: tuple[int, int], size_wh: tuple[int, int],
               last: tuple[float, float] | None = None) -> tuple[float, float, float, float]:
    """Pixel edges (x0, y0, x1, y1) of patches (row, col) .. ``last`` (inclusive) on an image of ``size_wh``."""
    sy, sx = size_wh[1] / grid_hw[0], size_wh[0] / grid_hw[1]
    row1, col1 = last or (row, col)
    return col * sx, row * sy, (col1 + 1) * sx, (row1 + 1) * sy


def _mark_keypoints(overlay: Image.Image, heat: torch.Tensor) -> Image.Image:
    """Keypoints (connected components above Otsu's threshold, best 5) and their boxes on the overlay."""
    grid_hw = tuple(heat.shape)
    found = vp.find_keypoints(heat[None], "components", vp.Threshold("otsu"), top_k=5).keypoints[0]
    sy, sx = overlay.height / grid_hw[0], overlay.width / grid_hw[1]
    points = [((k.col + 0.5) * sx, (k.row + 0.5) * sy) for k in found]
    boxes = [_patch_box(k.box[0], k.box[1], grid_hw, overlay.size, (k.box[2], k.box[3])) for k in found]
    return vp.render.annotate(overlay, points=points, boxes=boxes, labels=[str(i + 1) for i in range(len(found))])


def click_to_patch(xy: Sequence[float], size_wh: tuple[int, int], grid_hw: tuple[int, int]) -> tuple[int, int]:
    """A click at pixel (x, y) of an image of ``size_wh`` -> the (row, col) of the patch under it."""
    x, y = float(xy[0]), float(xy[1])
    row = min(max(int(y / size_wh[1] * grid_hw[0]), 0), grid_hw[0] - 1)
    col = min(max(int(x / size_wh[0] * grid_hw[1]), 0), grid_hw[1] - 1)
    return row, col


def figure_image(fig: Figure, dpi: int = 90) -> Image.Image:
    """A matplotlib figure as an RGB image."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest entries of ``folder``."""
    entries = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        if old.is_dir():
            for child in old.iterdir():
                child.unlink(missing_ok=True)
            old.rmdir()
        else:
            old.unlink(missing_ok=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


STYLE_CONTROLS = ("alpha", "cmap", "clip", "keypoints")
NO_IMAGE = "Upload an image or pick a sample photo."


def control_names() -> tuple[str, ...]:
    """Order of the control values every drawing handler receives after the state: the model, the
    method, one control per method parameter (registry order), then the style controls."""
    return ("model", "method", *method_params(), *STYLE_CONTROLS)


def head_choices(num_heads: int) -> list[str]:
    """The head control's values: "fused" (the heads fused by the head-fusion control) or one head."""
    return ["fused", *(str(i) for i in range(num_heads))]


def new_state() -> dict:
    """Per-session state: the image key and the last drawn (width, height) of the overlay with the
    grid (H, W) it showed."""
    return {"image": None, "shown": None}


def layer_controls() -> tuple[str, ...]:
    """The parameters drawn as layer sliders (fitted to each model's depth)."""
    return tuple(name for name, param in method_params().items() if param.kind == "layer")


def varying_defaults() -> frozenset[str]:
    """Parameters whose default differs between methods: set to the chosen method's default when it is chosen."""
    defaults: dict[str, set] = {}
    for info in vp.methods():
        for param in info.params:
            defaults.setdefault(param.name, set()).add(param.default)
    return frozenset(name for name, seen in defaults.items() if len(seen) > 1)


def control_value(param: vp.Param, model: vp.VitModel) -> Any:
    """The control's value for the parameter's default: a layer index counted from the first layer."""
    if param.kind == "layer":
        return param.default % model.num_layers
    return param.default


def _takes(method: str, param: str) -> bool:
    """Whether the registered ``method`` has the parameter ``param`` (False for an unknown method)."""
    return method in vp.method_names() and param in {p.name for p in vp.get_method(method).params}


def params_of(method: str, values: dict[str, Any]) -> dict[str, Any]:
    """The chosen method's parameters from the control values (text and numbers as the page gives them)."""
    out = {}
    for param in vp.get_method(method).params:
        value = values.get(param.name)
        if param.kind == "target" and str(value or "").strip().startswith("image:"):
            raise DemoError("the demo does not read files on the server: give a class, 'self' or a text prompt")
        if param.default is None and param.kind in ("int", "float") and str(value or "").strip() == "":
            out[param.name] = None  # an optional number left empty (e.g. a video query's frame)
            continue
        out[param.name] = param.parse("" if value is None else str(int(value) if param.kind == "layer" else value))
    return out


class DemoHandlers:
    """The functions the page's events call. Each takes the session state and the control values
    (in ``control_names()`` order) and returns new output values; a failure becomes one line in the
    status box and leaves the other outputs as they were (``gr.update()``)."""

    def __init__(self, backend: DemoBackend, wait_s: float = WAIT_S) -> None:
        self.backend = backend
        self.controls = control_names()
        self.wait_s = wait_s
        self._gate = threading.BoundedSemaphore(1)  # one drawing at a time; the others wait, then hear "busy"
        self._copies: dict[Path, int] = {}  # gradio's upload file -> requests that still need it
        self._expiring: dict[Path, threading.Timer] = {}  # unused copies and the timers that remove them
        self._copies_lock = threading.Lock()
        # gradio names its upload copies by their content, so a client uploading the same photo may still wait in
        # the queue for one: a copy goes once no request has used it for longer than the queue can hold one
        self.copy_ttl_s = max(60.0, 2 * QUEUE_SIZE / WORKERS * wait_s)
        self._gr = import_gradio()

    def _attempt(self, action: Callable[[], Any]) -> tuple[Any, str | None]:
        """``_attempt`` once this request has the model (waiting at most ``wait_s``), else the busy line."""
        if not self._gate.acquire(timeout=self.wait_s):
            return None, BUSY
        try:
            return _attempt(action)
        finally:
            self._gate.release()

    def forget(self, state: dict) -> None:
        """The end of a session: remove the upload it stored (gradio calls this when it drops the state)."""
        self.backend.discard(state.get("image") if isinstance(state, dict) else None)

    def upload(self, path: str | None, state: dict, *controls) -> tuple:
        """A file from the upload button: store it under a generated name, delete gradio's copy, draw."""
        if not path:
            return self._unchanged(state, NO_IMAGE)
        copy = Path(path).resolve()
        self._use_copy(copy)
        try:
            key, failure = self._attempt(lambda: self.backend.store_upload(path))
        finally:
            self._release_copy(copy)
        if failure:
            return self._unchanged(state, failure)
        self.backend.discard(state.get("image"))  # a session keeps one upload: the one it shows
        return self.redraw({**new_state(), "image": key}, *controls)

    def sample(self, name: str | None, state: dict, *controls) -> tuple:
        """A sample photo picked from the list: draw it."""
        if not name:
            return self._unchanged(state, NO_IMAGE)
        key, failure = self._attempt(lambda: self.backend.sample_key(name))
        if failure:
            return self._unchanged(state, failure)
        self.backend.discard(state.get("image"))
        return self.redraw({**new_state(), "image": key}, *controls)

    def redraw(self, state: dict, *controls) -> tuple:
        """Draw the current image with the current controls: (state, overlay, figure, status, files);
        the downloads of the previous view are hidden."""
        if not state.get("image"):
            return self._unchanged(state, NO_IMAGE)

        def draw() -> tuple[Rendered, Image.Image]:
            spec, view = self._view(controls)
            rendered = self.backend.render(spec, state["image"], view)
            return rendered, figure_image(rendered.figure)

        drawn, failure = self._attempt(draw)
        if failure:
            return self._unchanged(state, failure)
        rendered, figure = drawn
        shown = [*rendered.overlay.size, *rendered.grid_hw]
        stale = self._gr.update(value=None, visible=False)  # downloads of an earlier view
        return {**state, "shown": shown}, rendered.overlay, figure, rendered.caption, stale

    def change_method(self, state: dict, *controls) -> tuple:
        """Another method: show the controls of its parameters only, each parameter whose default differs
        between methods set to this method's default, then redraw.

        Returns (one update per method parameter, state, overlay, figure, status, files)."""
        values = dict(zip(self.controls, controls, strict=True))
        model, failure = self._attempt(lambda: self.backend.model(values["model"]))
        if failure:
            return (*self._param_updates(controls), *self._unchanged(state, failure))
        defaults = {param.name: control_value(param, model) for param in vp.get_method(values["method"]).params
                    if param.name in varying_defaults()}
        values.update(defaults)
        controls = tuple(values.values())
        return (*self._param_updates(controls, **defaults), *self.redraw(state, *controls))

    def click(self, xy: Sequence[float], state: dict, *controls) -> tuple:
        """A click on the overlay at pixel (x, y): that patch's attention. The method stays when it takes a
        patch; otherwise the first method that does (``query``) is chosen.

        Returns (method, one update per method parameter, state, overlay, figure, status, files)."""
        if not state.get("shown"):
            return (self._gr.update(), *(self._gr.update() for _ in method_params()),
                    *self._unchanged(state, NO_IMAGE))
        width, height, grid_h, grid_w = state["shown"]
        row, col = click_to_patch(xy, (width, height), (grid_h, grid_w))
        values = dict(zip(self.controls, controls, strict=True))
        if not _takes(values["method"], "patch"):
            values["method"] = next(n for n in vp.method_names() if _takes(n, "patch"))
        clicked = {"patch": f"{row},{col}", **({"query_xy": ""} if "query_xy" in values else {})}  # the click wins
        values.update(clicked)
        controls = tuple(values.values())
        return (values["method"], *self._param_updates(controls, **clicked), *self.redraw(state, *controls))

    def _param_updates(self, controls: Sequence, **values: Any) -> list:
        """One update per method parameter: visible when the chosen method takes it, with ``values`` set."""
        method = dict(zip(self.controls, controls, strict=True))["method"]
        return [self._gr.update(visible=_takes(method, name), **({"value": values[name]} if name in values else {}))
                for name in method_params()]

    def change_model(self, state: dict, *controls) -> tuple:
        """Another model: fit the layer sliders and the head list to it, then redraw.

        Returns (one update per layer slider (``layer_controls()``), head dropdown, state, overlay, figure,
        status, files)."""
        update = self._gr.update
        values = dict(zip(self.controls, controls, strict=True))
        model, failure = self._attempt(lambda: self.backend.model(values["model"]))
        if failure:
            return (*(update() for _ in layer_controls()), update(), *self._unchanged(state, failure))
        last = model.num_layers - 1
        for name in layer_controls():
            values[name] = min(int(values[name]), last)
        choices = head_choices(model.num_heads)
        if values["head"] not in choices:
            values["head"] = "fused"
        return (*(update(maximum=last, value=values[name]) for name in layer_controls()),
                update(choices=choices, value=values["head"]), *self.redraw(state, *values.values()))

    def download(self, state: dict, *controls) -> tuple:
        """Write maps.npz and figure.png of the current view and show them: (files, status)."""
        if not state.get("image"):
            return self._gr.update(), NO_IMAGE

        def prepare() -> list[Path]:
            spec, view = self._view(controls)
            return self.backend.downloads(self.backend.render(spec, state["image"], view))

        files, failure = self._attempt(prepare)
        if failure:
            return self._gr.update(), failure
        return self._gr.update(value=[str(p) for p in files], visible=True), "maps.npz and figure.png are ready below."

    def _view(self, controls: Sequence) -> tuple[str, View]:
        values = dict(zip(self.controls, controls, strict=True))
        if values["method"] not in vp.method_names():
            raise DemoError(f"unknown method {values['method']!r}")
        style = vp.Style(cmap=values["cmap"], alpha=float(values["alpha"]), clip=float(values["clip"]))
        view = View(values["method"], params_of(values["method"], values), style, bool(values["keypoints"]))
        return values["model"], view

    def _unchanged(self, state: dict, status: str) -> tuple:
        update = self._gr.update
        return state, update(), update(), status, update()

    def _use_copy(self, copy: Path) -> None:
        """One more request needs gradio's upload ``copy`` (two sessions may share one): keep it."""
        with self._copies_lock:
            self._copies[copy] = self._copies.get(copy, 0) + 1
            timer = self._expiring.pop(copy, None)
        if timer is not None:
            timer.cancel()

    def _release_copy(self, copy: Path) -> None:
        """A request is done with ``copy``: the last one starts its removal timer (``copy_ttl_s``); gradio removes
        whatever is left when the server stops."""
        with self._copies_lock:
            self._copies[copy] -= 1
            if self._copies[copy]:
                return
            del self._copies[copy]
            timer = threading.Timer(self.copy_ttl_s, self._expire_copy, (copy,))
            timer.daemon = True
            self._expiring[copy] = timer
        timer.start()

    def _expire_copy(self, copy: Path) -> None:
        with self._copies_lock:
            if self._expiring.get(copy) is not threading.current_thread():
                return  # in use again, or a later timer has it
            del self._expiring[copy]
            self._delete_gradio_copy(copy)

    def _delete_gradio_copy(self, target: Path) -> None:
        """Remove the file gradio stored under the client's file name (only inside gradio's upload folder)."""
        folder = Path(self._gr.utils.get_upload_folder()).resolve()
        if folder in target.parents:
            target.unlink(missing_ok=True)
            if target.parent != folder and not any(target.parent.iterdir()):
                with contextlib.suppress(OSError):  # gradio may be storing another upload there right now
                    target.parent.rmdir()


def _attempt(action: Callable[[], Any]) -> tuple[Any, str | None]:
    """(result, None), or (None, the one status line) when ``action`` fails.

    ``ValueError`` (``DemoError``, ``ImageLoadError`` and the library's own checks) carries a
    message meant for the user; anything else is a bug: the log gets the traceback, the page
    only its type.
    """
    try:
        return action(), None
    except ValueError as err:
        return None, f"**Error:** {_first_line(err)}"
    except Exception as err:
        log.exception("the demo failed")
        return None, f"**Error:** internal error ({type(err).__name__}); see the server log"


def import_gradio():
    """Import gradio with its telemetry off; a missing gradio raises ``ImportError`` with the install hint."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return gradio


def _param_control(gr, param: vp.Param, model: vp.VitModel, visible: bool):
    """The control of one method parameter, named by its option."""
    label = f"{param.option.removeprefix('--')}: {param.doc}"
    common = {"label": label, "elem_id": f"param-{param.name}", "visible": visible}
    if param.kind == "layer":
        return gr.Slider(0, model.num_layers - 1, value=control_value(param, model), step=1, **common)
    if param.kind == "head":
        return gr.Dropdown(head_choices(model.num_heads), value="fused", **common)
    if param.kind == "choice":
        return gr.Radio(list(param.choices), value=param.default, **common)
    if param.kind == "float" and param.low is not None and param.high is not None:
        step = (param.high - param.low) / 20
        top = param.high - step if param.high_open else param.high
        return gr.Slider(param.low, top, value=param.default, step=step, **common)
    if param.kind in ("int", "float") and param.default is not None:
        return gr.Number(value=param.default, **common)
    hint = {"patch": "row,col (empty: the grid centre; click the overlay)", "point": "x,y in pixels of the photo",
            "target": "index, label, self, or a text prompt for CLIP-like models (empty: top class, or self)"}
    return gr.Textbox(value="" if param.default is None else str(param.default),
                      placeholder=hint.get(param.kind, ""), **common)


def build_demo(
    models: Sequence[str] = ("offline",),
    *,
    work_dir: Path | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    samples: bool = True,
    device: str | None = None,
    wait_s: float = WAIT_S,
):
    """The demo page as a ``gradio.Blocks`` (call ``.launch()`` on it).

    ``models`` is the allow-list of model specs offered (the first is loaded at once, on
    ``device``, and is the default); ``samples`` offers scikit-image's photos when scikit-image is
    installed. Under load: gradio holds at most ``QUEUE_SIZE`` requests (more are refused at once),
    lets ``WORKERS`` of them wait for the model, and one draws at a time; a request that waited
    ``wait_s`` seconds gets the one line ``BUSY``. A session keeps one stored upload, removed when
    the session ends. Raises ``DemoError`` when the first model cannot be loaded.
    """
    gr = import_gradio()
    backend = DemoBackend(models, work_dir, max_upload_bytes, max_pixels, partial(vp.load, device=device))
    handlers = DemoHandlers(backend, wait_s)
    first = backend.model(backend.models[0])
    sample_names = list(vp.SAMPLE_NAMES) if samples and _has_skimage() else []
    taken = {p.name for p in vp.get_method(DEFAULT_METHOD).params}
    with gr.Blocks(title="vitprobe", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown("## vitprobe: what does the Vision Transformer attend to?\n"
                    "Upload an image or pick a sample, then choose what to draw. Click the overlay to see the "
                    "attention of the patch under the pointer.")
        def forget(state: dict) -> None:  # a function, not the bound method: gradio deep-copies a session's
            handlers.forget(state)        # State, and a method would drag the handlers (and the model) along

        state = gr.State(new_state(), time_to_live=SESSION_TTL_S, delete_callback=forget)
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                upload = gr.UploadButton("Upload image", file_types=["image"], type="filepath",
                                         elem_id="upload")
                sample = gr.Dropdown(sample_names, value=None, label="Sample photo", elem_id="sample",
                                     visible=bool(sample_names))
                model = gr.Dropdown(list(backend.models), value=backend.models[0], label="Model", elem_id="model")
                method = gr.Radio(vp.method_names(), value=DEFAULT_METHOD, label="Method", elem_id="method",
                                  info="; ".join(f"{i.name}: {i.summary}" for i in vp.methods()))
                params = {name: _param_control(gr, p, first, name in taken) for name, p in method_params().items()}
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Opacity", elem_id="alpha")
                cmap = gr.Dropdown(list(COLORMAPS), value=COLORMAPS[0], label="Colormap", elem_id="cmap")
                clip = gr.Slider(90.0, 100.0, value=vp.render.DEFAULT_CLIP, step=0.5, elem_id="clip",
                                 label="Colour scale top (percentile of the map; 100 = its max)")
                marks = gr.Checkbox(False, label="Keypoints and boxes", elem_id="keypoints")
            with gr.Column(scale=2):
                overlay = gr.Image(label="Overlay (click a patch)", type="pil", format="png", interactive=False,
                                   buttons=["download", "fullscreen"], elem_id="overlay")
                status = gr.Markdown(NO_IMAGE, elem_id="status")
                figure = gr.Image(label="The method's panels", type="pil", format="png", interactive=False,
                                  buttons=["download", "fullscreen"], elem_id="figure")
                download = gr.Button("Prepare downloads (maps.npz, figure.png)", elem_id="download")
                files = gr.File(label="Downloads", file_count="multiple", interactive=False, visible=False,
                                elem_id="files")
        controls = [model, method, *params.values(), alpha, cmap, clip, marks]
        drawn = [state, overlay, figure, status, files]
        upload.upload(handlers.upload, [upload, state, *controls], drawn)
        sample.input(handlers.sample, [sample, state, *controls], drawn)
        method.input(handlers.change_method, [state, *controls], [*params.values(), *drawn])
        for control in (*params.values(), alpha, cmap, clip, marks):
            control.input(handlers.redraw, [state, *controls], drawn)
        model.input(handlers.change_model, [state, *controls],
                    [*(params[name] for name in layer_controls()), params["head"], *drawn])
        download.click(handlers.download, [state, *controls], [files, status])

        def on_click(evt: gr.SelectData, state: dict, *controls) -> tuple:
            return handlers.click(evt.index, state, *controls)

        overlay.select(on_click, [state, *controls], [method, *params.values(), *drawn])
    return demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=WORKERS)


def _has_skimage() -> bool:
    from importlib.util import find_spec

    return find_spec("skimage") is not None
