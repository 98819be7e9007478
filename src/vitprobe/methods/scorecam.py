"""``scorecam``: Score-CAM (Wang et al. 2020), channels weighted by the score of the image they mask."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from ..analysis.cam import score_masks, scorecam
from ..memory import BatchSize
from .base import Context, Param, Result, register_method
from .cam import CAM_LAYER, CamMethod, cam_inputs, cam_result
from .params import TARGET

MASK_BATCH = Param("mask_batch", 32, "masked images scored per forward pass (halved where they do not fit)", "int",
                   low=1)


@register_method
class ScoreCam(CamMethod):
    """ReLU(Σₖ wₖ Aₖ), w = softmax over k of the target's score of the image multiplied by channel k of
    block ``layer``'s input tokens (bilinearly upsampled, corners aligned, min–max scaled to [0, 1]),
    as pytorch-grad-cam's ScoreCAM; the score is the class logit, the embedding projection or the prompt
    logit (``target``). One forward pass per channel and image: D × B images in all."""

    name = "scorecam"
    measured_by_default = False
    summary = "Score-CAM: channels weighted by the softmax of the scores of the images they mask (no gradients)"
    params = (TARGET, CAM_LAYER, MASK_BATCH)
    requires = ("model",)
    details = {}

    def compute(self, ctx: Context, p: dict[str, Any]) -> Result:
        cam = cam_inputs(ctx, p, gradients=False)
        _, pixels = ctx.model_and_pixels()
        masks = score_masks(cam.channels, tuple(pixels.shape[-2:]))  # (B, D, H_in, W_in)
        batch, channels = masks.shape[:2]
        scores = torch.empty(batch, channels)
        sizer = BatchSize(p["mask_batch"], "scorecam")
        with tqdm(total=batch * channels, desc="scorecam", unit="image", leave=False,
                  disable=batch * channels < 256) as bar, torch.no_grad():
            for b in range(batch):
                column = int(cam.scores.index[b])

                def score(span: slice, b: int = b, column: int = column) -> torch.Tensor:
                    copies = pixels[b][None] * masks[b, span, None].to(pixels.device, pixels.dtype)
                    values = cam.scores.scores(copies)[:, column].cpu()
                    bar.update(span.stop - span.start)
                    return values

                for span, values in sizer.run(channels, score):
                    scores[b, span] = values
        return cam_result(self.name, "Score-CAM", scorecam(cam.channels, scores), cam)
