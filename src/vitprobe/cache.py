"""Where vitprobe keeps what it builds once: the converted offline model, compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Return ``$VITPROBE_CACHE``, else ``$XDG_CACHE_HOME/vitprobe``, else ``~/.cache/vitprobe``."""
    explicit = os.environ.get("VITPROBE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vitprobe"
