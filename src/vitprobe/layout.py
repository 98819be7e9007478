"""Token layout of a ViT sequence: prefix tokens first, then the patch grid in row-major order; for video
models a time axis of tubelet steps as well."""

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
    ``("cls", "reg0", ..., "reg3")``) followed by the patch tokens of the grid ``grid_hw = (H, W)``.
    ``patch_size`` is in input pixels.

    Images: ``time_steps`` is None and the ``H * W`` patch tokens come in row-major order; maps are (H, W).
    Video models: ``time_steps`` = t tubelet steps, each covering ``tubelet`` input frames, so there are
    ``t * H * W`` patch tokens and maps are (t, H, W). The model's own token order is (t, row, col)
    row-major (time slowest: VideoMAE, ViViT, V-JEPA 2) or, with ``time_last``, (row, col, t) (time
    fastest: TimeSformer).
    """

    prefix_names: tuple[str, ...]
    grid_hw: tuple[int, int]
    patch_size: int
    time_steps: int | None = None
    tubelet: int = 1
    time_last: bool = False

    @property
    def n_prefix(self) -> int:
        return len(self.prefix_names)

    @property
    def has_time(self) -> bool:
        """Whether the patch tokens have a time axis (a video model)."""
        return self.time_steps is not None

    @property
    def n_steps(self) -> int:
        """Tubelet steps t (1 for an image)."""
        return 1 if self.time_steps is None else self.time_steps

    @property
    def map_shape(self) -> tuple[int, ...]:
        """The shape of one map on the patch grid: (H, W), or (t, H, W) for a video model."""
        return self.grid_hw if self.time_steps is None else (self.time_steps, *self.grid_hw)

    @property
    def n_patches(self) -> int:
        return self.n_steps * self.grid_hw[0] * self.grid_hw[1]

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.n_patches

    @property
    def n_frames(self) -> int:
        """Input frames the patch tokens cover, t * tubelet (1 for an image)."""
        return self.n_steps * self.tubelet

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

    def patch_index(self, row: int, col: int, step: int | None = None) -> int:
        """Token index of the patch at grid position (row, col), of tubelet step ``step`` for a video
        model (None: the middle step, t // 2)."""
        h, w = self.grid_hw
        if not (0 <= row < h and 0 <= col < w):
            raise IndexError(f"patch ({row}, {col}) is outside the {h}x{w} grid")
        if step is None:
            step = self.n_steps // 2
        elif not self.has_time and step != 0:
            raise IndexError(f"step {step}: an image has no time axis")
        if not 0 <= step < self.n_steps:
            raise IndexError(f"step {step} is outside the {self.n_steps} tubelet steps")
        if self.time_last:
            return self.n_prefix + (row * w + col) * self.n_steps + step
        return self.n_prefix + (step * h + row) * w + col

    def patch_positions(self) -> list[tuple[int, int, int]]:
        """(step, row, col) of every patch token in the model's token order (step 0 for an image)."""
        h, w, t = *self.grid_hw, self.n_steps
        if self.time_last:
            return [(s, r, c) for r in range(h) for c in range(w) for s in range(t)]
        return [(s, r, c) for s in range(t) for r in range(h) for c in range(w)]

    def to_dict(self) -> dict:
        out = {
            "prefix_tokens": list(self.prefix_names),
            "grid_hw": list(self.grid_hw),
            "patch_size": self.patch_size,
        }
        if self.has_time:
            out.update(time_steps=self.time_steps, tubelet=self.tubelet,
                       token_order="row, col, step" if self.time_last else "step, row, col")
        return out
