"""A minimal torchvision stand-in for the test suite, used only when the real torchvision is missing.

timm imports a few torchvision names at import time (transforms, datasets, FrozenBatchNorm2d),
although its ViT models never use them. The names exist here; using any of them raises.
Real torchvision replaces none of this: the test conftest puts this folder on ``sys.path``
only when ``import torchvision`` fails.
"""

from __future__ import annotations

__version__ = "0.0.0+vitprobe.stub"


class _StubError(RuntimeError):
    """A torchvision feature was used while only the test stand-in is installed."""


def placeholder(module: str, name: str) -> type:
    """A class named ``name`` that raises when constructed, with attribute access that raises too."""

    def refuse(*_args, **_kwargs):
        raise _StubError(f"{module}.{name} is not available: only the vitprobe test stand-in of torchvision is here")

    return type(name, (), {"__init__": refuse, "__module__": module})
