"""Bring your own attention: vitprobe maps from the arrays a Keras ViT returns, no TensorFlow needed here.

The Keras ViT ports (keras.io "Investigating Vision Transformer representations", probing-vits)
return ``predictions, attention_score_dict = model.predict(x)``: one softmax array
(B, heads, T, T) per block under "transformer_block_{i}_att". In the Keras session save them,
and the image the model saw:

    np.savez("scores.npz", **attention_score_dict)
    keras.utils.save_img("seen.png", image_224)        # after resize and crop

then run here:  python examples/keras_attention.py scores.npz seen.png --patch-size 16

Without arguments the example first writes such a file itself, in the same format, from the
offline DINOv2 (PyTorch, patch 14), so it runs without TensorFlow. Writes keras_out/.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import vitprobe as vp

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("scores", nargs="?", type=Path, help="npz of attention_score_dict")
parser.add_argument("image", nargs="?", type=Path, help="the image the model saw")
parser.add_argument("--patch-size", type=int, default=16)
parser.add_argument("--prefix-tokens", type=int, default=1, help="2 for DeiT distilled (CLS + distillation)")
args = parser.parse_args()
out = Path("keras_out")
out.mkdir(exist_ok=True)

if args.scores is None:  # stand-in for the Keras session: the same dict format, from a PyTorch model
    photo = vp.write_samples(out, ["chelsea"])[0]
    model = vp.load()
    cap = model.capture(photo, size=(224, 224), full_layers=range(model.num_layers))
    args.scores, args.image, args.patch_size = out / "scores.npz", out / "seen.png", model.patch_size
    np.savez_compressed(args.scores, **{f"transformer_block_{i}_att": a.numpy() for i, a in cap.full.items()})
    cap.images[0].resize((224, 224), Image.Resampling.BICUBIC).save(args.image)

# What a Keras user runs: arrays in, a Capture out. Blocks are ordered by their number.
scores = dict(np.load(args.scores))
print({name: array.shape for name, array in list(scores.items())[:2]}, "...")
cap = vp.from_attentions(
    scores, prefix_tokens=args.prefix_tokens, patch_size=args.patch_size, images=[args.image],
    reducers={"distance": vp.MeanDistance()},
)
print("layout:", cap.layout, "layers:", len(cap.layers))

# Every method, analysis and renderer works on it: rollout, per-head CLS maps, attention distance.
heat = vp.attribute(cap, method="rollout", discard_ratio=0.9).maps[0]  # (H, W)
vp.render.overlay(cap.images[0], heat).save(out / "rollout.png")
last = vp.attribute(cap, method="cls")  # last block, detail "heads" (B, heads, H, W)
vp.render.save_figure(vp.render.attribution_figure(last), out / "cls_heads.png")
distance = cap.reduced["distance"][:, 0]  # (layers, heads) in input pixels
for layer, heads in enumerate(distance):
    spread = f"heads {heads.min():.0f}-{heads.max():.0f}"
    print(f"block {layer:2d}: mean attention distance {heads.mean():6.1f} px ({spread})")
print("wrote", sorted(p.name for p in out.iterdir()))
