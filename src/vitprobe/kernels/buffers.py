"""Large output buffers that the kernels fill: the (L, B, T, T) head-fused stack of rollout and the like.

A fresh CPU tensor of hundreds of MB is paid for page by page when it is first written (720 MB for
DINOv2-S/14@518, batch 8: 0.15-0.9 s of page faults in 4 KiB pages on these machines, a sizeable
part of the forward pass). On Linux such buffers ask the kernel for transparent huge pages
(``madvise(MADV_HUGEPAGE)``, 2 MiB pages: about 2-3× less time here); where that is not available
the request is ignored and the buffer is an ordinary ``torch.empty``.
"""

from __future__ import annotations

import ctypes
import sys

import torch

_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_LEAST_BYTES = 64 << 20  # smaller buffers: not worth a system call

_madvise = None
if sys.platform.startswith("linux"):
    try:
        _madvise = ctypes.CDLL(None, use_errno=True).madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        _madvise = None


def empty_buffer(shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """``torch.empty(shape)`` in float32 on ``device``; large CPU buffers backed by huge pages where possible."""
    out = torch.empty(shape, device=device)
    nbytes = out.numel() * out.element_size()
    if _madvise is not None and out.device.type == "cpu" and nbytes >= _LEAST_BYTES:
        start = -(-out.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE  # the whole huge pages inside the buffer
        length = (out.data_ptr() + nbytes - start) // _HUGE_PAGE * _HUGE_PAGE
        if length > 0:
            _madvise(start, length, _MADV_HUGEPAGE)  # a refusal (EINVAL, THP off) leaves ordinary pages
    return out
