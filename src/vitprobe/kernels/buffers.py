"""Large output buffers that the kernels fill: the (L, B, T, T) head-fused stack of rollout and the like.

A fresh CPU buffer of hundreds of MB is paid for page by page when it is first written: 720 MB for
DINOv2-S/14@518, batch 8, added 0.8 s to a 3.4 s forward pass here, while writing the same bytes into
memory already touched added 0.05-0.2 s. So the last large buffer is kept for the next capture of the
same size (dataset batches, a loop over images): it is handed out again only once nothing refers to it
any more (no tensor, view or Capture), and at most ``KEEP_BYTES`` are kept while unused
(``release()`` frees them). New ones ask Linux for transparent huge pages (``madvise``), which halves
the cost of their first touch where the kernel allows it.
"""

from __future__ import annotations

import ctypes
import sys
import threading

import numpy as np
import torch

KEEP_BYTES = 4 << 30
"""The most memory kept for reuse while no capture uses it."""

_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_LEAST_BYTES = 64 << 20  # smaller buffers are cheap to fault in: plain torch.empty

_lock = threading.Lock()
_pool: list[np.ndarray] = []  # float32 arrays whose memory backs the buffers handed out


def _advise_huge_pages(array: np.ndarray) -> None:
    """Ask for 2 MiB pages over the whole huge pages inside ``array`` (ignored where refused)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        madvise = ctypes.CDLL(None).madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    start = -(-array.ctypes.data // _HUGE_PAGE) * _HUGE_PAGE
    length = (array.ctypes.data + array.nbytes - start) // _HUGE_PAGE * _HUGE_PAGE
    if length > 0:
        madvise(start, length, _MADV_HUGEPAGE)


def _unused(array: np.ndarray) -> bool:
    """Whether only the pool refers to ``array`` (a tensor made from it holds a reference while it lives)."""
    return sys.getrefcount(array) <= 4  # the pool's list, the caller's name, this parameter, getrefcount's own


def empty_buffer(shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """An uninitialised float32 tensor of ``shape`` on ``device``; large CPU ones reuse kept memory."""
    device = torch.device(device)
    n = int(np.prod(shape))
    nbytes = 4 * n
    if device.type != "cpu" or nbytes < _LEAST_BYTES:
        return torch.empty(shape, device=device)
    with _lock:
        chosen = next((a for a in _pool if a.size == n and _unused(a)), None)
        if chosen is None:
            chosen = np.empty(n, dtype=np.float32)
            _advise_huge_pages(chosen)
        # keep the buffers in use (to reuse once freed) and this one; drop every other free one
        _pool[:] = [a for a in _pool if a is chosen or not _unused(a)]
        if all(a is not chosen for a in _pool) and nbytes <= KEEP_BYTES:
            _pool.append(chosen)
        # from a reshaped array, not a .view() of a flat tensor: slices of the result then have it as their
        # _base, which is how capture.stack_layers knows they are one (L, B, T, T) tensor and copies nothing
        return torch.from_numpy(chosen.reshape(shape))


def release() -> None:
    """Forget the kept buffers (memory still in use is freed once its tensors are)."""
    with _lock:
        _pool.clear()
