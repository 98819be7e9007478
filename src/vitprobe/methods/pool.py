"""``pool``: where an attention-pooling head looks. SigLIP has no CLS token; its image embedding is a
learned probe's attention over every output token, so that attention is the model's own map of what
summarises the image."""

from __future__ import annotations

from typing import Any

from ..analysis.maps import to_grid
from ..fusion import FUSIONS, fuse_heads
from ..panels import Panels
from .base import Context, Method, Needs, Result, register_method
from .cls import pick_heads
from .params import HEAD, HEAD_FUSION


@register_method
class PoolAttention(Method):
    """Detail: ``heads`` (B, heads, H, W) the probe's attention probabilities over the patches (each
    head's row sums to 1 over all tokens). Panels: every head, then the mean / max / min over heads."""

    name = "pool"
    measured_by_default = False
    summary = "attention-pooling head's probe attention over the patches (SigLIP), per head and head-fused"
    params = (HEAD_FUSION, HEAD)
    requires = ("pool",)
    details = {"heads": "(B, heads, H, W) the pooling probe's attention over the patches, per head"}

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        if ctx.model is not None and ctx.model.pool is None:
            raise ValueError(f"method 'pool': {ctx.model_name} has no attention-pooling head (SigLIP has one)")
        return Needs(pool=True)

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        heads = to_grid(ctx.capture.pool, ctx.layout)  # (B, heads, H, W)
        maps, which = pick_heads(heads, p)
        panels = Panels(lambda: [*((f"head {i}", heads[:, i]) for i in range(heads.shape[1])),
                                 *((f"head {how}", fuse_heads(heads, how)) for how in FUSIONS)])
        return Result(maps, f"attention pooling, {which}", {"heads": heads}, panels)
