"""``occlusion``: occlusion sensitivity (Zeiler & Fergus 2014) through Captum, one patch per window."""

from __future__ import annotations

from typing import Any

from .base import Context, Needs, Param, Result, register_method
from .params import TARGET
from .pixel_attribution import BASELINE, CaptumMethod, baseline_pixels, captum_attr, pixel_result, prepared

WINDOW_BATCH = Param("window_batch", 16, "occluded images scored per forward pass (Captum's perturbations_per_eval)",
                     "int", low=1)


@register_method
class Occlusion(CaptumMethod):
    """y(x) − y(x with one patch replaced by the ``baseline``), by Captum's ``Occlusion`` with a window of
    one patch (all channels) and a stride of one patch, so each pixel holds its own patch's score drop;
    summed over colour channels and the patch's pixels (3 · P² times the drop). Detail: ``pixels``."""

    name = "occlusion"
    summary = "occlusion (Captum): the score drop when each patch is replaced by the baseline"
    params = (TARGET, BASELINE, WINDOW_BATCH)
    requires = ("model",)
    details = {"pixels": "(B, H_in, W_in) the score drop at each input pixel, summed over colour channels"}

    def needs(self, ctx: Context, p: dict[str, Any]) -> Needs:
        return Needs()

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        attr = captum_attr()
        pixels, scores = prepared(ctx, p)
        gh, gw = ctx.layout.grid_hw
        window = (pixels.shape[1], pixels.shape[2] // gh, pixels.shape[3] // gw)
        values = attr.Occlusion(scores.scores).attribute(
            pixels, sliding_window_shapes=window, strides=window,
            baselines=baseline_pixels(ctx, pixels, p["baseline"]), target=scores.index.to(pixels.device),
            perturbations_per_eval=p["window_batch"])
        return pixel_result(self.name, f"occlusion ({p['baseline']} baseline)", values, ctx, scores)
