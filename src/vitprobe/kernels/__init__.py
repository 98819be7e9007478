"""Attention kernels: one block interface (``base``), three implementations, chosen per layer.

- ``torch``: blocked torch ops (``torch_ops``), any device, every request; the reference.
- ``cpp``: a C++ kernel compiled on first use (``cpp``), CPU, float32 arithmetic.
- ``triton``: a Triton kernel (``triton``), CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.

``VITPROBE_KERNEL`` = ``auto`` (default: ``cpp`` on CPU, ``triton`` on CUDA where importable, else
``torch``) | ``cpp`` | ``triton`` | ``torch``. A kernel that cannot run says why in one log line, once,
and the torch-op kernel computes the layer. Requests with ``RowReducer``s always take the torch-op kernel.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from importlib import import_module
from importlib.util import find_spec
from types import ModuleType

import torch

from .base import LayerRequest, LayerResult

log = logging.getLogger(__name__)

KERNELS = ("auto", "cpp", "triton", "torch")
"""The values ``VITPROBE_KERNEL`` takes."""

Kernel = Callable[..., LayerResult]
"""``kernel(q, k, scale, request, values=None, bias=None) -> LayerResult`` (see ``torch_ops.attend``)."""

_NOTICED: set[str] = set()


def kernel_choice() -> str:
    """The kernel asked for by ``VITPROBE_KERNEL`` (``auto`` when unset); ``ValueError`` for anything else."""
    choice = os.environ.get("VITPROBE_KERNEL", "auto").strip().lower() or "auto"
    if choice not in KERNELS:
        raise ValueError(f"VITPROBE_KERNEL={choice!r} is not a kernel; use one of {', '.join(KERNELS)}")
    return choice


def _notice(reason: str) -> None:
    if reason not in _NOTICED:
        _NOTICED.add(reason)
        log.warning("%s; attention statistics use the torch-op kernel", reason)


def resolve_kernel(device: torch.device, request: LayerRequest | None = None) -> str:
    """The name of the kernel ("cpp", "triton" or "torch") that computes ``request`` (any request: None) for
    tensors on ``device``, as ``VITPROBE_KERNEL`` asks; one log line, once, where the asked one cannot run."""
    choice = kernel_choice()
    if choice == "torch" or (request is not None and request.block_reducers):
        return "torch"
    if choice == "auto":
        choice = {"cpu": "cpp", "cuda": "triton"}.get(device.type, "torch")
        if choice == "triton" and find_spec("triton") is None:
            return "torch"
    if choice == "torch":
        return "torch"
    reason = _implementation(choice).unavailable(device)
    if reason is not None:
        _notice(reason)
        return "torch"
    return choice


def select_kernel(device: torch.device, request: LayerRequest) -> Kernel:
    """The kernel that computes ``request`` for tensors on ``device`` (see ``resolve_kernel``)."""
    return _implementation(resolve_kernel(device, request)).attend


def _implementation(name: str) -> ModuleType:
    return import_module(f".{'torch_ops' if name == 'torch' else name}", __name__)


__all__ = ["KERNELS", "Kernel", "kernel_choice", "resolve_kernel", "select_kernel"]
