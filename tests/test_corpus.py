"""More than 40 kinds of awkward input through the commands (one line per bad one, the rest processed, no
traceback), files that change under a run, and property-based tests of decoding and of from_attentions."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vitprobe as vp
from tests.corpus_full import make_full_corpus
from tests.test_runner import single_thread_env
from vitprobe.io.images import ImageLoadError, list_images, load_image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def printable(name: str) -> str:
    """A file name as error lines print it (bytes that are no UTF-8 escaped)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    pytest.importorskip("skimage")
    folder = tmp_path_factory.mktemp("corpus") / "inputs"
    return folder, make_full_corpus(folder)


def test_the_corpus_has_more_than_forty_kinds_all_listed(corpus):
    folder, expected = corpus
    assert len(expected) >= 40
    listed = {str(p.relative_to(folder)) for p in list_images([folder])}
    assert listed == set(expected)  # links that lead nowhere, loops and FIFOs are listed for their own line


def test_explain_gives_one_line_per_bad_input_and_processes_the_rest(corpus, tiny_dirs, tmp_path):
    folder, expected = corpus
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "vitprobe", "explain", str(folder), "--model",
                             str(tiny_dirs["vit"]), "--method", "cls", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, env=single_thread_env(), errors="replace")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("vitprobe: error:")]
    bad = {name: reason for name, reason in expected.items() if reason is not None}
    assert len(lines) == len(bad), lines
    for name, reason in bad.items():
        assert any(f"{folder / printable(name)}: " in line and reason in line for line in lines), (name, lines)
    good = [name for name, reason in expected.items() if reason is None]
    written = {p.parent.name for p in out.rglob("cls.png")}
    assert len(written) == len(good)  # one output folder per processed input, duplicate stems apart
    assert {"same", "same_2"} <= written and "x" * 240 in written
    assert f"{len(good)} of {len(expected)} images explained" in result.stdout


def test_analyze_records_every_bad_input_and_loses_nothing(corpus, tiny_dirs, tmp_path):
    folder, expected = corpus
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "vitprobe", "analyze", str(folder), "--model",
                             str(tiny_dirs["vit"]), "--out", str(out), "--batch-size", "8", "--no-progress",
                             "--no-report"], capture_output=True, text=True, timeout=600, env=single_thread_env())
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    with open(out / "failures.csv", newline="") as f:
        failures = {Path(row["file"]).relative_to(folder).as_posix(): row["reason"] for row in csv.DictReader(f)}
    bad = {printable(name): reason for name, reason in expected.items() if reason is not None}
    assert set(failures) == set(bad)
    assert all(reason in failures[name] for name, reason in bad.items())
    aggregates = json.loads((out / "aggregates.json").read_text())
    assert aggregates["images"] == {"listed": len(expected), "analysed": len(expected) - len(bad),
                                    "failed": len(bad)}


def test_a_file_that_vanishes_between_listing_and_reading_is_one_line(tmp_path, tiny_dirs):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(b"")
    listed = list_images([folder])
    (folder / "a.png").unlink()
    with pytest.raises(ImageLoadError, match=r"a\.png: no such file$"):
        load_image(listed[0])
    listing = tmp_path / "list.txt"
    listing.write_text("images/gone.png\n")
    result = subprocess.run([sys.executable, "-m", "vitprobe", "analyze", str(listing), "--model",
                             str(tiny_dirs["vit"]), "--out", str(tmp_path / "run"), "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "none of the 1 images could be analysed" in result.stderr
    assert "gone.png,no such file" in (tmp_path / "run" / "failures.csv").read_text()


# --- property-based ---------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=2048), st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a",
                                                              b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00", b"BM"]))
def test_any_bytes_decode_or_give_one_line(tmp_path_factory, data, header):
    path = tmp_path_factory.mktemp("bytes") / "input.png"
    path.write_bytes(header + data)
    try:
        image = load_image(path)
    except ImageLoadError as err:
        assert "\n" not in str(err) and str(err).startswith(f"{path}: ")
    else:
        assert image.mode == "RGB" and image.width > 0 and image.height > 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=5),
       st.sampled_from([np.float16, np.float32, np.float64, np.int32, np.uint8, np.bool_, np.complex64]),
       st.sampled_from([None, "nan", "inf", "negative"]), st.integers(0, 3))
def test_from_attentions_takes_valid_arrays_and_refuses_the_rest_in_one_line(shape, dtype, poison, prefix):
    rng = np.random.default_rng(len(shape) * 7 + prefix)
    values = rng.random(shape)
    if len(shape) >= 2 and shape[-1] == shape[-2] and shape[-1] > 0:
        values = values / values.sum(-1, keepdims=True)
    values = values.astype(dtype)
    if poison and values.size and np.issubdtype(values.dtype, np.floating):
        values.flat[0] = {"nan": np.nan, "inf": np.inf, "negative": -1.0}[poison]
    try:
        cap = vp.from_attentions([values, values], prefix_tokens=prefix)
    except ValueError as err:
        assert "\n" not in str(err).strip()
    else:
        assert cap.layout.n_tokens == values.shape[-1] and len(cap.layers) == 2
        if cap.cls is not None:
            assert vp.attribute(cap, method="layers").maps.shape[0] == cap.batch_size


@pytest.mark.parametrize(("arrays", "words"), [
    ([np.full((1, 2, 5, 5), 0.2, np.float32), np.full((1, 1, 5, 5), 0.2, np.float32)], "differ in shape"),
    ([np.full((1, 2, 5, 5), 0.2, np.complex64)], "attention must be real numbers"),
    ([np.array("text")], "attention must be real numbers"),
    ([np.full((1, 2, 5, 5), np.nan, np.float32)], "NaN or infinity"),
    ([np.zeros((1, 2, 0, 0), np.float32)], r"expected attention \(B, heads, T, T\)"),
    ([np.full((1, 1, 2, 2), 0.5, np.float32)] * 2, "it needs at least one"),
])
def test_from_attentions_refuses_odd_inputs_in_one_line(arrays, words):
    with pytest.raises(ValueError, match=words) as caught:
        vp.from_attentions(arrays, prefix_tokens=3 if words == "it needs at least one" else 1)
    assert "\n" not in str(caught.value)
