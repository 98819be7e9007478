"""Evaluation metrics, baselines and COCO reading against hand-computed answers."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from vitprobe.analysis.thresholds import Threshold
from vitprobe.coco import AnnotationError, ImageTruth, ObjectTruth, found_to_coco, load_coco
from vitprobe.evaluate import (
    ImageScores,
    LocalizeOptions,
    box_iou,
    centre_gaussian,
    coco_box_ap,
    jaccard,
    mean_scores,
    pck_matches,
    point_in_box,
    random_maps,
    score_image,
    summarize,
)
from vitprobe.io.preprocess import Geometry


def test_box_iou():
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert box_iou((0, 0, 2, 2), (2, 0, 4, 2)) == 0.0  # touching edges share no area
    assert box_iou((0, 0, 4, 4), (1, 1, 3, 3)) == pytest.approx(4 / 16)


def test_point_in_box_with_tolerance():
    assert point_in_box(5, 5, (0, 0, 10, 10))
    assert not point_in_box(12, 5, (0, 0, 10, 10))
    assert point_in_box(12, 5, (0, 0, 10, 10), tolerance=2)
    assert not point_in_box(12, 13, (0, 0, 10, 10), tolerance=2)


def test_pck_matches_one_to_one():
    truth = np.array([[0.0, 0.0], [2.0, 0.0]])
    # one prediction halfway between two truths may serve only one of them
    assert pck_matches(np.array([[1.0, 0.0]]), truth, 1.5) == 1
    assert pck_matches(np.array([[1.0, 0.0], [2.5, 0.0]]), truth, 1.5) == 2
    assert pck_matches(np.array([[10.0, 0.0]]), truth, 1.5) == 0
    assert pck_matches(np.zeros((0, 2)), truth, 1.5) == 0


def test_jaccard():
    a = np.array([[1, 1], [0, 0]], dtype=bool)
    b = np.array([[1, 0], [1, 0]], dtype=bool)
    assert jaccard(a, b) == pytest.approx(1 / 3)
    assert jaccard(a, a) == 1.0 and jaccard(a, ~a) == 0.0


def test_centre_gaussian_by_hand():
    g = centre_gaussian((5, 5), sigma=0.25)  # sigma = 1.25 patches on each axis
    assert g[2, 2] == 1.0 and int(g.argmax()) == 12
    assert g[0, 2].item() == pytest.approx(math.exp(-0.5 * (2 / 1.25) ** 2))
    assert g[0, 0].item() == pytest.approx(math.exp(-(2 / 1.25) ** 2))
    assert torch.equal(g, g.flip(0)) and torch.equal(g, g.T)


def test_random_maps_are_uniform_and_seeded():
    a = random_maps(3, (4, 5), torch.Generator().manual_seed(1))
    b = random_maps(3, (4, 5), torch.Generator().manual_seed(1))
    assert a.shape == (3, 4, 5) and torch.equal(a, b) and a.min() >= 0 and a.max() < 1


# An 8x8 grid of 8-pixel patches seeing a 64x64 image unchanged. The object is the top-left
# quadrant (patches rows/cols 0-3) with keypoints at the centres of patches (0, 0) and (3, 3).
PATCH = 8
IDENTITY = Geometry(original_hw=(64, 64), crop_box=(0.0, 0.0, 64.0, 64.0), input_hw=(64, 64))
QUADRANT = np.zeros((64, 64), dtype=bool)
QUADRANT[:32, :32] = True
TRUTH = ImageTruth(1, "x.png", 64, 64, [ObjectTruth("thing", (0, 0, 32, 32), np.array([[4.0, 4.0], [28.0, 28.0]]),
                                                   ("a", "b"), QUADRANT)])
OPTS = LocalizeOptions(find="peaks", threshold=Threshold("abs", 0.4), fraction=1.0, top_k=5, alpha=0.2,
                       tolerance=0.0)


def quadrant_map(row0: int, col0: int) -> torch.Tensor:
    """0.5 on a 4x4 block of patches starting at (row0, col0), peaks of 1.0 at its two diagonal corners."""
    m = torch.zeros(8, 8, dtype=torch.float64)
    m[row0 : row0 + 4, col0 : col0 + 4] = 0.5
    m[row0, col0] = m[row0 + 3, col0 + 3] = 1.0
    return m


def test_a_map_all_inside_the_object_scores_one():
    m = quadrant_map(0, 0)
    scores = score_image(m, m[None], PATCH, IDENTITY, TRUTH, OPTS)
    # peaks refine 0.4 patch (3.2 px) towards the block's inside: within 0.2 · 32 = 6.4 px
    assert replace(scores, detections=()) == ImageScores(pointing=1.0, pck_hits=2, pck_total=2, iou=1.0, corloc=1.0,
                                                         jaccard=1.0)
    assert scores.detections[0] == (0.0, 0.0, 32.0, 32.0, 1.0)  # the found box (x, y, w, h) and its score


def test_a_map_all_outside_the_object_scores_zero():
    m = quadrant_map(4, 4)
    scores = score_image(m, m[None], PATCH, IDENTITY, TRUTH, OPTS)
    assert replace(scores, detections=()) == ImageScores(pointing=0.0, pck_hits=0, pck_total=2, iou=0.0, corloc=0.0,
                                                         jaccard=0.0)


def test_best_head_per_object():
    inside, outside = quadrant_map(0, 0), quadrant_map(4, 4)
    half = torch.zeros(8, 8, dtype=torch.float64)
    half[:4, :2] = 1.0  # covers half of the quadrant and nothing else: Jaccard 0.5
    scores = score_image(outside, torch.stack([outside, half]), PATCH, IDENTITY, TRUTH, OPTS)
    assert scores.jaccard == 0.5 and scores.pointing == 0.0
    assert score_image(outside, torch.stack([half, inside]), PATCH, IDENTITY, TRUTH, OPTS).jaccard == 1.0


def test_a_crop_the_model_never_saw_counts_as_missed():
    # the model saw only the right half of a 64x128 image; the object is in the left half
    right_half = Geometry(original_hw=(64, 128), crop_box=(0.0, 64.0, 64.0, 64.0), input_hw=(64, 64))
    mask = np.zeros((64, 128), dtype=bool)
    mask[:32, :32] = True
    truth = ImageTruth(1, "x.png", 64, 128, [ObjectTruth("thing", (0, 0, 32, 32), np.array([[4.0, 4.0]]),
                                                         ("a",), mask)])
    m = quadrant_map(0, 0)  # top-left of what the model saw = x 64..96 of the image
    scores = score_image(m, m[None], PATCH, right_half, truth, OPTS)
    assert (scores.pointing, scores.pck_hits, scores.iou, scores.jaccard) == (0.0, 0, 0.0, 0.0)


def test_summaries_pool_keypoints_and_skip_images_without_masks():
    a = ImageScores(pointing=1.0, pck_hits=1, pck_total=3, iou=0.6, corloc=1.0, jaccard=0.5)
    b = ImageScores(pointing=0.0, pck_hits=2, pck_total=2, iou=0.2, corloc=0.0, jaccard=None)
    summary = summarize([a, b])
    assert summary == pytest.approx({"pointing_game": 0.5, "pck": 0.6, "box_iou": 0.4, "corloc": 0.5,
                                     "mask_jaccard": 0.5})
    assert mean_scores([a, a.__class__(0.0, 0, 3, 0.2, 0.0, 0.1)]) == pytest.approx(
        ImageScores(0.5, 0.5, 3, 0.4, 0.5, 0.3))
    assert summarize([]) == dict.fromkeys(("pointing_game", "pck", "box_iou", "corloc", "mask_jaccard"))


def test_load_coco_polygons_rle_and_visibility(tmp_path):
    coco = {
        "images": [{"id": 7, "file_name": "a.png", "height": 4, "width": 5},
                   {"id": 8, "file_name": "b.png", "height": 2, "width": 3}],
        "categories": [{"id": 1, "name": "cat", "keypoints": ["eye", "nose", "tail"]}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 3, 2],
             "segmentation": [[0, 0, 3, 0, 3, 2, 0, 2]], "keypoints": [1, 1, 2, 0, 0, 0, 2, 1, 1]},
            # uncompressed RLE runs down the columns: 1 zero, 2 ones, 3 zeros
            {"id": 2, "image_id": 8, "category_id": 1, "bbox": [0, 0, 2, 2], "segmentation": {"counts": [1, 2, 3],
                                                                                          "size": [2, 3]}},
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    a, b = load_coco(path)
    (obj,) = a.objects
    assert obj.category == "cat" and obj.box == (0, 0, 3, 2)
    assert obj.keypoint_names == ("eye", "tail") and obj.keypoints.tolist() == [[1, 1], [2, 1]]
    assert obj.mask.shape == (4, 5) and obj.mask.sum() == 6 and obj.mask[:2, :3].all()  # COCO: pixel centres
    assert obj.area == 6 and not obj.crowd
    assert b.objects[0].mask.tolist() == [[False, True, False], [True, False, False]]
    assert b.objects[0].keypoints.shape == (0, 2)


def test_load_coco_compressed_rle_and_crowd(tmp_path):
    from pycocotools import mask as coco_mask

    truth = np.zeros((6, 7), dtype=np.uint8, order="F")
    truth[1:4, 2:6] = 1
    truth[5, 0] = 1
    rle = coco_mask.encode(truth)
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 6, "width": 7}],
            "categories": [{"id": 3, "name": "people"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 1, 6, 5], "iscrowd": 1,
                             "area": 13, "segmentation": {"counts": rle["counts"].decode(), "size": [6, 7]}}]}
    path = tmp_path / "crowd.json"
    path.write_text(json.dumps(coco))
    ((obj,),) = (i.objects for i in load_coco(path))
    assert obj.crowd and obj.area == 13 and obj.category == "people"
    assert np.array_equal(obj.mask, truth.astype(bool))
    coco["annotations"][0]["segmentation"]["size"] = [7, 6]
    path.write_text(json.dumps(coco))
    with pytest.raises(AnnotationError, match="RLE size"):
        load_coco(path)


def _ap_truth() -> list[ImageTruth]:
    return [ImageTruth(1, "a.png", 100, 100, [ObjectTruth("cat", (10, 10, 40, 40), np.zeros((0, 2)), area=1600)]),
            ImageTruth(2, "b.png", 100, 100, [ObjectTruth("dog", (50, 50, 30, 30), np.zeros((0, 2)), area=900),
                                              ObjectTruth("crowd", (0, 0, 100, 20), np.zeros((0, 2)), crowd=True,
                                                          area=2000)])]


def test_coco_box_ap_known_answers():
    truth = _ap_truth()
    perfect = {1: [(10, 10, 40, 40, 0.9)], 2: [(50, 50, 30, 30, 0.8)]}
    assert coco_box_ap(truth, perfect) == {"box_ap": 1.0, "box_ap50": 1.0, "box_ap75": 1.0}
    crowd_hit = {**perfect, 2: [(50, 50, 30, 30, 0.8), (0, 0, 100, 20, 0.95)]}  # on the crowd: ignored
    assert coco_box_ap(truth, crowd_hit)["box_ap"] == 1.0
    # IoU of (10, 10, 40, 34) with the cat box is 34/40 = 0.85: a hit at 0.50..0.85, a miss above
    loose = {1: [(10, 10, 40, 34, 0.9)], 2: [(50, 50, 30, 30, 0.8)]}
    result = coco_box_ap(truth, loose)
    assert result["box_ap50"] == 1.0 and result["box_ap75"] == 1.0
    # IoU 0.90 and 0.95: the first detection (0.9) misses, the second hits: precision 1/2 up to recall 1/2,
    # which COCO's 101-point interpolation counts at recalls 0, 0.01, ..., 0.50
    expected = (8 * 1.0 + 2 * 0.5 * 51 / 101) / 10
    assert abs(result["box_ap"] - expected) < 1e-6
    assert coco_box_ap(truth, {})["box_ap"] == 0.0
    wrong_first = {1: [(60, 60, 30, 30, 0.99), (10, 10, 40, 40, 0.5)], 2: [(50, 50, 30, 30, 0.8)]}
    assert 0.5 < coco_box_ap(truth, wrong_first)["box_ap50"] < 1.0  # a false positive ranked above the hits


@pytest.mark.parametrize("content", ["not json", json.dumps({"images": [{"id": 1}]}), json.dumps([1, 2])])
def test_load_coco_errors_are_one_line(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(AnnotationError) as err:
        load_coco(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_shipped_sample_annotations_are_consistent():
    images = load_coco("data/annotations/samples_coco.json")
    assert [(i.file_name, i.height, i.width) for i in images] == [
        ("chelsea.png", 300, 451), ("astronaut.png", 512, 512), ("coffee.png", 400, 600)]
    for image in images:
        (obj,) = image.objects
        x, y, w, h = obj.box
        assert obj.mask is not None and obj.mask.any() and len(obj.keypoints) >= 2
        ys, xs = np.nonzero(obj.mask)  # the box is the polygon's box, keypoints lie inside it
        assert (xs.min(), ys.min()) == (x, y) and abs(xs.max() - (x + w)) <= 1 and abs(ys.max() - (y + h)) <= 1
        assert all(x <= px <= x + w and y <= py <= y + h for px, py in obj.keypoints)


def test_found_to_coco():
    record = {"file_name": "a.png", "height": 10, "width": 20, "keypoints": [
        {"x": 3.0, "y": 4.0, "score": 0.5, "area": 12.0, "box_xyxy": [1.0, 2.0, 5.0, 8.0]}]}
    coco = found_to_coco([record, {**record, "file_name": "b.png", "keypoints": []}])
    assert [i["file_name"] for i in coco["images"]] == ["a.png", "b.png"]
    (ann,) = coco["annotations"]
    assert ann["bbox"] == [1.0, 2.0, 4.0, 6.0] and ann["keypoints"] == [3.0, 4.0, 2] and ann["image_id"] == 1
