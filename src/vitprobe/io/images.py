"""Load images from files, PIL images or arrays as fully decoded 8-bit RGB, under one policy.

Policy of :func:`load_image`:

- Size: the pixel count is read from the header and checked against ``max_pixels`` before any
  pixel is decoded. Pillow's own decompression-bomb warning is silenced (this check replaces
  it); Pillow still refuses anything over ``2 * PIL.Image.MAX_IMAGE_PIXELS`` even when
  ``max_pixels`` is higher, and that refusal is reported as :class:`ImageLoadError` too.
- Decoding is forced here, so a truncated or corrupt file fails at load time, not later.
  (A caller who sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` gets Pillow's padded result.)
- EXIF orientation is applied, so the result is the image as a viewer shows it.
- Animated or multi-page files (GIF, WebP, APNG, TIFF): the first frame only.
- Transparency (an alpha band, a transparent palette index or colour key) is composited onto
  a WHITE background.
- 16-bit grayscale (modes ``I;16``, ``I;16B``, ...; 16-bit PNGs) is scaled by the dtype's
  maximum, value / 257 rounded, so a dark 16-bit image stays dark.
- 32-bit integer grayscale (mode ``I``): treated as 16-bit data when every value lies in
  [0, 65535] (how Pillow and TIFF usually carry it), otherwise stretched min-max to [0, 255].
- Float grayscale (mode ``F``): times 255 when every value lies in [0, 1], otherwise stretched
  min-max; NaN or infinity is an error.
- Every other mode (1, L, P, CMYK, YCbCr, LAB, ...) goes through Pillow's ``convert("RGB")``.
- Arrays: (H, W), (H, W, 3) or (H, W, 4) of uint8, uint16 (value / 257) or float in [0, 1]
  (times 255); four channels are RGBA. Arrays are already in memory, so ``max_pixels`` does
  not apply to them.
"""

from __future__ import annotations

import io
import re
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .datasets import MemberError, container_of, read_member

MAX_PIXELS: int = 89_478_485
"""Default pixel limit: Pillow's decompression-bomb warning threshold (``int(1024**3 / 4 / 3)``)."""

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
"""Lower-case suffixes :func:`list_images` picks up inside folders."""

BACKGROUND = (255, 255, 255)
"""Colour transparent pixels are composited onto."""

_HIGH_DEPTH_GRAY = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_ARRAY_LABEL = "<array>"


class ImageLoadError(ValueError):
    """An image that cannot be loaded; ``str()`` is the single line ``"<path>: <reason>"``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return _one_line(f"{self.path}: {self.reason}")


def load_image(
    source: str | Path | Image.Image | np.ndarray, max_pixels: int = MAX_PIXELS, draft_side: int | None = None
) -> Image.Image:
    """Return ``source`` as a fully decoded 8-bit RGB image, following the module policy.

    ``draft_side``: a JPEG file may be decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft mode, in the
    DCT domain, several times faster for large photos) as long as both sides stay at least this long;
    the pixel limit applies to the full size. Raises :class:`ImageLoadError` for anything that cannot
    be read that way.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        label: str | Path = getattr(source, "filename", None) or "<image>"
    else:
        label = Path(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if isinstance(source, Image.Image):
                return _decode(source, label, max_pixels)
            with _open(label) as image:
                return _decode(image, label, max_pixels, draft_side)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(label, _bomb_reason(exc, max_pixels)) from None


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders (recursively, sorted) to their files with an image suffix; keep files as given.

    A file named directly is kept whatever its suffix, and so is a path that does not exist, so a
    wrong or missing file fails with its own line at load time while the others are still processed.
    Inside folders, every non-folder entry with an image suffix is listed, links that lead nowhere or
    loop and FIFOs included, so each of those gets its own line too instead of vanishing.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found.extend(
                sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            )
        else:
            found.append(entry)
    return found


def _open(path: Path) -> Image.Image:
    """Open ``path`` lazily (header only), turning every reason it is no image into ImageLoadError; a path
    inside a tar shard or a table (``io.datasets``) is read from there."""
    inside = container_of(path)
    if inside is not None:
        try:
            data = read_member(*inside)
        except MemberError as exc:
            raise ImageLoadError(path, str(exc)) from None
        except OSError as exc:
            raise ImageLoadError(path, f"cannot read ({exc.strerror or exc})") from None
        try:
            return Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageLoadError(path, "not an image file") from None
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageLoadError(path, "no such file") from None
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageLoadError(path, "is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageLoadError(path, "not a regular file")
    if info.st_size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image file") from None
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read ({exc.strerror or exc})") from exc


def _decode(image: Image.Image, label: str | Path, max_pixels: int, draft_side: int | None = None) -> Image.Image:
    """Check the header size, decode (JPEG at a reduced scale when ``draft_side`` allows), apply EXIF
    orientation and convert to RGB."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(
            label, f"too large ({width}x{height} = {_amount(width * height)} > limit {_amount(max_pixels)})"
        )
    if width == 0 or height == 0:
        raise ImageLoadError(label, f"image has no pixels ({width}x{height})")
    if draft_side and image.format == "JPEG" and min(width, height) >= 2 * draft_side:
        image.draft("RGB", (draft_side, draft_side))
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError:
        raise
    except Exception as exc:  # Pillow reports bad data with many exception types
        raise ImageLoadError(label, "truncated or corrupt image data") from exc
    return _to_rgb(image, label)


def _to_rgb(image: Image.Image, label: str | Path) -> Image.Image:
    """Convert a decoded image of any mode to RGB (high-depth scaling, white background)."""
    if image.mode in _HIGH_DEPTH_GRAY:
        return Image.fromarray(_gray_to_uint8(np.asarray(image), image.mode == "F", label)).convert("RGB")
    try:
        if {"A", "a"} & set(image.getbands()) or "transparency" in image.info:
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", image.size, BACKGROUND)
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageLoadError(label, f"unsupported image mode {image.mode}") from exc


def _gray_to_uint8(values: np.ndarray, is_float: bool, label: str | Path) -> np.ndarray:
    """Scale a 16/32-bit integer or float grayscale array to uint8 (see the module policy)."""
    values = values.astype(np.float64)
    if is_float and not np.isfinite(values).all():
        raise ImageLoadError(label, "float image contains NaN or infinity")
    low, high = values.min(), values.max()
    if is_float:
        scaled = values * 255 if low >= 0 and high <= 1 else _stretch(values, low, high)
    elif low >= 0 and high <= 65535:
        scaled = values / 257
    else:
        scaled = _stretch(values, low, high)
    return np.rint(scaled).astype(np.uint8)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto [0, 255]; a constant image becomes 0."""
    if high == low:
        return np.zeros_like(values)
    return (values - low) * (255 / (high - low))


def _from_array(array: np.ndarray) -> Image.Image:
    """An RGB image from an (H, W), (H, W, 3) or (H, W, 4) uint8, uint16 or [0, 1] float array."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(
            _ARRAY_LABEL, f"unsupported array shape {array.shape}; expected (H, W), (H, W, 3) or (H, W, 4)"
        )
    if array.size == 0:
        raise ImageLoadError(_ARRAY_LABEL, f"empty array of shape {array.shape}")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = np.rint(array / 257).astype(np.uint8)
    elif array.dtype.kind == "f":
        if not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            raise ImageLoadError(_ARRAY_LABEL, "float array values must be finite and within [0, 1]")
        pixels = np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    else:
        raise ImageLoadError(
            _ARRAY_LABEL, f"unsupported array dtype {array.dtype}; expected uint8, uint16 or float in [0, 1]"
        )
    return _to_rgb(Image.fromarray(np.ascontiguousarray(pixels)), _ARRAY_LABEL)


def _bomb_reason(exc: Image.DecompressionBombError, max_pixels: int) -> str:
    """Reason for Pillow's own refusal, raised above 2 * PIL.Image.MAX_IMAGE_PIXELS whatever max_pixels is."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = _amount(int(found[1])) if found else "size"
    pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if max_pixels < pillow_limit:
        return f"too large ({size} > limit {_amount(max_pixels)})"
    return f"too large ({size} > Pillow's limit {_amount(pillow_limit)}; raise PIL.Image.MAX_IMAGE_PIXELS to allow it)"


def _amount(pixels: int) -> str:
    """A pixel count for messages: megapixels with one decimal, or plain pixels when small."""
    return f"{pixels / 1e6:.1f} Mpx" if pixels >= 100_000 else f"{pixels} px"


def printable(path: str | Path) -> str:
    """A path as text that any output takes: bytes of the name that are no UTF-8 written as ``\\xff``."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _one_line(text: str) -> str:
    """Escape line breaks (and bytes of a file name that are no UTF-8) so a message stays one printable line."""
    return printable(text).replace("\r", "\\r").replace("\n", "\\n")
