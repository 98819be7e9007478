"""``Style``: how every map is drawn — overlays, grids, report, video frames and keypoint overlays."""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import DEFAULT_CLIP

__all__ = ["DEFAULT_CLIP", "UPSAMPLE_MODES", "Style"]

UPSAMPLE_MODES = ("bilinear", "nearest")


@dataclass(frozen=True)
class Style:
    """``cmap`` (a matplotlib colormap), heat ``alpha`` over the image in [0, 1], ``clip`` (the
    percentile of each map drawn as the top of its colour scale, in (0, 100]; 100: its max),
    ``upsample`` from the patch grid to pixels ("bilinear" or "nearest") and whether figures carry a
    ``colorbar`` per panel. A map with both signs (Integrated Gradients, occlusion, AttnLRP, position
    similarities) is drawn in ``signed_cmap``, a diverging colormap centred at zero, from −m to m with m
    the ``clip`` percentile of its absolute values. Invalid values raise ``ValueError`` naming the option."""

    cmap: str = "inferno"
    alpha: float = 0.5
    clip: float = DEFAULT_CLIP
    upsample: str = "bilinear"
    colorbar: bool = True
    signed_cmap: str = "RdBu_r"

    def __post_init__(self) -> None:
        import matplotlib  # here, so the command line's option defaults import no matplotlib

        for cmap in (self.cmap, self.signed_cmap):
            if cmap not in matplotlib.colormaps:
                raise ValueError(f"--cmap takes a matplotlib colormap name (e.g. inferno, viridis), got {cmap!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"--alpha takes a value in [0, 1], got {self.alpha}")
        if not 0.0 < self.clip <= 100.0:
            raise ValueError(f"--clip takes a percentile in (0, 100], got {self.clip}")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"--upsample takes {' or '.join(UPSAMPLE_MODES)}, got {self.upsample!r}")

    def describe(self) -> str:
        """The colour scale in words, for summaries and captions."""
        top = "its max" if self.clip >= 100 else f"its {self.clip:g}th percentile"
        return f"each map from its min to {top}"
