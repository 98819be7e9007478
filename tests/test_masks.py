"""DINO mass-threshold masks and grid masks carried onto the original image, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe.analysis.masks import grid_mask_to_image, mass_masks
from vitprobe.io.preprocess import Geometry


@pytest.mark.parametrize(
    ("fraction", "kept"),
    [
        (0.4, [[True, False], [False, False]]),  # 0.4 alone reaches 0.4
        (0.6, [[True, True], [False, False]]),  # 0.4 < 0.6, so 0.3 joins; 0.7 >= 0.6 stops
        (0.7, [[True, True], [False, False]]),  # exactly reached by 0.4 + 0.3
        (0.71, [[True, True], [True, False]]),
        (1.0, [[True, True], [True, True]]),
    ],
)
def test_mass_mask_smallest_set_reaching_the_fraction(fraction, kept):
    maps = torch.tensor([[4.0, 3.0], [2.0, 1.0]])  # total 10: fractions of it are exact
    assert mass_masks(maps, fraction).tolist() == kept


def test_mass_mask_is_scale_free_and_per_head():
    heads = torch.stack([torch.tensor([[4.0, 3.0], [2.0, 1.0]]), torch.tensor([[1.0, 2.0], [3.0, 4.0]])])
    masks = mass_masks(heads[None], 0.6)  # (B=1, heads=2, 2, 2)
    assert masks.shape == (1, 2, 2, 2)
    assert masks[0, 0].tolist() == [[True, True], [False, False]]
    assert masks[0, 1].tolist() == [[False, False], [True, True]]


def test_mass_mask_ties_in_row_major_order_zero_maps_and_errors():
    assert mass_masks(torch.ones(2, 2), 0.5).tolist() == [[True, True], [False, False]]
    assert not mass_masks(torch.zeros(3, 3), 0.6).any()
    with pytest.raises(ValueError, match="non-negative"):
        mass_masks(torch.tensor([[1.0, -1.0]]), 0.6)
    with pytest.raises(ValueError, match="fraction"):
        mass_masks(torch.ones(2, 2), 0.0)


def test_grid_mask_to_image_follows_the_crop():
    # columns 1..5 of a 4x6 image were resized to 8x8 input pixels: a 2x2 grid of 4-pixel patches
    geometry = Geometry(original_hw=(4, 6), crop_box=(0.0, 1.0, 4.0, 4.0), input_hw=(8, 8))
    grid = torch.tensor([[True, False], [False, True]])
    expected = np.array([
        [0, 1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 0],
    ], dtype=bool)  # column 0 and column 5 lie outside the crop box
    np.testing.assert_array_equal(grid_mask_to_image(grid, 4, geometry), expected)


def test_grid_mask_to_image_resized_non_square():
    # a 3x2 image stretched to a 6x4 input of 2-pixel patches: each patch is one original pixel
    geometry = Geometry(original_hw=(3, 2), crop_box=(0.0, 0.0, 3.0, 2.0), input_hw=(6, 4))
    grid = np.array([[1, 0], [0, 0], [1, 1]], dtype=bool)
    np.testing.assert_array_equal(grid_mask_to_image(grid, 2, geometry), grid)
    with pytest.raises(ValueError, match="does not match"):
        grid_mask_to_image(grid.T, 2, geometry)
