"""Import timm and open_clip for the tests, with a minimal torchvision stand-in only when the real one
is missing.

timm and open_clip import torchvision at import time. CI has no working torchvision (REFERENCE.md), so
``import_timm`` puts this folder (which holds a ``torchvision`` package of placeholders) on
``sys.path`` just for that import, then takes it away again: transformers checks for
torchvision by name and would otherwise route its image classes through the stand-in.
With a real torchvision installed (the GPU machine) nothing is substituted.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)


def import_timm() -> str | None:
    """Import timm; returns "real" or "stub" (which torchvision it imported with), None without timm."""
    return import_with_stub("timm")


def import_with_stub(package: str) -> str | None:
    """Import ``package`` (timm, open_clip); returns "real" or "stub" (the torchvision it imported with),
    None when the package is not installed."""
    if importlib.util.find_spec(package) is None:
        return None
    if package in sys.modules:
        return "stub" if getattr(sys.modules[package], "_vitprobe_stub", False) else "real"
    if importlib.util.find_spec("torchvision") is not None:
        importlib.import_module(package)
        return "real"
    sys.path.insert(0, HERE)
    try:
        module = importlib.import_module(package)
    finally:
        sys.path.remove(HERE)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    module._vitprobe_stub = True
    return "stub"
