"""Image loading policy over a corpus of awkward, broken and hostile files, arrays and PIL images."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.corpus import EXPECTED_REASONS, chelsea, gray16_gradient, make_bad_corpus
from vitprobe.io.images import MAX_PIXELS, ImageLoadError, list_images, load_image
from vitprobe.io.samples import SAMPLE_NAMES, write_samples

pytest.importorskip("skimage")

WHITE = (255, 255, 255)
BAD = sorted(name for name, reason in EXPECTED_REASONS.items() if reason)
GOOD = sorted(name for name, reason in EXPECTED_REASONS.items() if reason is None)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("corpus")
    make_bad_corpus(directory)
    return directory


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def assert_rgb8(image: Image.Image) -> None:
    assert image.mode == "RGB"
    assert pixels(image).dtype == np.uint8


def test_max_pixels_is_pillows_warning_threshold() -> None:
    assert MAX_PIXELS == 89_478_485
    assert int(1024 * 1024 * 1024 // 4 // 3) == MAX_PIXELS


@pytest.mark.parametrize("name", GOOD)
def test_good_files_load_as_rgb8(corpus: Path, name: str) -> None:
    image = load_image(corpus / name)
    assert_rgb8(image)
    assert image.size == {"gray16.png": (256, 2), "exif_rotated.jpg": (300, 451)}.get(name, (451, 300))


@pytest.mark.parametrize("name", BAD)
def test_bad_files_raise_one_line(corpus: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(corpus)
    with pytest.raises(ImageLoadError) as caught:
        load_image(name)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{name}: ")
    assert EXPECTED_REASONS[name] in caught.value.reason
    assert caught.value.path == Path(name)


def test_photo_pixels_match_the_source(corpus: Path) -> None:
    error = np.abs(pixels(load_image(corpus / "photo.jpg")).astype(int) - chelsea()).mean()
    assert error < 4


def test_exif_orientation_is_applied(corpus: Path) -> None:
    path = corpus / "exif_rotated.jpg"
    stored = pixels(Image.open(path).convert("RGB"))
    assert stored.shape == (300, 451, 3)  # the file holds landscape pixels
    loaded = pixels(load_image(path))
    assert loaded.shape == (451, 300, 3)
    np.testing.assert_array_equal(loaded, np.rot90(stored, k=-1))  # orientation 6: 90 degrees clockwise
    assert np.abs(loaded.astype(int) - np.rot90(chelsea(), k=-1)).mean() < 4


def test_sixteen_bit_png_is_scaled_not_clipped(corpus: Path) -> None:
    path = corpus / "gray16.png"
    assert Image.open(path).mode.startswith("I;16")  # the corpus really holds 16-bit data
    loaded = pixels(load_image(path))
    assert (loaded == loaded[..., :1]).all()  # gray stays gray
    gray = loaded[..., 0].astype(int)
    np.testing.assert_array_equal(gray[0], np.arange(256))
    assert np.abs(gray[1] - np.arange(256)).max() <= 1
    assert gray16_gradient()[1, 128] == 32768
    assert gray[1, 128] in (127, 128)
    assert (gray == 255).sum() == 1  # only 65535 itself is white (Pillow's convert whitens almost all)


def test_rgba_composited_on_white(corpus: Path) -> None:
    loaded = pixels(load_image(corpus / "rgba.png"))
    half = loaded.shape[1] // 2
    assert (loaded[:, :half] == WHITE).all()
    np.testing.assert_array_equal(loaded[:, half:], chelsea()[:, half:])


def test_palette_transparent_index_becomes_white(corpus: Path) -> None:
    path = corpus / "palette_transparent.png"
    raw = Image.open(path)
    assert raw.mode == "P"
    indices = np.asarray(raw)
    expected = np.asarray(raw.getpalette(), np.uint8).reshape(-1, 3)[indices]
    expected[indices == 0] = WHITE
    loaded = pixels(load_image(path))
    np.testing.assert_array_equal(loaded, expected)
    assert (loaded[:60] == WHITE).all()


def test_cmyk_jpeg_colours(corpus: Path) -> None:
    path = corpus / "cmyk.jpg"
    assert Image.open(path).mode == "CMYK"
    assert np.abs(pixels(load_image(path)).astype(int) - chelsea()).mean() < 4


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every decode Pillow starts on a file."""
    calls: list[str] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile):
        calls.append(self.filename)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


@pytest.mark.parametrize("name", ["bomb.png", "bomb_warn.png"])
def test_bomb_rejected_before_decoding(corpus: Path, name: str, decode_calls: list[str]) -> None:
    assert (corpus / name).stat().st_size < 100_000
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape either
        with pytest.raises(ImageLoadError, match="too large"):
            load_image(corpus / name)
    assert time.perf_counter() - start < 1
    assert decode_calls == []


def test_bomb_header_is_real(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(corpus / "bomb.png") as image:
        assert (image.size, image.mode) == ((20_000, 20_000), "1")


def test_small_limit_rejects_without_decoding(corpus: Path, decode_calls: list[str]) -> None:
    with pytest.raises(ImageLoadError) as caught:
        load_image(corpus / "photo.jpg", max_pixels=1000)
    assert caught.value.reason == "too large (451x300 = 0.1 Mpx > limit 1000 px)"
    assert decode_calls == []
    assert load_image(corpus / "photo.jpg", max_pixels=451 * 300).size == (451, 300)
    assert decode_calls  # the spy does see real decodes


def test_limit_above_pillows_own_is_explained(corpus: Path) -> None:
    with pytest.raises(ImageLoadError, match="Pillow's limit .*MAX_IMAGE_PIXELS"):
        load_image(corpus / "bomb.png", max_pixels=10**12)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"nope\.png: no such file$"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


def test_lazy_pil_image_fails_on_load_with_its_file_name(corpus: Path) -> None:
    with Image.open(corpus / "truncated.jpg") as lazy, pytest.raises(ImageLoadError) as caught:
        load_image(lazy)
    assert str(caught.value) == f"{corpus / 'truncated.jpg'}: truncated or corrupt image data"


def test_newline_in_file_name_stays_one_line(tmp_path: Path) -> None:
    path = tmp_path / "two\nlines.png"
    path.write_text("not a picture")
    with pytest.raises(ImageLoadError) as caught:
        load_image(path)
    assert "\n" not in str(caught.value)
    assert str(caught.value).endswith("two\\nlines.png: not an image file")


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 6), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    loaded = pixels(load_image(tmp_path / "anim.gif"))
    assert loaded.shape == (6, 8, 3)
    assert (loaded == (255, 0, 0)).all()


GRADIENT16 = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.fromarray(GRADIENT16), np.rint(GRADIENT16 / 257)),
        (Image.frombytes("I;16B", (8, 8), GRADIENT16.astype(">u2").tobytes()), np.rint(GRADIENT16 / 257)),
        (Image.fromarray(GRADIENT16.astype(np.int32)), np.rint(GRADIENT16 / 257)),
        (Image.fromarray(GRADIENT16.astype(np.int32) - 70_000), np.rint(GRADIENT16 * (255 / 63_000))),
        (Image.fromarray(GRADIENT16.astype(np.float32) / 63_000), np.rint(GRADIENT16 * (255 / 63_000))),
        (Image.fromarray(GRADIENT16.astype(np.float32) * 3 - 5), np.rint(GRADIENT16 * (255 / 63_000))),
        (Image.new("F", (8, 8), 7.0), np.zeros((8, 8))),
        (Image.new("1", (8, 8), 1), np.full((8, 8), 255)),
    ],
    ids=["I;16", "I;16B", "I-16bit-values", "I-negative", "F-unit", "F-other", "F-constant", "1"],
)
def test_grayscale_modes(image: Image.Image, expected: np.ndarray) -> None:
    loaded = load_image(image)
    assert_rgb8(loaded)
    np.testing.assert_array_equal(pixels(loaded), np.repeat(expected[..., None], 3, axis=2))


def test_dark_sixteen_bit_stays_dark() -> None:
    assert pixels(load_image(Image.fromarray(GRADIENT16 // 10))).max() <= 25


def test_float_image_with_nan_is_rejected() -> None:
    values = np.zeros((4, 4), np.float32)
    values[1, 1] = np.nan
    with pytest.raises(ImageLoadError, match="^<image>: float image contains NaN"):
        load_image(Image.fromarray(values))


def test_la_and_colour_key_transparency() -> None:
    la = Image.merge("LA", [Image.new("L", (4, 2), 10), Image.frombytes("L", (4, 2), bytes([0, 255] * 4))])
    np.testing.assert_array_equal(pixels(load_image(la))[..., 0], [[255, 10] * 2] * 2)
    keyed = Image.new("RGB", (2, 1), (1, 2, 3))
    keyed.putpixel((1, 0), (9, 9, 9))
    keyed.info["transparency"] = (1, 2, 3)
    assert pixels(load_image(keyed)).tolist() == [[list(WHITE), [9, 9, 9]]]


def test_pil_input_is_not_modified() -> None:
    source = Image.new("RGBA", (3, 3), (0, 0, 0, 0))
    load_image(source)
    assert source.mode == "RGBA"
    assert source.getpixel((0, 0)) == (0, 0, 0, 0)


def test_arrays_of_each_supported_kind() -> None:
    rgb = chelsea()[:20, :30]
    np.testing.assert_array_equal(pixels(load_image(rgb)), rgb)
    np.testing.assert_array_equal(pixels(load_image(rgb[..., 0])), np.repeat(rgb[..., :1], 3, axis=2))
    np.testing.assert_array_equal(pixels(load_image(rgb.astype(np.uint16) * 257)), rgb)
    np.testing.assert_array_equal(pixels(load_image(rgb / 255)), rgb)
    np.testing.assert_array_equal(pixels(load_image((rgb / 255).astype(np.float32))), rgb)
    np.testing.assert_array_equal(pixels(load_image(rgb[:, ::-1])), rgb[:, ::-1])  # non-contiguous view
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[:, 15:] = 255
    alpha[0, 0] = 128
    loaded = pixels(load_image(np.dstack([rgb, alpha]))).astype(int)
    assert (loaded[1:, :15] == WHITE).all()
    np.testing.assert_array_equal(loaded[:, 15:], rgb[:, 15:])
    half = (rgb[0, 0].astype(int) * 128 + 255 * 127) / 255
    assert np.abs(loaded[0, 0] - half).max() <= 1


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.zeros((4, 4, 1), np.uint8), "unsupported array shape (4, 4, 1)"),
        (np.zeros((4, 4, 2), np.uint8), "unsupported array shape"),
        (np.zeros((3, 4, 5), np.uint8), "unsupported array shape"),
        (np.zeros(16, np.uint8), "unsupported array shape (16,)"),
        (np.zeros((2, 4, 4, 3), np.uint8), "unsupported array shape"),
        (np.zeros((0, 4, 3), np.uint8), "empty array"),
        (np.zeros((4, 4), np.int64), "unsupported array dtype int64"),
        (np.zeros((4, 4), bool), "unsupported array dtype bool"),
        (np.full((4, 4), 1.5), "within [0, 1]"),
        (np.full((4, 4), -0.1), "within [0, 1]"),
        (np.full((4, 4), np.nan), "finite"),
    ],
    ids=["HW1", "HW2", "CHW", "1d", "4d", "empty", "int64", "bool", "float>1", "float<0", "nan"],
)
def test_unsupported_arrays(array: np.ndarray, reason: str) -> None:
    with pytest.raises(ImageLoadError) as caught:
        load_image(array)
    assert str(caught.value).startswith("<array>: ")
    assert "\n" not in str(caught.value)
    assert reason in caught.value.reason


def test_list_images_expands_folders(tmp_path: Path) -> None:
    for relative in ["b/z.webp", "a/x.png", "a/deep/y.JPG", "a/notes.txt", "a/deep/skip.json", "top.jpeg"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    odd = tmp_path / "a" / "notes.txt"
    found = list_images([odd, tmp_path / "a", str(tmp_path / "b")])
    assert found == [odd, tmp_path / "a/deep/y.JPG", tmp_path / "a/x.png", tmp_path / "b/z.webp"]
    assert list_images(tmp_path) == sorted(
        tmp_path / r for r in ["a/deep/y.JPG", "a/x.png", "b/z.webp", "top.jpeg"]
    )
    assert list_images([]) == []


def test_list_images_keeps_a_missing_path_for_its_own_error(tmp_path: Path) -> None:
    assert list_images([tmp_path, tmp_path / "missing"]) == [tmp_path / "missing"]
    with pytest.raises(ImageLoadError, match="missing: no such file$"):
        load_image(tmp_path / "missing")


def test_write_samples(tmp_path: Path) -> None:
    out = tmp_path / "new" / "samples"
    paths = write_samples(out)
    assert paths == [out / f"{name}.png" for name in SAMPLE_NAMES]
    sizes = {path.stem: load_image(path).size for path in paths}
    assert sizes == {"chelsea": (451, 300), "astronaut": (512, 512), "coffee": (600, 400)}
    np.testing.assert_array_equal(pixels(load_image(out / "chelsea.png")), chelsea())
    stamp = paths[0].stat().st_mtime_ns
    assert write_samples(out, ["chelsea"]) == [paths[0]]
    assert paths[0].stat().st_mtime_ns == stamp
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png", "chelsea.png", "coffee.png"]


def test_write_samples_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sample photo"):
        write_samples(tmp_path, ["chelsea", "rocket"])


def test_write_samples_without_scikit_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(RuntimeError) as caught:
        write_samples(tmp_path)
    assert str(caught.value) == "writing the sample photos needs scikit-image: pip install 'vitprobe[samples]'"
    assert not any(tmp_path.iterdir())
