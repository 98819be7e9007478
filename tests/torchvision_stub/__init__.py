"""Import timm, open_clip, zennit, quantus and LXT (``lxt.efficient``) for the tests, with a minimal torchvision
stand-in only when the real one is missing.

timm and open_clip import torchvision at import time. CI has no working torchvision (REFERENCE.md), so
``import_timm`` puts this folder (which holds a ``torchvision`` package of placeholders) on
``sys.path`` just for that import, then takes it away again: transformers checks for
torchvision by name and would otherwise route its image classes through the stand-in.
With a real torchvision installed (the GPU machine) nothing is substituted.

LXT 2.1 ships a copy of an older transformers BERT that imports ``find_pruneable_heads_and_indices``, which
transformers 5 removed: while such a package is imported, each name in ``_REMOVED`` that transformers lacks
exists as a function that raises when called, and is taken away again afterwards.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
_REMOVED = {"transformers.pytorch_utils": ("find_pruneable_heads_and_indices",)}
"""Names older packages import from transformers that transformers 5 no longer has."""


def _removed(module: str, name: str):
    def refuse(*_args, **_kwargs):
        raise RuntimeError(f"{module}.{name} was removed from transformers; only a test placeholder is here")

    refuse.__name__ = name
    return refuse


@contextmanager
def _removed_transformers_names() -> Iterator[None]:
    added = []
    if importlib.util.find_spec("transformers") is not None:
        for module_name, names in _REMOVED.items():
            module = importlib.import_module(module_name)
            for name in names:
                if not hasattr(module, name):
                    setattr(module, name, _removed(module_name, name))
                    added.append((module, name))
    try:
        yield
    finally:
        for module, name in added:
            delattr(module, name)


def import_timm() -> str | None:
    """Import timm; returns "real" or "stub" (which torchvision it imported with), None without timm."""
    return import_with_stub("timm")


def import_with_stub(package: str) -> str | None:
    """Import ``package`` (timm, open_clip, zennit, quantus, lxt.efficient); returns "real" or "stub" (the
    torchvision it imported with), None when the package is not installed. transformers is imported first,
    so it finds no torchvision by name."""
    try:
        if importlib.util.find_spec(package) is None:
            return None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return None
    if package in sys.modules:
        return "stub" if getattr(sys.modules[package], "_vitprobe_stub", False) else "real"
    if importlib.util.find_spec("transformers") is not None:
        importlib.import_module("transformers")
    if importlib.util.find_spec("torchvision") is not None:
        with _removed_transformers_names():
            importlib.import_module(package)
        return "real"
    sys.path.insert(0, HERE)
    try:
        with _removed_transformers_names():
            module = importlib.import_module(package)
    finally:
        sys.path.remove(HERE)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    module._vitprobe_stub = True
    return "stub"
