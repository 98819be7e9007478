"""The documentation site's generated parts (tools/docs_site.py) follow the code: a method registered in one
file appears in the gallery and the method options, every command and option in the command-line reference,
every public name in the API index; every page is in the navigation. ``make docs`` (run by ``make test``)
builds the whole site with ``mkdocs build --strict``; these checks need no model and no build."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import vitprobe as vp
from vitprobe.methods import base as registry

pytest.importorskip("mkdocs")
yaml = pytest.importorskip("yaml")

from tools import docs_site  # noqa: E402  (needs mkdocs)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def toy():
    class Squared(vp.Method):
        """Detail: ``raw`` (B, H, W) the head-mean CLS map before the power."""

        name = "toydocs"
        summary = "test toy: the last layer's head-mean CLS map raised to a power"
        params = (vp.Param("power", 2.0, "exponent applied to the map", "float", low=0.0, high=8.0),)
        requires = ("cls",)
        details = {"raw": "(B, H, W) the head-mean CLS map before the power"}

        def needs(self, ctx, p: dict[str, Any]) -> vp.Needs:
            return vp.Needs(cls_layers=frozenset({ctx.n_layers - 1}))

        def compute(self, ctx, p: dict[str, Any]) -> vp.Result:
            raise NotImplementedError

    vp.register_method(Squared)
    yield vp.get_method("toydocs")
    registry._REGISTRY.pop("toydocs")


def test_a_new_method_appears_in_the_gallery_and_the_options_without_an_edit(toy):
    assert "| [`toydocs`](#toydocs) | test toy: the last layer's head-mean CLS map raised to a power |" \
        in docs_site._method_table()
    drawn = {"status": "drawn", "title": "CLS map to the power 2", "seconds": 1.5}
    text, figures = docs_site.gallery_markdown([toy], {"toydocs": drawn})
    assert text.startswith("### `toydocs`\n")
    assert "| `power`<br>`--power` | [0, 8] | `2.0` | exponent applied to the map |" in text
    assert "| `raw` | (B, H, W) the head-mean CLS map before the power |" in text
    assert "![toydocs on the three sample photos](methods/toydocs.png)" in text
    assert figures == ["methods/toydocs.png", "methods/toydocs_full.png"]
    skipped, figures = docs_site.gallery_markdown([toy], {"toydocs": {"status": "skipped", "note": "too slow"}})
    assert "too slow. Draw it with `vitprobe explain samples --method toydocs --size 224 224`" in skipped
    assert figures == []
    assert "| `--power` | [0, 8] | `toydocs` (`2.0`) |" in docs_site._commands()
    # the figure is drawn again when what it shows changes, and only then
    assert docs_site._method_key(toy) == docs_site._method_key(toy)
    assert docs_site._method_key(toy) != docs_site._method_key(vp.get_method("cls"))


def test_every_method_of_the_registry_is_in_the_gallery():
    methods = [vp.get_method(name) for name in vp.method_names()]
    records = {m.name: {"status": "unavailable", "note": "no model here"} for m in methods}
    text, _ = docs_site.gallery_markdown(methods, records)
    assert re.findall(r"^### `(\w+)`$", text, re.MULTILINE) == vp.method_names()
    for m in methods:
        for p in m.params:
            assert f"`{p.option}`" in text
        for key in getattr(m, "details", None) or {}:
            assert f"| `{key}` |" in text


def test_the_command_line_reference_has_every_command_and_option():
    import typer

    from vitprobe.cli import app

    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="vitprobe")
    text = docs_site._commands()
    for name in root.list_commands(ctx):
        assert f"### `vitprobe {name}`" in text
        cmd = root.get_command(ctx, name)
        for param in cmd.get_params(cmd.context_class(cmd, info_name=name, parent=ctx)):
            if param.param_type_name == "option" and param.name != "help":
                assert f"`{param.opts[0]}`" in text, (name, param.opts)
    for name in vp.method_names():
        for p in vp.get_method(name).params:
            assert f"| `{p.option}` |" in text


def test_the_api_index_documents_every_public_name():
    text = docs_site._api()
    for name in vp.__all__:
        if name != "__version__":
            assert f"[`vp.{name}`](#" in text, name
    targets = re.findall(r"^::: (\S+)$", text, re.MULTILINE)
    assert len(targets) == len(set(targets)) == len(vp.__all__) - 1


def test_every_page_is_in_the_navigation_and_make_test_builds_the_site():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = {page for entry in config["nav"] for page in entry.values()}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages <= nav and nav - pages == {"tour.ipynb"}
    markers = {m for p in (ROOT / "docs").glob("*.md") for m in docs_site.MARKER.findall(p.read_text())}
    assert {name for kind, name, _ in markers if kind == "generated"} == {
        "method-table", "method-gallery", "command-line", "api"}
    assert all((ROOT / name).is_file() for kind, name, _ in markers if kind == "include")
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*\bdocs\b", makefile, re.MULTILINE)
    assert re.search(r"^docs: .*\n\t\$\(BIN\)/mkdocs build --strict", makefile, re.MULTILINE)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {"/site/", "/.docs_cache/"} <= set(ignored)
