"""Write a corpus of awkward and broken image files for the loader tests (a helper, not a test module)."""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112

EXPECTED_REASONS: dict[str, str | None] = {
    "photo.jpg": None,
    "empty.png": "empty file (0 bytes)",
    "truncated.jpg": "truncated or corrupt image data",
    "notes.jpg": "not an image file",
    "gray16.png": None,
    "rgba.png": None,
    "palette_transparent.png": None,
    "cmyk.jpg": None,
    "exif_rotated.jpg": None,
    "bomb.png": "too large",
    "bomb_warn.png": "too large",
}
"""File name → None when the loader policy accepts it, else a substring of the rejection reason."""


def chelsea() -> np.ndarray:
    """scikit-image's cat photo, (300, 451, 3) uint8."""
    from skimage import data

    return data.chelsea()


def gray16_gradient() -> np.ndarray:
    """(2, 256) uint16: row 0 is k * 257 (exactly 8-bit value k), row 1 is k * 256 (128 * 256 = 32768)."""
    k = np.arange(256, dtype=np.uint16)
    return np.stack([k * 257, k * 256])


def write_png_bomb(path: Path, width: int, height: int) -> None:
    """A valid 1-bit black PNG of width x height pixels: tens of kB on disk, width*height bytes decoded."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then packed zero bits
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def make_bad_corpus(directory: Path) -> dict[str, str | None]:
    """Write every file of :data:`EXPECTED_REASONS` into ``directory`` and return that mapping."""
    directory.mkdir(parents=True, exist_ok=True)
    cat = chelsea()
    photo = Image.fromarray(cat)

    photo.save(directory / "photo.jpg", quality=90)
    (directory / "empty.png").write_bytes(b"")
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    (directory / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (directory / "notes.jpg").write_text("shopping list: milk, eggs, a better camera\n")

    Image.fromarray(gray16_gradient()).save(directory / "gray16.png")

    alpha = np.full(cat.shape[:2], 255, np.uint8)
    alpha[:, : cat.shape[1] // 2] = 0  # left half fully transparent
    Image.fromarray(np.dstack([cat, alpha])).save(directory / "rgba.png")

    quantized = photo.quantize(colors=16)
    indices = np.array(quantized)
    indices[:60] = 0  # a band of the transparent index at the top, besides its own occurrences
    palette = Image.fromarray(indices)
    palette.putpalette(quantized.getpalette())
    palette.save(directory / "palette_transparent.png", transparency=0)

    photo.convert("CMYK").save(directory / "cmyk.jpg", quality=95)

    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored landscape; viewers rotate it 90 degrees clockwise
    photo.save(directory / "exif_rotated.jpg", quality=95, exif=exif)

    write_png_bomb(directory / "bomb.png", 20_000, 20_000)  # over Pillow's own hard limit
    write_png_bomb(directory / "bomb_warn.png", 10_000, 10_000)  # between Pillow's warning and its error
    return dict(EXPECTED_REASONS)


def as_shown(line: str) -> str:
    """A line as a terminal shows it: cursor moves dropped, only what follows the last carriage return (a
    progress bar that another bar of the same process moves out of the way leaves both in the line)."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line).rsplit("\r", 1)[-1]


def assert_one_line_per_bad_file(stderr: str, expected: dict[str, str | None]) -> list[str]:
    """Check stderr holds no traceback and exactly one error line per bad file, naming the file and
    its problem; return the names of the good files."""
    assert "Traceback" not in stderr
    errors = [line for line in map(as_shown, stderr.splitlines()) if line.startswith("vitprobe: error:")]
    bad = {name: reason for name, reason in expected.items() if reason is not None}
    assert len(errors) == len(bad)
    for name, reason in bad.items():
        assert any(name in line and reason in line for line in errors), (name, errors)
    return [name for name, reason in expected.items() if reason is None]
