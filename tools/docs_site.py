"""The generated parts of the documentation site, as an MkDocs hook (``mkdocs.yml``: ``hooks``).

A page asks for a generated part with a marker line, replaced when the page is built:

- ``<!-- generated: method-gallery -->``: every registered method (``vitprobe.methods``), in the registry's
  order: its summary and docstring, what the model must have, its parameter table from its ``Param``s, the
  detail tensors it declares (``details``), and its figure on the three sample photos drawn by the offline
  default model (``vp.load()``) at ``SIZE``. A new method file appears here without an edit.
- ``<!-- generated: command-line -->``: every command of the typer app (``vitprobe.cli.app``), walked as
  the click command it builds: usage, help, arguments, options with defaults, epilog; and every method
  option the commands that take method options accept.
- ``<!-- generated: api -->``: the public names of ``vitprobe`` (``__all__``), grouped by module, each
  documented by mkdocstrings from its docstring.
- ``<!-- include: PATH -->`` (or ``<!-- include: PATH shift=N -->``): the file PATH (relative to the
  repository root) with its headings one (N) level(s) down; files it links to next to it are published
  beside it.

``examples/tour.ipynb`` is executed in a scratch folder (as ``tests/test_notebook.py`` runs it) and the
executed copy is what mkdocs-jupyter renders. Figures and the executed notebook are cached in
``.docs_cache/`` (gitignored), keyed on what they show: a method's figure on its module's source, its
parameters and the code here that draws it; the notebook on its own text and the package's source. ``make clean`` (or
removing ``.docs_cache``) draws everything again.
"""

from __future__ import annotations

import hashlib
import html
import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".docs_cache"
NOTEBOOK = ROOT / "examples" / "tour.ipynb"

SIZE = (224, 224)
"""Input size of the gallery's figures (the whole photo resized; 16 x 16 patches of the offline model)."""
PHOTOS = ("chelsea", "astronaut", "coffee")
SLOW_S = 30.0
"""A method that takes longer than this for the three photos is not drawn at build time (``SKIPPED``)."""
SKIPPED = {
    "scorecam": "one forward pass per channel and image (1,152 at 224 px here): about 4 minutes for the "
                "three photos on the 2-core build machine",
    "occlusion": "one forward pass per patch window and image: about 2.5 minutes for the three photos on the "
                 "2-core build machine",
    "integrated_gradients": "32 gradient passes per image: about 45 s for the three photos on the 2-core build "
                            "machine",
}
"""Methods measured over ``SLOW_S`` on the build machine, and why; the gallery says so and how to draw them."""

log = logging.getLogger("mkdocs.hooks.vitprobe_docs")
_parts: dict[str, str] = {}
"""Generated markdown by marker name, made in ``on_files`` for ``on_page_markdown``."""
_includes: dict[tuple[str, str], str] = {}


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def _publish(files: Files, config, uri: str, path: Path) -> None:
    """Put ``path`` into the site at ``uri`` (replacing a file of that name)."""
    old = files.get_file_from_path(uri)
    if old is not None:
        files.remove(old)
    path = Path(path).resolve()
    if path.as_posix().endswith("/" + uri):  # a real source folder, which mkdocs-jupyter's file wrapper needs
        src_dir = path.as_posix()[: -len(uri) - 1]
        files.append(File(uri, src_dir=src_dir, dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    else:
        files.append(File.generated(config, uri, abs_src_path=str(path)))


# --- the method gallery ------------------------------------------------------------------------------------

def _method_key(method) -> str:
    source = Path(inspect.getsourcefile(type(method))).read_bytes()
    drawing = inspect.getsource(_strip) + inspect.getsource(_draw_methods)
    return _digest(drawing, method.name, source, method.params, method.requires, SIZE, PHOTOS, SKIPPED.get(method.name))


def _strip(res, style, names) -> Any:
    """The method's map on each photo, side by side, each with its colour bar (signed maps centred at 0)."""
    import matplotlib
    import numpy as np
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from vitprobe.render import overlay
    from vitprobe.render.canvas import new_figure
    from vitprobe.render.colormap import as_numpy, is_signed, signed_range, value_range

    n, w, h, bar, top, gap = len(res.images), 2.6, 2.6, 0.45, 0.5, 0.15
    fig = new_figure(n * w + (n - 1) * gap, h + bar + top)
    total_w, total_h = n * w + (n - 1) * gap, h + bar + top
    for i, view in enumerate(res.images):
        view = view.convert("RGB")
        view.thumbnail((320, 320))
        heat = as_numpy(res.maps[i])
        signed = is_signed(heat)
        lo, hi = signed_range(heat, style.clip) if signed else value_range(heat, clip=style.clip)
        drawn = replace(style, cmap=style.signed_cmap) if signed else style
        left = i * (w + gap)
        ax = fig.add_axes([left / total_w, bar / total_h, w / total_w, h / total_h])
        ax.imshow(np.asarray(overlay(view, heat, drawn, lo, hi)))
        ax.set_axis_off()
        ax.set_title(names[i], fontsize=9, pad=3)
        cax = fig.add_axes([(left + 0.15 * w) / total_w, 0.12 * bar / total_h, 0.7 * w / total_w, 0.25 * bar / total_h])
        cb = fig.colorbar(ScalarMappable(Normalize(lo, hi), matplotlib.colormaps[drawn.cmap]), cax=cax,
                          orientation="horizontal")
        cb.set_ticks([lo, hi], labels=[f"{lo:.3g}", f"{hi:.3g}"])
        cb.ax.tick_params(labelsize=7, length=2, pad=1)
    fig.suptitle(res.title, fontsize=10, y=1 - 0.12 * top / total_h, va="top")
    return fig


def _draw_methods(todo: list, folder: Path) -> None:
    """Draw each method of ``todo`` on the sample photos with the offline model, writing its figures and a
    record of what happened (drawn, or why not) next to them."""
    import vitprobe as vp

    started = time.perf_counter()
    model = vp.load()
    photos = vp.write_samples(CACHE / "samples", PHOTOS)
    style = vp.Style()
    log.info("docs: offline model loaded in %.1f s", time.perf_counter() - started)
    for method, key in todo:
        record: dict[str, Any] = {"key": key}
        if method.name in SKIPPED:
            record.update(status="skipped", note=SKIPPED[method.name])
        else:
            t0 = time.perf_counter()
            try:
                res = vp.attribute(model, photos, method=method.name, size=SIZE)
            except ValueError as err:  # a method the offline model cannot run (e.g. pool: no pooling head)
                record.update(status="unavailable", note=str(err).splitlines()[0])
            else:
                vp.render.save_figure(_strip(res, style, PHOTOS), folder / f"{method.name}.png", dpi=90)
                vp.render.save_figure(vp.render.attribution_figure(res, 0, style), folder / f"{method.name}_full.png",
                                      dpi=80)
                seconds = time.perf_counter() - t0
                record.update(status="drawn", title=res.title, seconds=round(seconds, 1),
                              detail={k: list(v.shape) for k, v in res.detail.items()})
                if seconds > SLOW_S:
                    log.info("docs: %s took %.0f s (over %.0f s): consider listing it in SKIPPED", method.name,
                             seconds, SLOW_S)
        (folder / f"{method.name}.json").write_text(json.dumps(record, indent=1))
    log.info("docs: %d method figure(s) drawn in %.1f s", len(todo), time.perf_counter() - started)


def _cell(text: str) -> str:
    """``text`` for one table cell: one line, ``|`` escaped, ``<`` and ``>`` outside code spans as entities."""
    parts = str(text).replace("\n", " ").split("`")
    parts = [p if i % 2 else html.escape(p, quote=False) for i, p in enumerate(parts)]
    return "`".join(parts).replace("|", "\\|")


def _docstring(method) -> str:
    doc = inspect.getdoc(type(method)) or ""
    return doc if doc and doc != inspect.getdoc(type(method).__mro__[1]) else ""


def _records(methods: list) -> dict[str, dict]:
    """Per method, what its figures show (drawn, skipped or unavailable, and why), drawing those whose cached
    figures are missing or out of date."""
    folder = CACHE / "methods"
    folder.mkdir(parents=True, exist_ok=True)
    keys = {m.name: _method_key(m) for m in methods}

    def cached(name: str) -> dict | None:
        try:
            data = json.loads((folder / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("key") == keys[name] else None

    todo = [(m, keys[m.name]) for m in methods if cached(m.name) is None]
    if todo:
        _draw_methods(todo, folder)
    return {m.name: cached(m.name) or {"status": "unavailable", "note": "not drawn"} for m in methods}


def gallery_markdown(methods: list, records: dict[str, dict]) -> tuple[str, list[str]]:
    """The gallery's markdown and the figures it shows (``methods/<name>.png`` under ``.docs_cache``)."""
    out, figures = [], []
    for m in methods:
        rec = records[m.name]
        out.append(f"### `{m.name}`\n\n{m.summary}.\n")
        doc = _docstring(m)
        if doc:
            out.append(doc + "\n")
        needs = ", ".join(f"`{r}`" for r in m.requires) or "nothing beyond attention"
        video = " Draws maps with a time axis (t, H, W) for video models too." if m.video else ""
        out.append(f"**Needs:** {needs}.{video}\n")
        if m.params:
            out.append("| parameter | values | default | what it does |\n|---|---|---|---|")
            for p in m.params:
                out.append(f"| `{p.name}`<br>`{p.option}` | {_cell(p.describe())} | `{p.default!r}` | {_cell(p.doc)} |")
            out.append("")
        else:
            out.append("No parameters.\n")
        details = getattr(m, "details", None)
        if details:
            out.append("| detail | shape and meaning |\n|---|---|")
            out.extend(f"| `{key}` | {_cell(doc)} |" for key, doc in details.items())
            out.append("")
        elif details is not None:
            out.append("No detail tensors: the maps are the whole result.\n")
        size = " ".join(map(str, SIZE))
        command = f"`vitprobe explain samples --method {m.name} --size {size}`"
        if rec["status"] == "drawn":
            figures += [f"methods/{m.name}.png", f"methods/{m.name}_full.png"]
            out.append(f"![{m.name} on the three sample photos](methods/{m.name}.png)\n")
            out.append(f"*{html.escape(rec['title'])}: the offline DINOv2-S/14 on chelsea, astronaut and coffee "
                       f"at {SIZE[0]}×{SIZE[1]} px ({command}; {rec['seconds']:g} s here).*\n")
            out.append(f'??? note "The full figure `vitprobe explain` writes (chelsea)"\n\n'
                       f"    ![{m.name}: every panel](methods/{m.name}_full.png)\n")
        elif rec["status"] == "skipped":
            out.append(f'!!! note "Not drawn at build time"\n\n    {rec["note"]}. Draw it with {command}.\n')
        else:
            out.append(f'!!! note "Not drawn here"\n\n    The offline model cannot run it: {rec["note"]}.\n')
    return "\n".join(out), figures


def _gallery(files: Files, config) -> str:
    from vitprobe.methods import get_method, method_names

    methods = [get_method(name) for name in method_names()]
    text, figures = gallery_markdown(methods, _records(methods))
    for uri in figures:
        _publish(files, config, uri, CACHE / uri)
    return text


def _method_table() -> str:
    """Every method at a glance: name (linked to its gallery entry), summary, parameters, needs."""
    from vitprobe.methods import get_method, method_names

    out = ["| method | draws | parameters (default) | needs |", "|---|---|---|---|"]
    for name in method_names():
        m = get_method(name)
        params = ", ".join(f"`{p.name}` (`{p.default!r}`)" for p in m.params) or "–"
        needs = ", ".join(f"`{r}`" for r in m.requires) or "–"
        out.append(f"| [`{name}`](#{name}) | {_cell(m.summary)} | {_cell(params)} | {needs} |")
    return "\n".join(out) + "\n"


# --- the command line --------------------------------------------------------------------------------------

def _default(param) -> str:
    if getattr(param, "is_flag", False) and param.secondary_opts:
        return f"`{(param.opts if param.default else param.secondary_opts)[0]}`"
    if param.default is None or param.default == () or callable(param.default):
        return ""
    value = param.default
    if isinstance(value, (list, tuple)):
        value = " ".join(map(str, value))
    return f"`{value}`"


def _commands() -> str:
    import typer

    from vitprobe.choices import DEFAULT_METHODS
    from vitprobe.cli import app
    from vitprobe.methods import get_method, method_names

    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="vitprobe")  # typer carries its own click
    takes_methods = []
    out = []
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = cmd.context_class(cmd, info_name=name, parent=ctx)
        params = [p for p in cmd.get_params(sub) if not getattr(p, "hidden", False) and p.name != "help"]
        usage = ["[OPTIONS]"]
        rows = []
        for param in params:
            if param.param_type_name == "argument":
                metavar = param.name.upper() + ("..." if param.nargs == -1 else "")
                usage.append(metavar if param.required else f"[{metavar}]")
                rows.append((f"`{metavar}`", "required" if param.required else _default(param),
                             _cell(getattr(param, "help", "") or "")))
            else:
                opts = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
                rows.append((opts, _default(param), _cell(param.help or "")))
        out.append(f"### `vitprobe {name}`\n\n{inspect.cleandoc(cmd.help or '')}\n")
        out.append(f"```\nvitprobe {name} {' '.join(usage)}\n```\n")
        out.append("| argument or option | default | what it does |\n|---|---|---|")
        out.extend(f"| {a} | {b} | {c} |" for a, b, c in rows)
        out.append("")
        if cmd.context_settings.get("ignore_unknown_options"):
            takes_methods.append(name)
            out.append("It takes the chosen methods' options too ([method options](#method-options)).\n")
        if cmd.epilog:
            out.append(inspect.cleandoc(cmd.epilog) + "\n")
    options: dict[str, list] = {}
    for mname in method_names():
        for p in get_method(mname).params:
            options.setdefault(p.option, [p, []])[1].append(mname)
    out.append("### Method options\n")
    out.append(f"`{'`, `'.join(takes_methods)}` take `--method NAME[,NAME...]` (default `{DEFAULT_METHODS}` for "
               "`explain`) and one option per parameter of the chosen methods, from the registry "
               "([Methods](methods.md)). An option goes to every chosen method that takes it; one that no chosen "
               "method takes is an error. Repeat an option for one map per value.\n")
    out.append("| option | values | taken by (default) |\n|---|---|---|")
    for option, (p, names) in sorted(options.items()):
        defaults = {n: next(q.default for q in get_method(n).params if q.option == option) for n in names}
        if len(set(map(repr, defaults.values()))) == 1:
            taken = f"{', '.join(f'`{n}`' for n in names)} (`{defaults[names[0]]!r}`)"
        else:
            taken = ", ".join(f"`{n}` (`{d!r}`)" for n, d in defaults.items())
        out.append(f"| `{option}` | {_cell(p.describe())} | {taken} |")
    return "\n".join(out) + "\n"


# --- the API reference -------------------------------------------------------------------------------------

API_GROUPS = (
    ("The one verb and the method registry", ("vitprobe.methods",)),
    ("Models", ("vitprobe.models",)),
    ("Capture, token layouts, kernels and reducers", ("vitprobe.capture", "vitprobe.layout", "vitprobe.kernels",
                                                      "vitprobe.byo")),
    ("Maps, distances and entropies", ("vitprobe.analysis",)),
    ("Dataset runs and comparison", ("vitprobe.runner", "vitprobe.comparison")),
    ("Keypoints and evaluation", ("vitprobe.evaluate", "vitprobe.localization")),
    ("Images and sample photos", ("vitprobe.io",)),
    ("Rendering", ("vitprobe.render",)),
)


def _api() -> str:
    import vitprobe

    where: dict[str, str] = {}
    for name in vitprobe.__all__:
        if name.startswith("_"):
            continue
        if name in vitprobe._LAZY:
            module, attr = vitprobe._LAZY[name]
            path = importlib.util.resolve_name(module, "vitprobe") + (f".{attr}" if attr else "")
        else:
            value = getattr(vitprobe, name)
            path = f"{value.__module__}.{value.__qualname__}"
        where[name] = path
    groups: dict[str, list[tuple[str, str]]] = {title: [] for title, _ in API_GROUPS}
    groups["Other"] = []
    for name, path in sorted(where.items(), key=lambda kv: kv[0].lower()):
        title = next((t for t, prefixes in API_GROUPS if any(path == p or path.startswith(p + ".") for p in prefixes)),
                     "Other")
        groups[title].append((name, path))
    out = []
    for title, entries in groups.items():
        if not entries:
            continue
        out.append(f"## {title}\n")
        out.append(", ".join(f"[`vp.{name}`](#{path})" for name, path in entries) + "\n")
        for _name, path in entries:
            if path == "vitprobe.render":
                out.append(f"::: {path}\n    options:\n      show_root_heading: true\n      heading_level: 3\n"
                           "      members: true\n      show_submodules: false\n")
            else:
                out.append(f"::: {path}\n")
    return "\n".join(out)


# --- included files ----------------------------------------------------------------------------------------

_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s#]+)(\))")


def _include(files: Files, config, relative: str, shift: int) -> str:
    """``relative``'s text, headings ``shift`` levels down, files it links to beside it published under its
    folder."""
    source = ROOT / relative
    text = source.read_text()
    folder = Path(relative).parent

    def link(match: re.Match) -> str:
        target = match.group(2)
        if "://" in target or target.startswith(("/", "mailto:")):
            return match.group(0)
        path = (source.parent / target).resolve()
        if not path.is_file() or path.suffix == ".md":
            return match.group(0)
        uri = (folder / target).as_posix()
        _publish(files, config, uri, path)
        return match.group(1) + uri + match.group(3)

    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            if line.startswith("#"):
                line = "#" * shift + line
            line = _LINK.sub(link, line)
        out.append(line)
    return "\n".join(out) + "\n"


# --- the tour notebook -------------------------------------------------------------------------------------

def _executed_tour() -> Path:
    """``examples/tour.ipynb`` executed top to bottom in a fresh kernel, in a scratch folder (cached)."""
    import nbclient
    import nbformat

    sources = sorted((ROOT / "src" / "vitprobe").rglob("*.py"))
    key = _digest(NOTEBOOK.read_bytes(), *[(p.name, p.read_bytes()) for p in sources])
    folder = CACHE / "tour"
    done, key_file = folder / "tour.ipynb", folder / "key"
    if done.is_file() and key_file.is_file() and key_file.read_text() == key:
        return done
    started = time.perf_counter()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with tempfile.TemporaryDirectory(prefix="vitprobe-docs-tour-") as scratch:
        try:
            nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                    resources={"metadata": {"path": scratch}}).execute()
        except Exception as err:
            raise PluginError(f"examples/tour.ipynb failed to execute: {str(err).strip().splitlines()[-1]}") from err
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, done)
    key_file.write_text(key)
    log.info("docs: examples/tour.ipynb executed in %.1f s", time.perf_counter() - started)
    return done


# --- the hook ----------------------------------------------------------------------------------------------

MARKER = re.compile(r"^<!-- (generated|include): (\S+)(?: shift=(\d))? -->$", re.MULTILINE)


@event_priority(100)  # before mkdocs-jupyter wraps the notebook file
def on_files(files: Files, config) -> Files:
    os.environ.setdefault("TQDM_DISABLE", "1")
    _parts.clear()
    _includes.clear()
    _publish(files, config, "tour.ipynb", _executed_tour())
    wanted = set()
    for page in Path(config["docs_dir"]).glob("*.md"):
        wanted.update(MARKER.findall(page.read_text()))
    makers = {"method-gallery": lambda: _gallery(files, config), "method-table": _method_table,
              "command-line": _commands, "api": _api}
    for kind, name, shift in sorted(wanted):
        if kind == "generated":
            if name not in makers:
                raise PluginError(f"unknown generated part {name!r}; tools/docs_site.py makes {', '.join(makers)}")
            _parts[name] = makers[name]()
        else:
            _includes[name, shift] = _include(files, config, name, int(shift or 1))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    def replace_marker(match: re.Match) -> str:
        kind, name, shift = match.groups()
        return _parts[name] if kind == "generated" else _includes[name, shift or ""]

    return MARKER.sub(replace_marker, markdown)
