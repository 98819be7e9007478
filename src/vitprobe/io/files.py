"""Files written safely: whole or not at all, with the modes the user's umask gives, and one line when the
disk is full.

- ``atomic_write(path, write)``: ``write`` fills a temporary file in the same folder, which is synced,
  given the umask's mode (``tempfile`` would leave 0600) and renamed onto ``path``: a crash, a kill or
  a full disk leaves the old file or the new one, never half of one.
- ``DiskFull``: raised instead of ``OSError(ENOSPC / EDQUOT)``; ``str()`` names the file and the free
  space, one line.
- ``default_mode`` / ``share``: the modes a new file or folder gets from the umask, applied to what
  ``tempfile`` created.
- ``jsonable``: a value made of tensors, arrays, tuples and floats as JSON writes it (NaN as null).
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

TMP_PREFIX = ".tmp-"
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFull(OSError):
    """No space (or quota) left while writing ``path``; ``str()`` is one line with the free space."""

    def __init__(self, path: str | Path, what: str = "") -> None:
        super().__init__(errno.ENOSPC, "no space left on device")
        self.path = Path(path)
        self.what = what

    def __str__(self) -> str:
        folder = next((p for p in (self.path, *self.path.parents) if p.exists()), Path("/"))
        free = shutil.disk_usage(folder).free
        what = f" ({self.what})" if self.what else ""
        return f"{self.path}{what}: no space left on the device ({_amount(free)} free there); free some and run again"


def _amount(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def default_mode(directory: bool = False) -> int:
    """The mode the umask gives a new file (0o666 & ~umask) or folder (0o777 & ~umask)."""
    return (0o777 if directory else 0o666) & ~_umask()


def share(path: str | Path) -> None:
    """Give ``path`` (made by ``tempfile``, so 0600 or 0700) the mode a plain new file or folder would get."""
    path = Path(path)
    os.chmod(path, default_mode(path.is_dir()))


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], what: str = "") -> Path:
    """Write ``path`` whole or not at all: ``write(f)`` fills a synced temporary file in the same folder, which
    gets the umask's mode and is renamed onto ``path``. A full disk raises ``DiskFull`` (``what`` says what
    was being written) and leaves no temporary file behind. Returns ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    except OSError as err:
        if err.errno in FULL_ERRNOS:
            raise DiskFull(path, what) from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        share(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in FULL_ERRNOS and not isinstance(err, DiskFull):
            raise DiskFull(path, what) from None
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, what: str = "") -> Path:
    return atomic_write(path, lambda f: f.write(data), what)


def atomic_write_text(path: str | Path, text: str, what: str = "") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), what)


def jsonable(value: Any) -> Any:
    """``value`` with tensors and arrays as lists, tuples as lists and NaN as None, in dicts and lists too."""
    if hasattr(value, "tolist") and not isinstance(value, (int, float, str)):  # torch.Tensor, np.ndarray, np scalars
        value = value.tolist()
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value
