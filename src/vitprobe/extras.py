"""The optional parts of vitprobe and the one install hint a missing one gives.

Every front end that needs an optional library says the same thing, in one line:
``<what> needs <package>: pip install 'vitprobe[<extra>]'``, the format of
``methods.base.import_extra``, which works from a wheel as from a clone.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS: dict[str, str] = {
    "samples": "scikit-image: the sample photos (vitprobe samples, vp.write_samples)",
    "web": "gradio: the web demo (vitprobe serve)",
    "video": "imageio-ffmpeg: videos (vitprobe video)",
    "timm": "timm: timm's ViT, DeiT and EVA models",
    "openclip": "open_clip_torch, ftfy, regex: OpenCLIP towers and text targets",
    "captum": "captum: integrated_gradients, input_x_gradient, occlusion",
    "datasets": "datasets: reading Hugging Face datasets folders with the datasets package itself",
    "all": "every extra above",
}
"""Extra -> what it adds (``pyproject.toml`` lists their packages)."""


def install_hint(extra: str | None) -> str:
    """``pip install 'vitprobe[extra]'``: the command that adds ``extra`` outside a clone too; ``None``:
    the base install (``pip install vitprobe``, which puts back a missing dependency)."""
    if extra is None:
        return "pip install vitprobe"
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; vitprobe has {', '.join(EXTRAS)}")
    return f"pip install 'vitprobe[{extra}]'"


def missing_message(what: str, package: str, extra: str | None) -> str:
    """The one-line message for a missing optional library: ``<what> needs <package>: pip install ...``."""
    return f"{what} needs {package.split('.')[0]}: {install_hint(extra)}"


def require_extra(module: str, extra: str, what: str, error: type[Exception] = ImportError) -> ModuleType:
    """Import ``module`` of ``extra``, or raise ``error`` with ``missing_message`` (no traceback chained)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise error(missing_message(what, module, extra)) from None
