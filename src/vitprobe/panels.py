"""``Panels``: the labelled maps a figure shows beside the image, built when something reads them.

A method's ``compute`` returns its maps and detail at once; the extra panels (every head, the
mean / max / min over heads or layers, filter tiles) only matter to a figure, so a method may hand
them over as ``Panels(build)`` and ``build()`` runs the first time they are read (drawn, iterated,
indexed, counted). ``vp.attribute(capture, ...)`` for the maps or the detail alone never builds them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    import torch

Panel = tuple[str, "torch.Tensor"]


class Panels(Sequence[Panel]):
    """A list of (label, maps (B, H, W)) pairs computed by ``build`` on first use, then kept.

    Always true in a boolean test without building (a method's figure has at least one panel)."""

    def __init__(self, build: Callable[[], Sequence[Panel]]) -> None:
        self._build: Callable[[], Sequence[Panel]] | None = build
        self._items: list[Panel] | None = None

    @property
    def built(self) -> bool:
        """Whether ``build`` has run."""
        return self._items is not None

    def _get(self) -> list[Panel]:
        if self._items is None:
            items = list(self._build())
            if not items:
                raise ValueError("a method's panels must hold at least one map")
            self._items, self._build = items, None
        return self._items

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._get())

    @overload
    def __getitem__(self, index: int) -> Panel: ...

    @overload
    def __getitem__(self, index: slice) -> list[Panel]: ...

    def __getitem__(self, index):
        return self._get()[index]

    def __iter__(self) -> Iterator[Panel]:
        return iter(self._get())

    def __add__(self, other: Sequence[Panel]) -> list[Panel]:
        return [*self._get(), *other]

    def __radd__(self, other: Sequence[Panel]) -> list[Panel]:
        return [*other, *self._get()]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # a mutable-looking sequence, as list

    def __repr__(self) -> str:
        if self._items is None:
            return "Panels(not built yet)"
        return f"Panels({', '.join(label for label, _ in self._items)})"
