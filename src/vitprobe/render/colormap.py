"""Scale maps to [0, 1] and turn them into RGB with matplotlib colormaps (no pyplot)."""

from __future__ import annotations

import matplotlib
import numpy as np
import torch

MapLike = torch.Tensor | np.ndarray

NORMALIZE_MODES = ("minmax", "none")


def as_numpy(values: MapLike) -> np.ndarray:
    """A tensor (any device or dtype) or array-like as a float64 numpy array of the same shape."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def value_range(
    values: MapLike, vmin: float | None = None, vmax: float | None = None, clip: float | None = None
) -> tuple[float, float]:
    """The (low, high) bounds min-max scaling uses: ``vmin`` / ``vmax`` where given, else the map's min and
    its max, or its ``clip`` percentile (in (0, 100]) so a few extreme patches (e.g. DINOv2's artifact
    tokens) saturate instead of leaving the rest of the map dark."""
    arr = as_numpy(values)
    if clip is not None and not 0.0 < clip <= 100.0:
        raise ValueError(f"clip is a percentile in (0, 100], got {clip}")
    lo = float(arr.min()) if vmin is None else float(vmin)
    top = arr.max() if clip is None else np.percentile(arr, clip)
    hi = float(top if vmax is None else vmax)
    return lo, hi


def is_signed(values: MapLike) -> bool:
    """Whether a map holds both negative and positive values (drawn centred at zero)."""
    arr = as_numpy(values)
    return bool(arr.size) and float(np.nanmin(arr)) < 0.0 < float(np.nanmax(arr))


def signed_range(values: MapLike, clip: float | None = None) -> tuple[float, float]:
    """(−m, m): m the largest absolute value of a map, or its ``clip`` percentile (in (0, 100])."""
    magnitude = np.abs(as_numpy(values))
    m = float(magnitude.max() if clip is None else np.percentile(magnitude, clip))
    return -m, m


def normalize(
    values: MapLike, mode: str = "minmax", vmin: float | None = None, vmax: float | None = None,
    clip: float | None = None,
) -> np.ndarray:
    """Scale a map (..., H, W) to float64 values in [0, 1].

    - ``"minmax"``: ``(x - lo) / (hi - lo)`` clipped to [0, 1], where ``lo`` / ``hi`` are ``vmin`` /
      ``vmax`` if given, else the map's min / max. When ``hi <= lo`` (e.g. a constant map) there is no
      contrast to show and the result is all zeros, never NaN. ``clip`` takes ``hi`` from a percentile
      instead of the max (see ``value_range``).
    - ``"none"``: the values are taken as already in [0, 1] and only clipped; ``vmin`` / ``vmax`` /
      ``clip`` are not allowed.
    """
    arr = as_numpy(values)
    if mode == "none":
        if vmin is not None or vmax is not None or clip is not None:
            raise ValueError("vmin / vmax / clip only apply to mode='minmax'")
        return np.clip(arr, 0.0, 1.0)
    if mode != "minmax":
        raise ValueError(f"unknown normalize mode {mode!r}; use one of {NORMALIZE_MODES}")
    lo, hi = value_range(arr, vmin, vmax, clip)
    if not hi > lo:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def colorize(map2d: MapLike, cmap: str = "inferno", vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Colour a map (H, W) with a matplotlib colormap: min-max scaled (see ``normalize``) -> (H, W, 3) uint8."""
    arr = as_numpy(map2d)
    if arr.ndim != 2:
        raise ValueError(f"colorize expects a map (H, W), got shape {tuple(arr.shape)}")
    scaled = normalize(arr, "minmax", vmin, vmax)
    return matplotlib.colormaps[cmap](scaled, bytes=True)[..., :3]
