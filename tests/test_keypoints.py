"""Thresholds, keypoint finders and grid -> image coordinates against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vitprobe as vp
from tests.conftest import make_tiny
from vitprobe.analysis import keypoints as kp
from vitprobe.analysis.thresholds import Threshold, otsu
from vitprobe.io.preprocess import Geometry

# A non-square, cropped geometry: rows 10..290 and columns 75..375 of a 300x451 image were
# resized to 224x448 input pixels (a 16x32 grid of 14-pixel patches).
CROPPED = Geometry(original_hw=(300, 451), crop_box=(10.0, 75.0, 280.0, 300.0), input_hw=(224, 448))


def grid(rows: int, cols: int, cells: dict[tuple[int, int], float], background: float = 0.0) -> torch.Tensor:
    m = torch.full((rows, cols), background, dtype=torch.float64)
    for (r, c), v in cells.items():
        m[r, c] = v
    return m


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("abs:0.3", 0.3), ("rel:0.5", 49.5), ("pct:90", 89.1), ("pct:0", 0.0), ("pct:100", 99.0)],
)
def test_threshold_values(spec, expected):
    maps = torch.arange(100, dtype=torch.float64).reshape(1, 10, 10)
    assert Threshold.parse(spec).values(maps).item() == pytest.approx(expected)


def test_percentile_threshold_keeps_the_top_tenth():
    maps = torch.arange(100, dtype=torch.float64).reshape(1, 10, 10)
    mask = Threshold("pct", 90).mask(maps)
    assert mask.sum() == 10 and mask[0, 9].all() and not mask[0, :9].any()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, 2.0, 9.0, 10.0], 5.5),  # between-class variance 6.75, 16, 6.75: split after the 2nd value
        ([0.0, 0.0, 0.0, 10.0, 10.0], 5.0),
        ([0.0, 0.0, 1.0, 1.0], 0.5),
        ([3.0, 3.0, 3.0], 3.0),  # constant: no split, everything kept
        ([7.0], 7.0),
    ],
)
def test_otsu_exact(values, expected):
    assert otsu(torch.tensor(values)).item() == pytest.approx(expected)


def test_otsu_is_per_map_and_keeps_the_high_class():
    maps = torch.tensor([[[1.0, 2.0], [9.0, 10.0]], [[0.0, 4.0], [4.0, 4.0]]])
    assert Threshold.parse("otsu").values(maps).tolist() == pytest.approx([5.5, 2.0])
    assert Threshold.parse("otsu").mask(maps).tolist() == [[[False, False], [True, True]],
                                                          [[False, True], [True, True]]]


@pytest.mark.parametrize("text", ["bogus", "rel", "rel:x", "pct:120", "abs:", "otsu:3"])
def test_bad_threshold_specs_raise(text):
    with pytest.raises(ValueError):
        Threshold.parse(text)


def blobs() -> torch.Tensor:
    """6x8 map: a 2x2 block of 1.0 at rows/cols 1-2, a diagonal neighbour 0.8 at (3, 3), a 3.0 at (4, 6)."""
    cells = {(1, 1): 1.0, (1, 2): 1.0, (2, 1): 1.0, (2, 2): 1.0, (3, 3): 0.8, (4, 6): 3.0}
    return grid(6, 8, cells, background=0.1)[None]


def test_components_eight_connected():
    found = kp.components(blobs(), Threshold("abs", 0.5))
    a, b = found.keypoints[0]
    assert (a.row, a.col) == pytest.approx((1.8, 1.8))  # (1 + 1 + 2 + 2 + 3) / 5
    assert a.score == pytest.approx(4.8) and a.area == 5 and a.peak == 1.0 and a.box == (1, 1, 3, 3)
    assert (b.row, b.col, b.score, b.area, b.box) == (4.0, 6.0, 3.0, 1, (4, 6, 4, 6))
    assert found.masks.shape == (1, 6, 8) and found.masks.sum() == 6


def test_components_four_connected_and_top_k():
    found = kp.components(blobs(), Threshold("abs", 0.5), connectivity=1, top_k=2)
    a, b = found.keypoints[0]
    assert (a.row, a.col, a.score, a.area, a.box) == (1.5, 1.5, 4.0, 4, (1, 1, 2, 2))
    assert (b.row, b.col, b.score) == (4.0, 6.0, 3.0)  # the lone 0.8 patch is third and cut


def test_components_nothing_above_threshold():
    found = kp.components(blobs(), Threshold("abs", 5.0))
    assert found.keypoints == [[]] and not found.masks.any()


def test_weighted_average_above_threshold():
    maps = grid(4, 4, {(0, 0): 1.0, (0, 2): 3.0, (3, 3): 0.2})[None]
    (point,) = kp.weighted(maps, Threshold("abs", 0.5)).keypoints[0]
    assert (point.row, point.col) == (0.0, 1.5)  # (0·1 + 2·3) / 4; the 0.2 patch is below threshold
    assert (point.score, point.peak, point.area, point.box) == (4.0, 3.0, 2, (0, 0, 0, 2))
    assert kp.weighted(maps, Threshold("abs", 10.0)).keypoints == [[]]


def peak_map() -> torch.Tensor:
    cells = {(1, 1): 1.0, (1, 2): 0.5, (5, 5): 0.9, (5, 3): 0.8, (1, 5): 0.7}
    return grid(7, 7, cells)[None]


def test_peaks_nms_and_sub_patch_refinement():
    points = kp.peaks(peak_map(), Threshold("abs", 0.1), radius=2, window=1, top_k=None).keypoints[0]
    assert [(p.score, p.area) for p in points] == [(1.0, 2), (0.9, 1), (0.7, 1)]  # (5, 3) is within 2 of (5, 5)
    assert (points[0].row, points[0].col) == pytest.approx((1.0, 1 + 0.5 / 1.5))  # pulled towards the 0.5
    assert points[0].box == (1, 1, 1, 2)  # the above-threshold component holding the peak
    assert (points[1].row, points[1].col) == (5.0, 5.0) and (points[2].row, points[2].col) == (1.0, 5.0)


def test_peaks_radius_and_top_k():
    loose = kp.peaks(peak_map(), Threshold("abs", 0.1), radius=1, top_k=None).keypoints[0]
    assert [p.score for p in loose] == [1.0, 0.9, 0.8, 0.7]
    top = kp.peaks(peak_map(), Threshold("abs", 0.1), radius=1, top_k=2).keypoints[0]
    assert [p.score for p in top] == [1.0, 0.9]


def test_mass_finder_is_components_of_the_mass_mask():
    maps = grid(3, 3, {(0, 0): 0.4, (0, 1): 0.3, (2, 2): 0.2, (2, 0): 0.1})[None]
    found = kp.mass(maps, fraction=0.6)
    (point,) = found.keypoints[0]  # 0.4 + 0.3 reach 60 %; 0.2 is not needed
    assert (point.row, point.col, point.score, point.area) == pytest.approx((0.0, 0.5, 0.7, 2))
    assert found.masks[0].nonzero().tolist() == [[0, 0], [0, 1]]


def test_batched_maps_give_one_list_per_map():
    maps = torch.cat([blobs(), torch.zeros(1, 6, 8)])
    found = kp.find(maps, "components", Threshold("abs", 0.5))
    assert len(found.keypoints) == 2 and len(found.keypoints[0]) == 2 and found.keypoints[1] == []
    with pytest.raises(ValueError, match="unknown keypoint finder"):
        kp.find(maps, "nope")
    with pytest.raises(ValueError, match="B, H, W"):
        kp.find(maps[0], "components")


def test_grid_to_image_on_a_cropped_non_square_geometry():
    # patch (0, 0): centre (7, 7) in input pixels -> y = 10 + 7·280/224, x = 75 + 7·300/448
    assert kp.grid_to_image(0, 0, 14, CROPPED) == pytest.approx((79.6875, 18.75))
    assert kp.grid_to_image(15, 31, 14, CROPPED) == pytest.approx((75 + 441 * 300 / 448, 10 + 217 * 1.25))
    assert kp.grid_to_image(1.5, 2.25, 14, CROPPED) == pytest.approx((75 + 38.5 * 300 / 448, 45.0))
    # the whole grid's box is the crop box
    assert kp.grid_box_to_image((0, 0, 15, 31), 14, CROPPED) == pytest.approx((75.0, 10.0, 375.0, 290.0))


def test_keypoint_to_image_carries_box_and_area():
    point = kp.Keypoint(row=1.5, col=2.25, score=0.5, peak=0.2, area=4, box=(1, 2, 2, 3))
    placed = kp.to_image(point, 14, CROPPED)
    assert (placed.x, placed.y) == pytest.approx((75 + 38.5 * 300 / 448, 45.0))
    assert placed.box == pytest.approx((75 + 28 * 300 / 448, 27.5, 75 + 56 * 300 / 448, 62.5))
    assert placed.area == pytest.approx(4 * 196 * 1.25 * 300 / 448)
    record = placed.to_dict()
    assert record["x"] == round(placed.x, 2) and record["grid"]["box"] == [1, 2, 2, 3] and record["area"] > 0


def test_localize_a_cropped_non_square_capture_onto_the_original_image(tmp_path):
    """A real capture through the model's own resize + centre crop, carried back by hand.

    A 60x90 image: short side to 40 gives 40x60, the centre 32x24 crop starts at input (4, 18),
    i.e. original rows 6..54 and columns 27..63 (scale 1.5); patches of 8 make a 4x3 grid.
    """
    processor = {"do_resize": True, "size": {"shortest_edge": 40}, "do_center_crop": True,
                 "crop_size": {"height": 32, "width": 24}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    model = vp.load(str(make_tiny("dinov2", tmp_path / "tiny", processor=processor)))
    image = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    result = vp.attribute(model, image, method="cls")
    assert result.layout.grid_hw == (4, 3) and result.geometry[0].crop_box == pytest.approx((6.0, 27.0, 48.0, 36.0))
    # abs:0 keeps every patch: one component, the whole grid, centroid (1.5, 1.0)
    (found,) = vp.localize(result, vp.LocalizeOptions(find="components", threshold=vp.Threshold("abs", 0.0)))
    (point,) = found.keypoints
    assert (point.x, point.y) == pytest.approx((27 + 1.5 * 8 * 1.5, 6 + 2.0 * 8 * 1.5))
    assert point.box == pytest.approx((27.0, 6.0, 63.0, 54.0)) and point.area == pytest.approx(12 * 64 * 1.5**2)
    expected = np.zeros((60, 90), dtype=bool)
    expected[6:54, 27:63] = True  # the model saw nothing outside the crop box
    np.testing.assert_array_equal(found.mask, expected)
