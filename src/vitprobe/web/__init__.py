"""Local web demo (optional extra ``web``): ``build_demo(models)`` returns a ``gradio.Blocks`` app."""

from .app import DemoBackend, DemoHandlers, View, build_demo

__all__ = ["DemoBackend", "DemoHandlers", "View", "build_demo"]
