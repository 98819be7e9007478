"""A corpus of more than 40 kinds of awkward and broken inputs, generated (no binary blobs), each with its
documented outcome: processed, or one line naming the file and the problem (a helper, not a test module)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.corpus import EXIF_ORIENTATION, chelsea, write_png_bomb

PROCESSED = None


def _png(width: int, height: int, color_type: int, depth: int, rows: list[bytes], interlace: int = 0) -> bytes:
    """A PNG from raw filtered scanlines (each starting with its filter byte)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


def rgb16_png(pixels: np.ndarray) -> bytes:
    """A 48-bit RGB PNG from (H, W, 3) uint16 (Pillow writes no such file)."""
    h, w, _ = pixels.shape
    rows = [b"\x00" + pixels[r].astype(">u2").tobytes() for r in range(h)]
    return _png(w, h, 2, 16, rows)


def interlaced_png(pixels: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit RGB PNG from (H, W, 3) uint8 (Pillow writes no such file)."""
    h, w, _ = pixels.shape
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    rows = []
    for x0, y0, dx, dy in passes:
        sub = pixels[y0::dy, x0::dx]
        if sub.size:
            rows += [b"\x00" + row.tobytes() for row in sub]
    return _png(w, h, 2, 8, rows, interlace=1)


def make_full_corpus(directory: Path) -> dict[str, str | None]:
    """Write every kind into ``directory``; return file name (relative) -> None (processed) or a substring of
    its one error line. Names that the listing of ``directory`` does not pick up are not in the mapping."""
    directory.mkdir(parents=True, exist_ok=True)
    cat = chelsea()
    photo = Image.fromarray(cat)
    small = photo.resize((90, 60))
    out: dict[str, str | None] = {}

    def save(name: str, image: Image.Image, outcome: str | None = PROCESSED, **kwargs) -> None:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(directory / name, **kwargs)
        out[name] = outcome

    def write(name: str, data: bytes, outcome: str | None) -> None:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
        out[name] = outcome

    jpeg = io.BytesIO()
    small.save(jpeg, format="JPEG", quality=90)
    png = io.BytesIO()
    small.save(png, format="PNG")
    rng = np.random.default_rng(0)

    write("empty.png", b"", "empty file (0 bytes)")
    write("text.jpg", b"shopping list: milk, eggs, a better camera\n", "not an image file")
    write("html.png", b"<!doctype html><html><body>404 not found</body></html>", "not an image file")
    write("truncated.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "truncated or corrupt image data")
    write("truncated.png", png.getvalue()[: len(png.getvalue()) // 2], "truncated or corrupt image data")
    write("signature_only.png", b"\x89PNG\r\n\x1a\n", "not an image file")
    write("random_with_jpeg_header.jpg", b"\xff\xd8\xff\xe0" + rng.bytes(4000), "cannot read")
    write("png_named.jpg", png.getvalue(), PROCESSED)  # wrong extension: the content decides
    save("one_pixel.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    save("thin_40x3000.png", small.resize((40, 3000)))
    save("wide_3000x40.png", small.resize((3000, 40)))
    gray16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    save("gray16.png", Image.fromarray(gray16))
    write("rgb16.png", rgb16_png(np.asarray(small, np.uint16) * 257), PROCESSED)
    save("float.tif", Image.fromarray(np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)))
    write("float_nan.tif", _tiff_bytes(np.full((8, 8), np.nan, np.float32)), "float image contains NaN or infinity")
    save("one_bit.png", small.convert("1"))
    save("gray_alpha.png", small.convert("LA"))
    palette = small.quantize(colors=16)
    save("palette_transparent.png", palette, transparency=0)
    save("palette.gif", palette, transparency=3)
    save("cmyk_icc.jpg", small.convert("CMYK"), icc_profile=b"\x00" * 128 + b"fake profile", quality=90)
    save("progressive.jpg", small, progressive=True, quality=90)
    write("interlaced.png", interlaced_png(np.asarray(small)), PROCESSED)
    frames = [small, small.rotate(90), small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(directory / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    out["animated.gif"] = PROCESSED  # the first frame
    frames[0].save(directory / "animated.webp", save_all=True, append_images=frames[1:], duration=100)
    out["animated.webp"] = PROCESSED
    frames[0].save(directory / "pages.tif", save_all=True, append_images=frames[1:])
    out["pages.tif"] = PROCESSED
    save("still.webp", small)
    save("bitmap.bmp", small)
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        save(f"exif_orientation_{orientation}.jpg", small, exif=exif, quality=90)
    big_exif = Image.Exif()
    big_exif[0x9286] = b"x" * 60_000  # a 60 KB user comment: nearly all of a JPEG's APP1 segment
    save("big_exif.jpg", small, exif=big_exif, quality=90)
    write_png_bomb(directory / "bomb_under_limit.png", 9_000, 9_000)  # 81 Mpx: decodes (slowly), accepted
    out["bomb_under_limit.png"] = PROCESSED
    write_png_bomb(directory / "bomb_over_limit.png", 10_000, 10_000)  # 100 Mpx > 89.5 Mpx
    out["bomb_over_limit.png"] = "too large"
    write_png_bomb(directory / "bomb_over_pillow.png", 20_000, 20_000)  # 400 Mpx: over Pillow's own limit
    out["bomb_over_pillow.png"] = "too large"
    (directory / "folder_named.png").mkdir(exist_ok=True)  # searched like any folder
    save("folder_named.png/inside.png", small)
    os.symlink("loop_b.png", directory / "loop_a.png")
    os.symlink("loop_a.png", directory / "loop_b.png")
    out["loop_a.png"] = "cannot read"
    out["loop_b.png"] = "cannot read"
    os.symlink("nowhere.png", directory / "dangling.png")
    out["dangling.png"] = "no such file"
    os.mkfifo(directory / "fifo.png")
    out["fifo.png"] = "not a regular file"
    unreadable = directory / "no_permission.png"
    small.save(unreadable)
    os.chmod(unreadable, 0)
    out["no_permission.png"] = PROCESSED if os.geteuid() == 0 else "cannot read"  # root reads anything
    save(os.fsdecode(b"non_utf8_\xff\xfe.png"), small)
    write(os.fsdecode(b"bad_non_utf8_\xff.png"), b"not an image either", "not an image file")
    save("x" * 240 + ".png", small)  # a very long name
    save("a/same.png", small)  # duplicate stems in different folders
    save("b/same.png", small.rotate(180))
    (directory / "ignored.txt").write_text("a file without an image suffix is not listed\n")
    photo.save(directory / "photo.jpg", quality=90)
    out["photo.jpg"] = PROCESSED
    return out


def _tiff_bytes(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="TIFF")
    return buffer.getvalue()
