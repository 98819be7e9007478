"""The local web demo: upload or pick a photo, choose model, method, layer and heads, click a patch.

``DemoBackend`` holds everything that is not the page (allow-listed models, stored uploads,
cached captures, rendering, downloads) and can be used without gradio. ``build_demo`` lays out
the page and wires its events to ``DemoHandlers``, whose methods take and return plain values,
turn every failure into one line in the status box, and never show a traceback.

Uploads are decoded with ``load_image`` (size, pixel-count and format checks) and stored as
PNG under a generated name; gradio's own temporary copy is deleted at once. Models are loaded
only from the allow-list, through ``vitprobe.load`` (which never enables ``trust_remote_code``).
"""

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

from .. import render
from ..analysis import keypoints
from ..analysis.maps import FUSIONS, aggregate_layers, fuse_heads
from ..analysis.thresholds import Threshold
from ..api import cls_attention, query_attention, rollout
from ..capture import Capture
from ..io.images import ImageLoadError, load_image
from ..io.samples import SAMPLE_NAMES, write_samples
from ..models import VitModel, load
from ..render.annotate import annotate
from ..render.colormap import DEFAULT_CLIP

log = logging.getLogger(__name__)

METHODS = ("CLS map", "Rollout", "Layer aggregation", "Query patch")
COLORMAPS = ("inferno", "viridis", "magma", "plasma", "turbo", "jet", "gray")
DISPLAY_MAX = 768
"""Longest side, in pixels, of the overlay shown on the page."""
MAX_UPLOAD_BYTES = 20 << 20
MAX_PIXELS = 40_000_000
KEPT_FILES = 50
"""Stored uploads and download folders kept; older ones are deleted."""
CACHED_CAPTURES = 6
QUERY_COLOUR = (0, 200, 255)
INSTALL_HINT = "the web demo needs gradio: pip install 'vitprobe[web]'"


class DemoError(ValueError):
    """Something the user can fix; ``str()`` is the one line shown on the page."""


@dataclass(frozen=True)
class View:
    """What to draw: ``method`` (one of ``METHODS``), ``layer`` (model index, negative from the
    end), ``heads`` ("mean" / "max" / "min" or "head N"), ``layer_fusion`` (layer aggregation),
    ``discard_ratio`` (rollout), overlay ``alpha``, ``cmap`` and ``clip`` (the percentile of each map
    drawn as the top of its colour scale), the ``query`` patch (row, col) (default: the grid centre)
    and whether to mark ``keypoints``."""

    method: str = "CLS map"
    layer: int = -1
    heads: str = "mean"
    layer_fusion: str = "mean"
    discard_ratio: float = 0.0
    alpha: float = 0.5
    cmap: str = "inferno"
    clip: float = DEFAULT_CLIP
    query: tuple[int, int] | None = None
    keypoints: bool = False


@dataclass
class Rendered:
    """One rendering: the ``overlay`` shown (longest side at most ``DISPLAY_MAX``), the ``figure``
    (per-head or per-layer grid), the ``heat`` map (H, W) drawn, the arrays offered for download,
    a one-line ``caption`` and the ``grid_hw`` (H, W) of the patch grid."""

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
    loader: Callable[[str], VitModel] = load
    _loaded: dict[str, VitModel] = field(default_factory=dict)
    _captures: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        if not self.models:
            raise ValueError("the demo needs at least one model spec")
        self.work_dir = Path(self.work_dir or tempfile.mkdtemp(prefix="vitprobe-web-"))
        for sub in ("uploads", "downloads", "samples"):
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)

    def model(self, spec: str) -> VitModel:
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
            image = load_image(path, max_pixels=self.max_pixels)
        except ImageLoadError as err:
            raise DemoError(f"the upload cannot be used: {err.reason}") from None
        key = f"upload:{uuid.uuid4().hex}"
        image.save(self._upload_path(key), format="PNG", compress_level=1)
        _prune(self.work_dir / "uploads", KEPT_FILES)
        return key

    def sample_key(self, name: str) -> str:
        """The key of a sample photo (written once from scikit-image)."""
        if name not in SAMPLE_NAMES:
            raise DemoError(f"unknown sample {name!r}")
        try:
            write_samples(self.work_dir / "samples", [name])
        except RuntimeError as err:
            raise DemoError(str(err)) from None
        return f"sample:{name}"

    def image(self, key: str) -> Image.Image:
        """The stored image of a key from ``store_upload`` or ``sample_key``."""
        kind, _, name = key.partition(":")
        if kind == "sample" and name in SAMPLE_NAMES:
            path = self.work_dir / "samples" / f"{name}.png"
        elif kind == "upload" and name.isalnum():
            path = self._upload_path(key)
        else:
            raise DemoError("no image: upload one or pick a sample")
        if not path.is_file():
            raise DemoError("this image is no longer stored; upload it again")
        return load_image(path)

    def _upload_path(self, key: str) -> Path:
        return self.work_dir / "uploads" / f"{key.partition(':')[2]}.png"

    def capture(self, spec: str, key: str, kind: tuple) -> Capture:
        """A cached capture of image ``key``: kind ("cls",) keeps the CLS rows of every layer,
        ("rollout", fusion) head-fused matrices of every layer, ("full", layer) one layer in full."""
        with self._lock:
            cache_key = (spec, key, kind)
            if cache_key in self._captures:
                self._captures.move_to_end(cache_key)
                return self._captures[cache_key]
            model, image = self.model(spec), self.image(key)
            if kind[0] == "cls":
                cap = model.capture(image, fuse=(), full_layers=())
            elif kind[0] == "rollout":
                cap = model.capture(image, fuse=(kind[1],), full_layers=())
            else:
                cap = model.capture(image, layers=[kind[1]], fuse=(), full_layers=[kind[1]])
            self._captures[cache_key] = cap
            while len(self._captures) > CACHED_CAPTURES:
                self._captures.popitem(last=False)
            return cap

    def render(self, spec: str, key: str, view: View) -> Rendered:
        """Draw ``view`` of image ``key`` with model ``spec``."""
        model = self.model(spec)
        if view.method not in METHODS:
            raise DemoError(f"unknown method {view.method!r}")
        try:
            layer = model.resolve_layers([view.layer])[0]
        except ValueError as err:
            raise DemoError(str(err)) from None
        head = _parse_heads(view.heads, model.num_heads)
        if view.layer_fusion not in FUSIONS or view.cmap not in COLORMAPS or not 0.0 < view.clip <= 100.0:
            raise DemoError(f"layer aggregation must be one of {FUSIONS}, the colormap one of {COLORMAPS} and the "
                            "colour scale top a percentile in (0, 100]")
        style = {"cmap": view.cmap, "alpha": view.alpha, "clip": view.clip}
        cls_cap = self.capture(spec, key, ("cls",))
        if cls_cap.cls is None:
            raise DemoError(f"{model.name} has no CLS token, so CLS maps and rollout are undefined")
        grid_hw = cls_cap.layout.grid_hw
        picture = cls_cap.images[0]
        per_layer_heads = cls_attention(cls_cap)[:, 0]  # (L, heads, H, W)
        describe = f"{model.name}, {grid_hw[0]}×{grid_hw[1]} patches of {model.patch_size} px: "
        query = None
        if view.method in ("CLS map", "Query patch"):
            if view.method == "CLS map":
                heads = per_layer_heads[layer]
                what = title = f"CLS attention, layer {layer}"
            else:
                query = view.query or (grid_hw[0] // 2, grid_hw[1] // 2)
                if not (0 <= query[0] < grid_hw[0] and 0 <= query[1] < grid_hw[1]):
                    raise DemoError(f"patch {query} is outside the {grid_hw[0]}×{grid_hw[1]} grid")
                heads = query_attention(self.capture(spec, key, ("full", layer)), query, layer)[0]
                what = title = f"attention of patch (row {query[0]}, col {query[1]}), layer {layer}"
            heat = heads[head] if isinstance(head, int) else fuse_heads(heads, head)
            what += f", {view.heads if isinstance(head, str) else f'head {head}'}"
            extra = {how: fuse_heads(heads, how) for how in FUSIONS}
            figure = render.head_grid(picture, heads, title=title, extra=extra, **style)
            arrays = {"map": heat, "per_head": heads}
        elif view.method == "Rollout":
            fusion = head if isinstance(head, str) else "mean"
            heat = rollout(self.capture(spec, key, ("rollout", fusion)), view.discard_ratio, fusion)[0]
            what = f"rollout, heads fused by {fusion}, discard ratio {view.discard_ratio:g}"
            if isinstance(head, int):
                what += " (rollout fuses all heads, so one head cannot be chosen)"
            per_layer = fuse_heads(per_layer_heads, "mean")
            figure = render.layer_grid(picture, per_layer, layer_ids=cls_cap.layers, extra={"rollout": heat},
                                       title="CLS attention per layer (head mean) and rollout", **style)
            arrays = {"map": heat, "per_layer_head_mean": per_layer}
        else:
            per_layer = per_layer_heads[:, head] if isinstance(head, int) else fuse_heads(per_layer_heads, head)
            heat = aggregate_layers(per_layer, view.layer_fusion)
            label = view.heads if isinstance(head, str) else f"head {head}"
            what = f"{view.layer_fusion} over layers of the CLS maps ({label})"
            figure = render.layer_grid(picture, per_layer, layer_ids=cls_cap.layers,
                                       extra={f"layer {how}": aggregate_layers(per_layer, how) for how in FUSIONS},
                                       title=f"CLS attention per layer ({label}) and aggregation", **style)
            arrays = {"map": heat, "per_layer": per_layer}
        shown = _thumbnail(picture)
        overlay = render.overlay(shown, heat, **style)
        if view.keypoints:
            overlay = _mark_keypoints(overlay, heat)
        if query is not None:
            overlay = annotate(overlay, boxes=[_patch_box(*query, grid_hw, overlay.size)], colour=QUERY_COLOUR)
        lo, hi = float(heat.min()), float(heat.max())
        caption = describe + what + f"; values {lo:.3g} to {hi:.3g}"
        if view.clip < 100.0:
            caption += f", colours saturate above the {view.clip:g}th percentile"
        out = {name: value.float().numpy() for name, value in arrays.items()}
        out["layers"] = np.asarray(cls_cap.layers)
        return Rendered(overlay, figure, heat, out, caption, grid_hw)

    def downloads(self, rendered: Rendered) -> list[Path]:
        """Write ``maps.npz`` and ``figure.png`` of a rendering into a new folder; return both paths."""
        folder = self.work_dir / "downloads" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        np.savez_compressed(folder / "maps.npz", **rendered.arrays)
        figure = render.save_figure(rendered.figure, folder / "figure.png")
        _prune(self.work_dir / "downloads", KEPT_FILES)
        return [folder / "maps.npz", figure]


def _parse_heads(text: str, num_heads: int) -> str | int:
    """"mean" / "max" / "min" stay as they are; "head N" -> N (checked against the model)."""
    if text in FUSIONS:
        return text
    name, _, number = text.partition(" ")
    if name == "head" and number.isdigit() and int(number) < num_heads:
        return int(number)
    raise DemoError(f"heads must be mean, max, min or head 0..{num_heads - 1}, got {text!r}")


def head_choices(num_heads: int) -> list[str]:
    return [*FUSIONS, *(f"head {i}" for i in range(num_heads))]


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
    found = keypoints.find(heat[None], "components", Threshold("otsu"), top_k=5).keypoints[0]
    sy, sx = overlay.height / grid_hw[0], overlay.width / grid_hw[1]
    points = [((k.col + 0.5) * sx, (k.row + 0.5) * sy) for k in found]
    boxes = [_patch_box(k.box[0], k.box[1], grid_hw, overlay.size, (k.box[2], k.box[3])) for k in found]
    return annotate(overlay, points=points, boxes=boxes, labels=[str(i + 1) for i in range(len(found))])


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


CONTROLS = ("model", "method", "layer", "heads", "layer_fusion", "discard_ratio", "alpha", "cmap", "clip",
            "keypoints")
"""Order of the control values every drawing handler receives after the state."""
NO_IMAGE = "Upload an image or pick a sample photo."


def new_state() -> dict:
    """Per-session state: the image key, the query patch (row, col) and the last drawn
    (width, height) of the overlay with the grid (H, W) it showed."""
    return {"image": None, "query": None, "shown": None}


class DemoHandlers:
    """The functions the page's events call. Each takes the session state and the control values
    (in ``CONTROLS`` order) and returns new output values; a failure becomes one line in the
    status box and leaves the other outputs as they were (``gr.update()``)."""

    def __init__(self, backend: DemoBackend) -> None:
        self.backend = backend
        self._gr = import_gradio()

    def upload(self, path: str | None, state: dict, *controls) -> tuple:
        """A file from the upload button: store it under a generated name, delete gradio's copy, draw."""
        if not path:
            return self._unchanged(state, NO_IMAGE)
        try:
            key, failure = _attempt(lambda: self.backend.store_upload(path))
        finally:
            self._delete_gradio_copy(path)
        if failure:
            return self._unchanged(state, failure)
        return self.redraw({**new_state(), "image": key}, *controls)

    def sample(self, name: str | None, state: dict, *controls) -> tuple:
        """A sample photo picked from the list: draw it."""
        if not name:
            return self._unchanged(state, NO_IMAGE)
        key, failure = _attempt(lambda: self.backend.sample_key(name))
        if failure:
            return self._unchanged(state, failure)
        return self.redraw({**new_state(), "image": key}, *controls)

    def redraw(self, state: dict, *controls) -> tuple:
        """Draw the current image with the current controls: (state, overlay, figure, status, files);
        the downloads of the previous view are hidden."""
        if not state.get("image"):
            return self._unchanged(state, NO_IMAGE)
        spec, view = self._view(state, controls)

        def draw() -> tuple[Rendered, Image.Image]:
            rendered = self.backend.render(spec, state["image"], view)
            return rendered, figure_image(rendered.figure)

        drawn, failure = _attempt(draw)
        if failure:
            return self._unchanged(state, failure)
        rendered, figure = drawn
        shown = [*rendered.overlay.size, *rendered.grid_hw]
        stale = self._gr.update(value=None, visible=False)  # downloads of an earlier view
        return {**state, "shown": shown}, rendered.overlay, figure, rendered.caption, stale

    def click(self, xy: Sequence[float], state: dict, *controls) -> tuple:
        """A click on the overlay at pixel (x, y): show that patch's attention (method "Query patch").

        Returns (method, state, overlay, figure, status, files)."""
        if not state.get("shown"):
            return (self._gr.update(), *self._unchanged(state, NO_IMAGE))
        width, height, grid_h, grid_w = state["shown"]
        query = click_to_patch(xy, (width, height), (grid_h, grid_w))
        values = {**dict(zip(CONTROLS, controls, strict=True)), "method": "Query patch"}
        return ("Query patch", *self.redraw({**state, "query": query}, *values.values()))

    def change_model(self, state: dict, *controls) -> tuple:
        """Another model: fit the layer slider and the head list to it, then redraw.

        Returns (layer slider, heads dropdown, state, overlay, figure, status, files)."""
        update = self._gr.update
        values = dict(zip(CONTROLS, controls, strict=True))
        model, failure = _attempt(lambda: self.backend.model(values["model"]))
        if failure:
            return (update(), update(), *self._unchanged(state, failure))
        last = model.num_layers - 1
        values["layer"] = min(int(values["layer"]), last)
        choices = head_choices(model.num_heads)
        if values["heads"] not in choices:
            values["heads"] = "mean"
        return (update(maximum=last, value=values["layer"]), update(choices=choices, value=values["heads"]),
                *self.redraw({**state, "query": None}, *values.values()))

    def download(self, state: dict, *controls) -> tuple:
        """Write maps.npz and figure.png of the current view and show them: (files, status)."""
        if not state.get("image"):
            return self._gr.update(), NO_IMAGE
        spec, view = self._view(state, controls)
        files, failure = _attempt(lambda: self.backend.downloads(self.backend.render(spec, state["image"], view)))
        if failure:
            return self._gr.update(), failure
        return self._gr.update(value=[str(p) for p in files], visible=True), "maps.npz and figure.png are ready below."

    def _view(self, state: dict, controls: Sequence) -> tuple[str, View]:
        values = dict(zip(CONTROLS, controls, strict=True))
        query = tuple(state["query"]) if state.get("query") else None
        view = View(method=values["method"], layer=int(values["layer"]), heads=values["heads"],
                    layer_fusion=values["layer_fusion"], discard_ratio=float(values["discard_ratio"]),
                    alpha=float(values["alpha"]), cmap=values["cmap"], clip=float(values["clip"]), query=query,
                    keypoints=bool(values["keypoints"]))
        return values["model"], view

    def _unchanged(self, state: dict, status: str) -> tuple:
        update = self._gr.update
        return state, update(), update(), status, update()

    def _delete_gradio_copy(self, path: str) -> None:
        """Remove the file gradio stored under the client's file name (only inside gradio's upload folder)."""
        folder = Path(self._gr.utils.get_upload_folder()).resolve()
        target = Path(path).resolve()
        if folder in target.parents:
            target.unlink(missing_ok=True)
            if target.parent != folder and not any(target.parent.iterdir()):
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


def build_demo(
    models: Sequence[str] = ("offline",),
    *,
    work_dir: Path | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    samples: bool = True,
    device: str | None = None,
):
    """The demo page as a ``gradio.Blocks`` (call ``.launch()`` on it).

    ``models`` is the allow-list of model specs offered (the first is loaded at once, on
    ``device``, and is the default); ``samples`` offers scikit-image's photos when scikit-image is
    installed. Raises ``DemoError`` when the first model cannot be loaded.
    """
    gr = import_gradio()
    backend = DemoBackend(models, work_dir, max_upload_bytes, max_pixels, partial(load, device=device))
    handlers = DemoHandlers(backend)
    first = backend.model(backend.models[0])
    sample_names = list(SAMPLE_NAMES) if samples and _has_skimage() else []
    with gr.Blocks(title="vitprobe", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown("## vitprobe: what does the Vision Transformer attend to?\n"
                    "Upload an image or pick a sample, then choose what to draw. Click the overlay to see the "
                    "attention of the patch under the pointer.")
        state = gr.State(new_state())
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                upload = gr.UploadButton("Upload image", file_types=["image"], type="filepath",
                                         elem_id="upload")
                sample = gr.Dropdown(sample_names, value=None, label="Sample photo", elem_id="sample",
                                     visible=bool(sample_names))
                model = gr.Dropdown(list(backend.models), value=backend.models[0], label="Model", elem_id="model")
                method = gr.Radio(list(METHODS), value=METHODS[0], label="Method", elem_id="method")
                layer = gr.Slider(0, first.num_layers - 1, value=first.num_layers - 1, step=1, label="Layer",
                                  elem_id="layer")
                heads = gr.Dropdown(head_choices(first.num_heads), value="mean", label="Heads (fusion or one head)",
                                    elem_id="heads")
                layer_fusion = gr.Radio(list(FUSIONS), value="mean", label="Layer aggregation", elem_id="layer_fusion")
                discard = gr.Slider(0.0, 0.95, value=0.0, step=0.05, label="Rollout discard ratio",
                                    elem_id="discard")
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Opacity", elem_id="alpha")
                cmap = gr.Dropdown(list(COLORMAPS), value=COLORMAPS[0], label="Colormap", elem_id="cmap")
                clip = gr.Slider(90.0, 100.0, value=DEFAULT_CLIP, step=0.5, elem_id="clip",
                                 label="Colour scale top (percentile of the map; 100 = its max)")
                marks = gr.Checkbox(False, label="Keypoints and boxes", elem_id="keypoints")
            with gr.Column(scale=2):
                overlay = gr.Image(label="Overlay (click a patch)", type="pil", format="png", interactive=False,
                                   buttons=["download", "fullscreen"], elem_id="overlay")
                status = gr.Markdown(NO_IMAGE, elem_id="status")
                figure = gr.Image(label="Per-head / per-layer grid", type="pil", format="png", interactive=False,
                                  buttons=["download", "fullscreen"], elem_id="figure")
                download = gr.Button("Prepare downloads (maps.npz, figure.png)", elem_id="download")
                files = gr.File(label="Downloads", file_count="multiple", interactive=False, visible=False,
                                elem_id="files")
        controls = [model, method, layer, heads, layer_fusion, discard, alpha, cmap, clip, marks]
        drawn = [state, overlay, figure, status, files]
        upload.upload(handlers.upload, [upload, state, *controls], drawn)
        sample.input(handlers.sample, [sample, state, *controls], drawn)
        for control in (method, layer, heads, layer_fusion, discard, alpha, cmap, clip, marks):
            control.input(handlers.redraw, [state, *controls], drawn)
        model.input(handlers.change_model, [state, *controls], [layer, heads, *drawn])
        download.click(handlers.download, [state, *controls], [files, status])

        def on_click(evt: gr.SelectData, state: dict, *controls) -> tuple:
            return handlers.click(evt.index, state, *controls)

        overlay.select(on_click, [state, *controls], [method, *drawn])
    return demo


def _has_skimage() -> bool:
    from importlib.util import find_spec

    return find_spec("skimage") is not None
