"""Import timm for the tests, with a minimal torchvision stand-in only when the real one is missing.

timm imports torchvision at import time. CI has no working torchvision (REFERENCE.md), so
``import_timm`` puts this folder (which holds a ``torchvision`` package of placeholders) on
``sys.path`` just for ``import timm``, then takes it away again: transformers checks for
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
    if importlib.util.find_spec("timm") is None:
        return None
    if "timm" in sys.modules:
        return "stub" if getattr(sys.modules["timm"], "_vitprobe_stub", False) else "real"
    if importlib.util.find_spec("torchvision") is not None:
        import timm  # noqa: F401

        return "real"
    sys.path.insert(0, HERE)
    try:
        import timm
    finally:
        sys.path.remove(HERE)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    timm._vitprobe_stub = True
    return "stub"
