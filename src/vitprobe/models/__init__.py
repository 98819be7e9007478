"""Model adapters: one module per family, all returning a VitModel."""

from .base import UnsupportedModelError, VitModel
from .registry import families, load, register_family

__all__ = ["UnsupportedModelError", "VitModel", "families", "load", "register_family"]
