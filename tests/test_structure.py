"""Data flows one way (model -> capture -> methods/analysis -> render -> front ends), read from the imports."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "vitprobe"


def runtime_imports(path: Path) -> set[str]:
    """Absolute module names imported by ``path`` outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = parts[:-1]  # the folder: a relative import of level 1 starts here
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and getattr(block.test, "id", None) == "TYPE_CHECKING" for node in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            found.add(".".join([*base, *(node.module.split(".") if node.module else [])]))
    return found


def test_capture_imports_nothing_above_it():
    imported = runtime_imports(PACKAGE / "capture.py")
    assert not {m for m in imported if m.startswith(("vitprobe.analysis", "vitprobe.methods", "vitprobe.render"))}


def test_renderers_never_run_a_model():
    for path in (PACKAGE / "render").glob("*.py"):
        above = {m for m in runtime_imports(path)
                 if m.startswith(("vitprobe.models", "vitprobe.methods", "vitprobe.capture", "vitprobe.runner"))}
        assert not above, (path.name, above)


def test_the_web_demo_uses_the_public_api_only():
    imported = {m for m in runtime_imports(PACKAGE / "web" / "app.py") if m.startswith("vitprobe")}
    assert imported == {"vitprobe"}


def test_method_files_import_no_front_end():
    for path in (PACKAGE / "methods").glob("*.py"):
        front = {m for m in runtime_imports(path) if m.startswith(("vitprobe.render", "vitprobe.cli", "vitprobe.web",
                                                                   "vitprobe.commands", "vitprobe.runner"))}
        assert not front, (path.name, front)
