"""Thresholds for attention maps: absolute, or relative to each map (fraction of max, percentile, Otsu).

Every threshold is resolved per map to one value ``t``; the map's "kept" patches are those with
``value >= t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("abs", "rel", "pct", "otsu")


@dataclass(frozen=True)
class Threshold:
    """How to turn a map into kept / dropped patches.

    - ``abs``: ``t = value``;
    - ``rel``: ``t = value * max(map)`` (a fraction of the map's maximum, e.g. 0.5);
    - ``pct``: ``t`` = the ``value``-th percentile of the map (linear interpolation);
    - ``otsu``: ``t`` = Otsu's threshold of the map's values (``value`` unused).
    """

    kind: str = "rel"
    value: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown threshold kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.kind == "pct" and not 0.0 <= self.value <= 100.0:
            raise ValueError(f"a percentile threshold must be in [0, 100], got {self.value}")

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """Read ``'abs:0.01'``, ``'rel:0.5'``, ``'pct:90'`` or ``'otsu'``."""
        kind, _, value = text.strip().partition(":")
        if kind == "otsu" and not value:
            return cls("otsu", 0.0)
        if kind not in KINDS or kind == "otsu" or not value:
            raise ValueError(f"threshold must be abs:V, rel:F, pct:P or otsu, got {text!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"threshold value must be a number, got {text!r}") from None
        return cls(kind, number)

    def __str__(self) -> str:
        return "otsu" if self.kind == "otsu" else f"{self.kind}:{self.value:g}"

    def values(self, maps: torch.Tensor) -> torch.Tensor:
        """The threshold of each map: maps (..., H, W) -> (...)."""
        flat = maps.detach().float().flatten(-2)
        if self.kind == "abs":
            return torch.full(flat.shape[:-1], self.value, dtype=flat.dtype, device=flat.device)
        if self.kind == "rel":
            return self.value * flat.amax(dim=-1)
        if self.kind == "pct":
            return torch.quantile(flat, self.value / 100.0, dim=-1)
        return otsu(flat)

    def mask(self, maps: torch.Tensor) -> torch.Tensor:
        """Kept patches ``map >= threshold``: maps (..., H, W) -> bool (..., H, W)."""
        return maps.detach().float() >= self.values(maps)[..., None, None]


OTSU = Threshold("otsu", 0.0)
"""The default threshold of the keypoint methods: needs no tuning per model or map scale."""


def otsu(values: torch.Tensor) -> torch.Tensor:
    """Otsu's threshold of each row, exactly (no histogram): values (..., N) -> (...).

    Every split of the sorted values into a low and a high class is tried; the one with the
    largest between-class variance ``w_low · w_high · (mean_low − mean_high)²`` wins and the
    threshold is the midpoint between the two classes' neighbouring values, so ``>=`` keeps the
    high class. A constant row has no split and returns its value (everything kept).
    """
    v = values.detach().double().sort(dim=-1).values
    n = v.shape[-1]
    if n < 2:
        return v[..., 0].to(values.dtype)
    k = torch.arange(1, n, dtype=v.dtype, device=v.device)  # size of the low class
    csum = v.cumsum(dim=-1)
    low_mean = csum[..., :-1] / k
    high_mean = (csum[..., -1:] - csum[..., :-1]) / (n - k)
    between = (k / n) * (1 - k / n) * (low_mean - high_mean) ** 2
    between = between.masked_fill(v[..., 1:] <= v[..., :-1], -1.0)  # no split inside a run of ties
    best = between.argmax(dim=-1, keepdim=True)
    split = (v.gather(-1, best) + v.gather(-1, best + 1)) / 2
    constant = between.amax(dim=-1, keepdim=True) < 0
    return torch.where(constant, v[..., :1], split)[..., 0].to(values.dtype)
