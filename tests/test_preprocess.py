"""Preprocessing geometry: which original pixels the model saw, and sizes snapped to the patch grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitprobe.io.preprocess import PreprocessSpec, preprocess, snap_to_patches


def gradient_image(h: int, w: int) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([yy * 255 // max(h - 1, 1), xx * 255 // max(w - 1, 1), np.zeros_like(xx)], -1)
    return Image.fromarray(arr.astype(np.uint8))


def test_shortest_edge_and_centre_crop_geometry():
    spec = PreprocessSpec(shortest_edge=64, resize_hw=None, crop_hw=(64, 64), mean=(0, 0, 0), std=(1, 1, 1))
    pixels, view, geo = preprocess(gradient_image(300, 450), spec, patch_size=16)
    assert pixels.shape == (3, 64, 64) and geo.input_hw == (64, 64)
    top, left, h, w = geo.crop_box
    assert (top, h) == (0.0, 300.0) and w == pytest.approx(300.0) and left == pytest.approx(75.0)
    assert view.size == (300, 300)  # PIL: (W, H)
    # the model's left edge is original column 75: green channel encodes x
    assert abs(pixels[1, :, 0].mean().item() - 75 / 449) < 0.02
    assert geo.input_to_original(32, 32) == pytest.approx((150.0, 225.0))


def test_size_resizes_whole_image_height_first():
    spec = PreprocessSpec().with_size((32, 64))
    pixels, view, geo = preprocess(gradient_image(100, 80), spec, patch_size=16)
    assert pixels.shape == (3, 32, 64)
    assert geo.crop_box == (0.0, 0.0, 100.0, 80.0) and view.size == (80, 100)


def test_sizes_snap_to_patch_multiples_with_a_warning(caplog):
    assert snap_to_patches((224, 448), 14) == (224, 448)
    with caplog.at_level("WARNING"):
        assert snap_to_patches((224, 450), 14) == (224, 448)
    assert "not a multiple" in caplog.text
    assert snap_to_patches((3, 5), 16) == (16, 16)
    pixels, _, _ = preprocess(gradient_image(50, 50), PreprocessSpec().with_size((30, 50)), patch_size=16)
    assert pixels.shape[1:] == (32, 48)


def test_normalisation_uses_the_spec_mean_and_std():
    img = Image.new("RGB", (16, 16), (255, 0, 128))
    spec = PreprocessSpec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5), resize_hw=(16, 16))
    pixels, _, _ = preprocess(img, spec, patch_size=16)
    expect = torch.tensor([1.0, -2.0, (128 / 255 - 0.5) / 0.5])
    assert torch.allclose(pixels[:, 0, 0], expect, atol=1e-5)
