"""Attribution methods, one file each, registered by name; ``attribute`` is the one verb."""

from .attribute import MethodSpec, attribute, capture_for, check
from .base import (
    Attribution,
    Context,
    Method,
    MethodInfo,
    MissingCapture,
    MissingExtra,
    Needs,
    Param,
    Result,
    default_faithfulness_methods,
    get_method,
    method_names,
    methods,
    register_method,
)

__all__ = [
    "Attribution",
    "Context",
    "Method",
    "MethodInfo",
    "MethodSpec",
    "MissingCapture",
    "MissingExtra",
    "Needs",
    "Param",
    "Result",
    "attribute",
    "capture_for",
    "check",
    "default_faithfulness_methods",
    "get_method",
    "method_names",
    "methods",
    "register_method",
]
