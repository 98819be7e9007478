"""The C++ kernel (``attention.cpp``): compiled on first use with torch's extension loader, cached.

One task per (image, tile of query rows) on torch's intra-op threads; per head the tile's scores are
computed once by BLAS, softmaxed exactly, reduced as the request asks and multiplied by V while they
are in cache. The build is cached under ``<vitprobe cache>/kernels/`` (or ``$VITPROBE_KERNEL_CACHE``),
keyed by the source, torch, Python and the CPU, and compiled once however many processes start together
(torch's loader holds a lock in the build folder). Without a C++ compiler, ninja or OpenMP the loader
says so in one line and the torch-op kernel is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

from ..cache import cache_dir
from ..extras import missing_message
from .base import LayerRequest, LayerResult
from .torch_ops import allocate_statistics

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("attention.cpp")
FUSION_CODES = {"mean": 0, "max": 1, "min": 2}
_MIN_TILE_ROWS, _MAX_TILE_ROWS = 16, 128
"""Query rows per task. As many as the threads allow, whatever T: each tile reads all of one head's K and V
(2·T·d floats) for its q·kᵀ and P·V, so taller tiles read them fewer times. One layer, 2 threads, with the
head mean and P·V: T = 5330 b1 280 ms at 24 rows (a 512 KiB tile, the old L2-sized rule) and 219 ms at 96-128
(SDPA 176 ms); T = 1370 b8 119 ms at 96-128, 152 ms at 24."""

_lock = threading.Lock()
_loaded: dict[str, ModuleType | str] = {}  # "module" -> the extension, or "error" -> why it cannot load


def build_dir() -> Path:
    """``$VITPROBE_KERNEL_CACHE`` or ``<vitprobe cache>/kernels``, then one folder per build key."""
    explicit = os.environ.get("VITPROBE_KERNEL_CACHE")
    root = Path(explicit).expanduser() if explicit else cache_dir() / "kernels"
    return root / f"attention-{_build_key()}"


def _build_key() -> str:
    """Hash of what the compiled module depends on: the source, torch, Python, the CPU (-march=native)."""
    parts = [SOURCE.read_bytes(), torch.__version__.encode(), sys.version.encode(), platform.machine().encode()]
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        parts.append(flags.encode())
    except (OSError, StopIteration):
        parts.append(platform.processor().encode())
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _compiler() -> str | None:
    """The C++ compiler torch's loader will call ($CXX, else c++), or None when there is none."""
    return shutil.which(os.environ.get("CXX", "c++"))


def _load() -> ModuleType:
    from torch.utils import cpp_extension

    if _compiler() is None:
        raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'c++')}) found")
    if not cpp_extension.is_ninja_available():
        _put_ninja_on_path()
    if not cpp_extension.is_ninja_available():
        raise RuntimeError(missing_message("the C++ kernel", "ninja", None))
    directory = build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    name = "vitprobe_attention_" + directory.name.split("-")[-1]
    if not any(directory.glob(f"{name}*.so")):
        log.warning("compiling the attention kernel once (about a minute) into %s", directory)
    flags = ["-O3", "-march=native", "-fopenmp"]
    return cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                              build_directory=str(directory), verbose=False)


def _put_ninja_on_path() -> None:
    """The ninja of the ``ninja`` package (a dependency) for torch's loader, when the environment's bin
    folder is not on PATH (vitprobe started by its full path)."""
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def module() -> ModuleType | None:
    """The compiled extension (built on the first call), or None when it cannot be built or loaded."""
    with _lock:
        if not _loaded:
            try:
                _loaded["module"] = _load()
            except Exception as err:  # any failure of the toolchain: the torch-op kernel takes over
                lines = str(err).strip().splitlines()
                why = lines[-1] if lines else repr(err)
                _loaded["error"] = f"the C++ attention kernel cannot be built ({why})"
        return _loaded.get("module")


def unavailable(device: torch.device) -> str | None:
    """Why this kernel cannot compute on ``device``; None when it can."""
    if device.type != "cpu":
        return f"the C++ attention kernel runs on the CPU, not on {device.type}"
    if module() is None:
        return str(_loaded["error"])
    return None


def tile_rows(batch: int, n_tokens: int, threads: int) -> int:
    """Query rows per task: ``_MAX_TILE_ROWS``, halved (down to ``_MIN_TILE_ROWS``) while the tasks would
    not give every thread eight (few tasks leave some threads idle at the end)."""
    rows = _MAX_TILE_ROWS
    while rows > _MIN_TILE_ROWS and batch * -(-n_tokens // rows) < 8 * threads:
        rows = max(_MIN_TILE_ROWS, rows // 2)
    return max(1, min(rows, n_tokens))


def _rows_float32(x: torch.Tensor) -> torch.Tensor:
    """x as float32 with a unit stride in its last dimension (strided views stay views)."""
    x = x.float()
    return x if x.stride(-1) == 1 else x.contiguous()


def attend(
    q: torch.Tensor, k: torch.Tensor, scale: float, request: LayerRequest, values: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> LayerResult:
    """``torch_ops.attend``'s contract, computed by the compiled kernel (CPU tensors)."""
    if request.block_reducers:
        raise ValueError("RowReducers are fed blocks by the torch-op kernel only")
    ext = module()
    batch, heads, t, _ = q.shape
    result = LayerResult("cpp")
    if request.cls_index is not None:
        result.cls = torch.empty(batch, heads, t)
    if request.full:
        result.full = torch.empty(batch, heads, t, t)
    allocate_statistics(request, result, (batch, heads, t), q.device)
    if values is not None:
        result.output = torch.empty(batch, heads, t, values.shape[-1])
    if bias is not None:
        bias = bias.float().expand(batch, heads, t, t)
        bias = bias if bias.stride(-1) == 1 else bias.contiguous()
    fused = {how: out if out.is_contiguous() else torch.empty(out.shape) for how, out in request.fuse.items()}
    weights = [w.float().contiguous() for w in request.dots.values()]
    starts = sorted(request.masses)
    ext.attend(
        _rows_float32(q), _rows_float32(k), None if values is None else _rows_float32(values), float(scale), bias,
        -1 if request.cls_index is None else request.cls_index, result.cls,
        list(fused.values()), [FUSION_CODES[how] for how in fused], result.full, result.output, result.entropy,
        weights, list(result.dots.values()), starts, [result.masses[s] for s in starts],
        tile_rows(batch, t, torch.get_num_threads()),
    )
    for how, out in request.fuse.items():
        if fused[how] is not out:
            out.copy_(fused[how])
    return result
