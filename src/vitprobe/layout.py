"""Token layout of a ViT sequence: prefix tokens first, then the patch grid in row-major order."""

from __future__ import annotations

from dataclasses import dataclass

NO_CLS_MESSAGE = (
    "this model has no CLS token, so a CLS attention map is undefined; "
    "use query-patch maps, attention distance or entropy instead"
)


@dataclass(frozen=True)
class TokenLayout:
    """Where each token of a (B, T, D) sequence comes from.

    Tokens are ``prefix_names`` (e.g. ``("cls",)``, ``("cls", "distillation")``,
    ``("cls", "reg0", ..., "reg3")``) followed by ``H * W`` patch tokens in row-major order
    of the patch grid ``grid_hw = (H, W)``. ``patch_size`` is in input pixels.
    """

    prefix_names: tuple[str, ...]
    grid_hw: tuple[int, int]
    patch_size: int

    @property
    def n_prefix(self) -> int:
        return len(self.prefix_names)

    @property
    def n_patches(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.n_patches

    @property
    def has_cls(self) -> bool:
        return "cls" in self.prefix_names

    @property
    def cls_index(self) -> int:
        """Index of the CLS token; raises when the model has none (a CLS map is undefined)."""
        if not self.has_cls:
            raise ValueError(NO_CLS_MESSAGE)
        return self.prefix_names.index("cls")

    @property
    def input_hw(self) -> tuple[int, int]:
        """Pixels covered by the patch grid, (H * patch, W * patch)."""
        return self.grid_hw[0] * self.patch_size, self.grid_hw[1] * self.patch_size

    def patch_index(self, row: int, col: int) -> int:
        """Token index of the patch at grid position (row, col)."""
        h, w = self.grid_hw
        if not (0 <= row < h and 0 <= col < w):
            raise IndexError(f"patch ({row}, {col}) is outside the {h}x{w} grid")
        return self.n_prefix + row * w + col

    def to_dict(self) -> dict:
        return {
            "prefix_tokens": list(self.prefix_names),
            "grid_hw": list(self.grid_hw),
            "patch_size": self.patch_size,
        }
