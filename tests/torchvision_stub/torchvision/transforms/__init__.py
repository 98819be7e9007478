"""torchvision.transforms stand-in: InterpolationMode, and every transform class existing and raising
when built."""

from .. import placeholder
from .functional import InterpolationMode

__all__ = ["InterpolationMode"]


def __getattr__(name: str) -> type:
    if name.startswith("__"):
        raise AttributeError(name)
    return placeholder(__name__, name)
