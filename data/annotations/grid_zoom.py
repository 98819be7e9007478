"""Crop a region of a photo, enlarge it and draw a labelled pixel grid, to read coordinates by eye.

    python data/annotations/grid_zoom.py samples/coffee.png 160 180 420 320 --step 10 --scale 3 -o zoom.png

Grid lines every ``step`` original pixels (magenta every fifth), labelled in original-image
pixels; open the result in any image viewer and read x (columns) and y (rows) off the labels.
"""

from __future__ import annotations

import argparse

from PIL import Image, ImageDraw


def grid_zoom(path: str, box: tuple[int, int, int, int], step: int, scale: int) -> Image.Image:
    """``box`` = (x0, y0, x1, y1) in original pixels -> the enlarged crop with its grid."""
    x0, y0, x1, y1 = box
    image = Image.open(path).convert("RGB").crop(box)
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    for x in range((x0 // step + 1) * step, x1, step):
        at = (x - x0) * scale
        draw.line([(at, 0), (at, image.height)], fill=(255, 0, 255) if x % (5 * step) == 0 else (0, 255, 255))
        draw.text((at + 2, 2), str(x), fill=(255, 255, 0))
    for y in range((y0 // step + 1) * step, y1, step):
        at = (y - y0) * scale
        draw.line([(0, at), (image.width, at)], fill=(255, 0, 255) if y % (5 * step) == 0 else (0, 255, 255))
        draw.text((2, at + 2), str(y), fill=(255, 255, 0))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("box", nargs=4, type=int, metavar=("X0", "Y0", "X1", "Y1"))
    parser.add_argument("--step", type=int, default=10)
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("-o", "--out", default="zoom.png")
    args = parser.parse_args()
    grid_zoom(args.image, tuple(args.box), args.step, args.scale).save(args.out)


if __name__ == "__main__":
    main()
