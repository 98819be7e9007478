"""The frame strip of docs/web-and-video.md: `vitprobe video --model` with a video transformer, end to end, offline.

No video model's weights can be downloaded here, so this builds a small ViViT with RANDOM weights (saved
with its video-processor settings like a real checkpoint), pans a 112-px window across scikit-image's
chelsea for 24 frames, and draws the CLS attention of every tubelet over the clip in sliding windows. The
figure shows what the command draws (windows, tubelet steps, the region the model saw), not what a trained
model attends to.

    python examples/video_strip.py [OUT.png]      # default docs/video_strip.png
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from vitprobe.render.video import VideoWriter

FRAMES, SIDE, FPS = 24, 112, 12.0


def build_model(directory: Path) -> None:
    """A random ViViT taking 8 frames of 64 px in tubelets of 2 frames x 8 x 8 px (4 steps of an 8x8 grid)."""
    torch.manual_seed(0)
    config = transformers.VivitConfig(hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
                                      intermediate_size=192, image_size=64, num_frames=8, tubelet_size=[2, 8, 8],
                                      initializer_range=0.15)
    transformers.VivitModel(config).save_pretrained(directory)
    (directory / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "VivitVideoProcessor", "do_resize": True, "size": {"shortest_edge": 64},
        "do_center_crop": True, "crop_size": {"height": 64, "width": 64}, "do_rescale": True,
        "rescale_factor": 1 / 127.5, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "resample": 2,
    }))


def write_clip(path: Path) -> None:
    """A window of SIDE px panning right across chelsea."""
    from skimage import data

    photo = Image.fromarray(data.chelsea())
    height = round(SIDE * 1.25)
    photo = photo.resize((round(photo.width * height / photo.height), height), Image.Resampling.LANCZOS)
    step = (photo.width - SIDE) / (FRAMES - 1)
    with VideoWriter(path, FPS, (SIDE, SIDE)) as writer:
        for f in range(FRAMES):
            left = round(f * step)
            writer.write(np.asarray(photo.crop((left, (height - SIDE) // 2, left + SIDE, (height + SIDE) // 2))))


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/video_strip.png").resolve()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_model(root / "random-vivit")
        write_clip(root / "pan.mp4")
        subprocess.run([sys.executable, "-m", "vitprobe", "video", "pan.mp4", "--model", "random-vivit",
                        "--out", "pan_cls.mp4", "--stride", "4", "--strip", str(out)], cwd=root, check=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
