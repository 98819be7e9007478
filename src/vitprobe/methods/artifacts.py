"""The ``artifacts`` parameter shared by the CLS-based methods: the map with its artifact patches masked.

Artifact tokens ("Vision Transformers Need Registers") are patch tokens of outlier norm that soak up
attention and show as isolated bright patches. With ``artifacts="mask"`` a method's map has them
replaced by the median of their neighbours before it is drawn or normalised; the raw map stays in
``detail["raw"]`` and in the panels, labelled, and ``detail["artifacts"]`` (B, H, W) holds the mask.
"""

from __future__ import annotations

from typing import Any

from ..analysis.tokens import artifact_mask, fill_masked, patch_norms
from ..panels import Panels
from .base import Context, Needs, Param, Result

ARTIFACTS = Param("artifacts", "keep", "mask artifact patches (outlier-norm tokens, isolated peaks) out of the map",
                  "choice", choices=("keep", "mask"))

ARTIFACT_DETAILS = {
    "raw": "(B, H, W) the map before its artifact patches were masked (artifacts=mask only)",
    "artifacts": "(B, H, W) 1 at each masked artifact patch, else 0 (artifacts=mask only)",
}
"""The detail a method with the ``artifacts`` parameter adds (declare it in the method's ``details``)."""


def artifact_needs(p: dict[str, Any]) -> Needs:
    """Token norms are recorded when artifacts are masked."""
    return Needs(token_norms=p["artifacts"] == "mask")


def masked(ctx: Context, p: dict[str, Any], result: Result) -> Result:
    """``result`` with its maps' artifact patches masked (when asked): outlier norms of the last recorded
    layer's output tokens, and isolated peaks of the map."""
    if p["artifacts"] == "keep":
        return result
    cap = ctx.capture
    norms = patch_norms(cap.token_norms[-1], ctx.layout).reshape(result.maps.shape)
    mask = artifact_mask(result.maps, norms)
    maps = fill_masked(result.maps, mask)
    counts = sorted({int(n) for n in mask.flatten(1).sum(1)})
    words = " or ".join(map(str, counts))
    panels = Panels(lambda: [("artifacts masked", maps), ("raw (artifacts kept)", result.maps),
                             *[(label, m) for label, m in result.panels if m is not result.maps]])
    return Result(maps, f"{result.title}, {words} artifact patch{'es' * (counts != [1])} masked",
                  {**result.detail, "raw": result.maps, "artifacts": mask.float()}, panels, result.targets,
                  result.logits, result.marks)
