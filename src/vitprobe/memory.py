"""Batches that shrink instead of dying.

An allocation failure — CUDA out of memory (``torch.cuda.OutOfMemoryError``), the CPU allocator's
``not enough memory`` / ``can't allocate memory`` ``RuntimeError``, or a ``MemoryError`` — makes
``BatchSize.run`` try the batch again at half its size, down to one item, with one warning naming the
size that worked; later batches start at that size. One item that does not fit even alone is an
``OutOfMemory`` error naming the memory the failed allocation asked for.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

R = TypeVar("R")

_PHRASES = ("out of memory", "not enough memory", "can't allocate memory")
_ASKED = (
    re.compile(r"tried to allocate (\d+) bytes", re.IGNORECASE),  # CPU allocator: a byte count
    re.compile(r"(?:tried|unable) to allocate (\d+(?:\.\d+)? [KMGTPE]?i?B)", re.IGNORECASE),  # CUDA, NumPy
)
_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")


class OutOfMemory(RuntimeError):
    """One item does not fit in memory even alone; ``asked`` is what the failed allocation asked for."""

    def __init__(self, asked: str) -> None:
        super().__init__(f"out of memory (asked for {asked} at batch size 1)")
        self.asked = asked


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (CUDA, CPU allocator, NumPy or Python)."""
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(phrase in str(err) for phrase in _PHRASES)


def _readable(n_bytes: int) -> str:
    size, unit = float(n_bytes), 0
    while size >= 1024 and unit < len(_UNITS) - 1:
        size, unit = size / 1024, unit + 1
    return f"{n_bytes} bytes" if unit == 0 else f"{size:.1f} {_UNITS[unit]}"


def asked_for(err: BaseException) -> str:
    """The size the failed allocation asked for, as its message gives it ("2.0 GiB"); "an unknown amount"
    where the message does not say."""
    if isinstance(err, OutOfMemory):
        return err.asked
    text = str(err)
    count = _ASKED[0].search(text)
    if count:
        return _readable(int(count.group(1)))
    size = _ASKED[1].search(text)
    return size.group(1) if size else "an unknown amount"


def _release() -> None:
    """Give the memory of the failed attempt back to the device before trying again."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def one_item() -> Iterator[None]:
    """Inside, an allocation failure is raised again as ``OutOfMemory`` (the work is one item already)."""
    try:
        yield
    except OutOfMemory:
        raise
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        asked = asked_for(err)
    else:
        return
    _release()  # outside the handler: the failed attempt's tensors are no longer held by its traceback
    raise OutOfMemory(asked)


class BatchSize:
    """How many items go through the model at once: ``size`` at first, halved whenever a batch runs out of
    memory, kept for the batches after. ``what`` names the job in the warning."""

    def __init__(self, size: int, what: str) -> None:
        if size < 1:
            raise ValueError(f"batch size must be at least 1, got {size}")
        self.size = size
        self.what = what
        self._failed: tuple[int, str] | None = None  # the first batch that was halved, and what it asked for
        self._told = False

    def run(self, n: int, step: Callable[[slice], R],
            skip: Callable[[int, OutOfMemory], None] | None = None) -> list[tuple[slice, R]]:
        """``step`` over consecutive slices of ``range(n)``, each at most ``size`` long: [(slice, result)] in
        order. A slice that runs out of memory is tried again in halves; an item that fails alone is given
        to ``skip(index, error)`` and left out, or raises ``OutOfMemory`` without ``skip``."""
        done: list[tuple[slice, R]] = []
        start = 0
        while start < n:
            span = slice(start, min(start + self.size, n))
            try:
                result = step(span)
            except Exception as err:
                if not is_out_of_memory(err):
                    raise
                asked = asked_for(err)
            else:
                self._note_success(span.stop - span.start)
                done.append((span, result))
                start = span.stop
                continue
            _release()  # outside the handler: the failed attempt's tensors are no longer held by its traceback
            width = span.stop - span.start
            if width > 1:
                self._failed = self._failed or (width, asked)
                self.size = width // 2
                continue
            if skip is None:
                raise OutOfMemory(asked)
            skip(start, OutOfMemory(asked))
            start += 1
        return done

    def _note_success(self, width: int) -> None:
        if self._failed is not None and not self._told:
            failed, asked = self._failed
            log.warning("%s: out of memory at batch size %d (asked for %s); batch size %d worked and is used from "
                        "here on", self.what, failed, asked, width)
            self._told = True
