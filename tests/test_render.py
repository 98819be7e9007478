"""render/: colormaps, overlays placed on the right pixels (height first), and figure grids."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from vitprobe.render import (
    Style,
    colorize,
    head_grid,
    layer_grid,
    maps_figure,
    normalize,
    overlay,
    save_figure,
    side_by_side,
)

GREY = 128


def grey(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), (GREY, GREY, GREY))


def one_hot(grid_hw: tuple[int, int], row: int, col: int) -> torch.Tensor:
    heat = torch.zeros(grid_hw)
    heat[row, col] = 1.0
    return heat


def brightness(out: Image.Image) -> np.ndarray:
    """Luma of each pixel (height, width); on a grey image inferno's hot end is the brightest."""
    return np.asarray(out, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])


def blend(colour: np.ndarray, alpha: float) -> np.ndarray:
    return np.rint((1 - alpha) * GREY + alpha * colour.astype(np.float64))


def inferno_rgb(x: float) -> np.ndarray:
    return np.asarray(matplotlib.colormaps["inferno"](x, bytes=True)[:3])


def axes_with_images(fig) -> list:
    return [ax for ax in fig.axes if ax.images]


# --- colormap ---------------------------------------------------------------------------------


def test_normalize_minmax_and_bounds():
    x = np.array([[2.0, 4.0], [6.0, 10.0]])
    np.testing.assert_allclose(normalize(x), [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(normalize(x, vmin=4.0, vmax=8.0), [[0.0, 0.0], [0.5, 1.0]])  # clipped
    np.testing.assert_allclose(normalize(torch.tensor(x)), normalize(x))
    np.testing.assert_allclose(normalize(np.array([-0.5, 0.3, 1.5]), mode="none"), [0.0, 0.3, 1.0])
    with pytest.raises(ValueError, match="mode"):
        normalize(x, mode="zscore")
    with pytest.raises(ValueError, match="minmax"):
        normalize(x, mode="none", vmax=2.0)


def test_clip_takes_the_top_of_the_scale_from_a_percentile():
    x = np.random.default_rng(0).gamma(0.5, size=(13, 17))
    x[4, 9] = 50.0  # one artifact-like patch far above the rest
    lo, hi = x.min(), np.quantile(x, 0.99)  # numpy's linear percentile, the definition
    np.testing.assert_allclose(normalize(x, clip=99.0), np.clip((x - lo) / (hi - lo), 0.0, 1.0), rtol=1e-12)
    np.testing.assert_allclose(normalize(x, clip=100.0), normalize(x))  # 100: the plain max
    np.testing.assert_allclose(normalize(x, vmax=2.0, clip=99.0), normalize(x, vmax=2.0))  # a given bound wins
    assert (normalize(x, clip=99.0) == 1.0).sum() == np.ceil(0.01 * x.size)  # the top 1% saturate
    for bad in (0.0, -5.0, 100.5):
        with pytest.raises(ValueError, match="percentile"):
            normalize(x, clip=bad)
    with pytest.raises(ValueError, match="minmax"):
        normalize(x, mode="none", clip=99.0)


def test_clipped_figures_show_what_one_extreme_patch_hides():
    """A dim blob beside one extreme patch: min..max leaves it dark, the 99th percentile shows it; the colour bar
    gets an arrow only where values lie above its top."""
    heat = torch.zeros(16, 16)
    heat[10:14, 2:6] = 1.0  # the blob
    heat[1, 14] = 100.0  # one extreme patch
    image = grey(64, 64)
    blob = (slice(42, 54), slice(10, 22))

    def blob_strength(fig) -> float:
        return brightness(Image.fromarray(axes_with_images(fig)[1].images[0].get_array()))[blob].mean()

    plain, clipped = (maps_figure(image, {"map": heat}, style=Style(clip=clip)) for clip in (100.0, 99.0))
    assert blob_strength(clipped) > blob_strength(plain) + 60
    assert blob_strength(head_grid(image, heat[None])) == pytest.approx(blob_strength(clipped))  # 99: the default
    assert blob_strength(layer_grid(image, heat[None], normalize="shared")) == pytest.approx(blob_strength(clipped))
    for fig, arrow in ((plain, "neither"), (clipped, "max"), (maps_figure(image, {"flat": heat * 0}), "neither")):
        fig.canvas.draw()
        (bar,) = [ax for ax in fig.axes if not ax.images and ax.get_title() != "top predictions"]
        assert bar._colorbar.extend == arrow
    np.testing.assert_array_equal(np.asarray(overlay(image, heat)),
                                  np.asarray(overlay(image, heat, Style(clip=100.0),
                                                     vmax=float(np.percentile(heat.numpy(), 99)))))


def test_constant_maps_give_zeros_not_nan():
    flat = np.full((3, 5), 0.37)
    assert np.array_equal(normalize(flat), np.zeros((3, 5)))
    coloured = colorize(flat)
    assert coloured.dtype == np.uint8 and coloured.shape == (3, 5, 3)
    assert (coloured == inferno_rgb(0.0)).all()
    out = np.asarray(overlay(grey(40, 30), torch.full((3, 4), 5.0), Style(alpha=0.5)))
    assert (out == blend(inferno_rgb(0.0), 0.5)).all()


def test_colorize_ramp_gets_brighter_for_inferno():
    rgb = colorize(np.linspace(0.0, 1.0, 64)[None, :]).astype(np.float64)[0] / 255
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    luminance = linear @ np.array([0.2126, 0.7152, 0.0722])
    assert (np.diff(luminance) > 0).all()
    assert luminance[0] < 0.01 and luminance[-1] > 0.8


def test_colorize_uses_vmin_vmax_and_named_cmap():
    ramp = np.array([[0.0, 0.5, 1.0]])
    assert (colorize(ramp, vmin=0.0, vmax=0.5)[0, 1] == inferno_rgb(1.0)).all()
    assert (colorize(ramp, cmap="gray")[0, 2] == 255).all()
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        colorize(np.zeros((2, 3, 4)))


# --- overlay ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_hot_patch_lands_in_its_pixel_box(mode):
    # 64 x 96 pixels on a (4, 6) grid: 16 px patches; the hot patch is row 2, col 4
    out = overlay(grey(96, 64), one_hot((4, 6), 2, 4), Style(alpha=0.5, upsample=mode))
    assert out.mode == "RGB" and out.size == (96, 64)
    strength = brightness(out)
    y, x = np.unravel_index(np.argmax(strength), strength.shape)
    assert 32 <= y < 48 and 64 <= x < 80
    pixels = np.asarray(out)
    cold = blend(inferno_rgb(0.0), 0.5)
    for corner in [(0, 0), (0, 95), (63, 0)]:  # far from the hot patch: grey blended with the map's minimum colour
        assert (pixels[corner] == cold).all()
    if mode == "nearest":
        assert (pixels[32:48, 64:80] == blend(inferno_rgb(1.0), 0.5)).all()
        assert (pixels[:32] == cold).all()


def test_non_square_grid_is_height_first():
    # 100 px high x 200 px wide image, grid (2, 4): hot patch row 1, col 3 is the bottom-right 50 x 50 block
    out = overlay(grey(200, 100), one_hot((2, 4), 1, 3), Style(upsample="nearest"))
    assert out.size == (200, 100)
    strength = brightness(out)
    hot = strength > strength.min()
    assert hot[50:, 150:].all()
    assert not hot[:50].any() and not hot[:, :150].any()
    y, x = np.unravel_index(np.argmax(brightness(overlay(grey(200, 100), one_hot((2, 4), 1, 3)))), (100, 200))
    assert y >= 50 and x >= 150


def test_alpha_zero_and_one():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    heat = torch.rand(3, 5, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.asarray(overlay(image, heat, Style(alpha=0.0))), np.asarray(image))
    full = np.asarray(overlay(image, heat, Style(alpha=1.0, upsample="nearest", clip=100.0)))
    assert np.array_equal(full[:10, :10], np.broadcast_to(colorize(heat)[0, 0], (10, 10, 3)))
    assert np.array_equal(np.asarray(overlay(image, heat)), np.asarray(overlay(image, heat.numpy())))
    with pytest.raises(ValueError, match="alpha"):
        Style(alpha=1.5)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        overlay(image, heat[None])


def test_side_by_side_pastes_left_to_right():
    red, blue = Image.new("RGB", (20, 10), "red"), Image.new("RGB", (30, 16), "blue")
    out = side_by_side([red, blue], gap=4)
    assert out.size == (54, 16)
    px = np.asarray(out)
    assert (px[0, 0] == [255, 0, 0]).all() and (px[0, 24] == [0, 0, 255]).all()
    assert (px[15, 5] == 255).all()  # below the shorter image: background


# --- figures ----------------------------------------------------------------------------------


def test_head_grid_panels_titles_and_aspect():
    image = grey(451, 300)  # non-square, like skimage's chelsea
    maps = torch.rand(6, 16, 24, generator=torch.Generator().manual_seed(1))
    extra = {"mean": maps.mean(0), "max": maps.amax(0), "min": maps.amin(0)}
    fig = head_grid(image, maps, title="layer 11", extra=extra)
    assert isinstance(fig.canvas, FigureCanvasAgg)
    panels = axes_with_images(fig)
    assert [ax.get_title() for ax in panels] == ["image"] + [f"head {i}" for i in range(6)] + ["mean", "max", "min"]
    fig_w, fig_h = fig.get_size_inches()
    for ax in panels:
        box = ax.get_position()
        assert box.width * fig_w / (box.height * fig_h) == pytest.approx(451 / 300, rel=0.01)  # not stretched
        assert not ax.axison
        assert ax.images[0].get_array().shape[:2] == (300, 451)
    assert fig.get_suptitle() == "layer 11"
    columns = {round(ax.get_position().x0, 3) for ax in panels}
    assert 4 <= len(columns) <= 6


def test_head_grid_shared_normalization_keeps_relative_strength():
    image = grey(64, 64)
    strong = one_hot((4, 4), 1, 1)
    maps = torch.stack([strong, 0.5 * strong])
    peak = (slice(16, 32), slice(16, 32))

    def peak_strength(fig, index: int) -> float:
        return brightness(Image.fromarray(axes_with_images(fig)[index].images[0].get_array()))[peak].max()

    per_map = head_grid(image, maps)
    assert peak_strength(per_map, 1) == pytest.approx(peak_strength(per_map, 2))
    shared = head_grid(image, maps, normalize="shared")
    assert peak_strength(shared, 1) > peak_strength(shared, 2) + 20
    with pytest.raises(ValueError, match="normalize"):
        head_grid(image, maps, normalize="global")


def test_layer_grid_labels_are_model_layer_indices():
    maps = torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(2))
    fig = layer_grid(grey(60, 40), maps, layer_ids=[3, 7, 11], extra={"rollout": maps[0]})
    assert [ax.get_title() for ax in axes_with_images(fig)] == ["image", "layer 3", "layer 7", "layer 11", "rollout"]
    default = layer_grid(grey(60, 40), maps)
    assert [ax.get_title() for ax in axes_with_images(default)][1:] == ["layer 0", "layer 1", "layer 2"]
    with pytest.raises(ValueError, match="layer_ids"):
        layer_grid(grey(60, 40), maps, layer_ids=[0, 1])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        layer_grid(grey(60, 40), maps[0])


def test_maps_figure_row_with_colorbars_showing_raw_range():
    maps = {"mean": torch.linspace(0.0, 0.5, 12).reshape(3, 4), "rollout": torch.full((3, 4), 2.0)}
    fig = maps_figure(grey(80, 60), maps, title="aggregation")
    panels = axes_with_images(fig)
    assert [ax.get_title() for ax in panels] == ["image", "mean", "rollout"]
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == 1  # one row
    bars = [ax for ax in fig.axes if not ax.images]
    assert len(bars) == 2
    fig.canvas.draw()
    assert [t.get_text() for t in bars[0].get_xticklabels()] == ["0", "0.495"]  # min to the 99th percentile
    raw = maps_figure(grey(80, 60), maps, style=Style(clip=100.0))
    raw.canvas.draw()
    assert [t.get_text() for t in [ax for ax in raw.axes if not ax.images][0].get_xticklabels()] == ["0", "0.5"]
    plain = maps_figure(grey(80, 60), maps, style=Style(colorbar=False))
    assert len(plain.axes) == 3


def test_save_figure_writes_png(tmp_path):
    fig = maps_figure(grey(90, 60), {"a": torch.rand(3, 4)}, title="t")
    path = save_figure(fig, tmp_path / "nested" / "dir" / "fig.png", dpi=80)
    assert path == tmp_path / "nested" / "dir" / "fig.png"
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.width > 90 and png.height > 60
        assert len(set(np.asarray(png.convert("L")).ravel().tolist())) > 10  # drew something, not a blank page


def test_large_images_are_drawn_downscaled_with_aspect_kept():
    fig = maps_figure(grey(2000, 1000), {"a": one_hot((2, 4), 0, 0)}, style=Style(colorbar=False))
    shapes = [ax.images[0].get_array().shape[:2] for ax in axes_with_images(fig)]
    assert shapes == [(400, 800), (400, 800)]


def test_style_rejects_bad_values_naming_the_option():
    for kwargs, option in (({"cmap": "no-such-map"}, "--cmap"), ({"clip": 0.0}, "--clip"),
                           ({"clip": 100.5}, "--clip"), ({"upsample": "bicubic"}, "--upsample")):
        with pytest.raises(ValueError, match=option):
            Style(**kwargs)
    assert Style().describe() == "each map from its min to its 99th percentile"
    assert Style(clip=100).describe() == "each map from its min to its max"


def test_grids_say_whether_panels_share_a_scale():
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(3))
    notes = [[t.get_text() for t in fig.texts] for fig in (head_grid(grey(40, 40), maps),
                                                          head_grid(grey(40, 40), maps, normalize="shared"))]
    assert notes[0] == ["each panel on its own colour scale (min to 99th percentile)"]
    assert notes[1] == ["one colour scale for all panels (min to 99th percentile)"]
    assert len([ax for ax in head_grid(grey(40, 40), maps).axes if not ax.images]) == 3  # a colour bar per head


def test_maps_of_both_signs_are_centred_at_zero_in_a_diverging_colormap():
    """A signed map (IG, occlusion, AttnLRP) gets the diverging colormap on (−m, m), m the clip percentile of
    |value|; a non-negative map keeps the sequential one from its min."""
    from PIL import Image as PILImage

    from vitprobe.render.colormap import is_signed, signed_range
    from vitprobe.render.figures import grid_figure
    from vitprobe.render.style import Style

    signed = np.linspace(-1.0, 3.0, 16).reshape(4, 4)
    assert is_signed(signed) and not is_signed(np.abs(signed)) and not is_signed(np.zeros((2, 2)))
    assert signed_range(signed) == (-3.0, 3.0)
    low, high = signed_range(signed, 50)
    assert low == -high and high == pytest.approx(np.percentile(np.abs(signed), 50))
    image = PILImage.new("RGB", (32, 32), "grey")
    fig = grid_figure(image, [("signed", signed), ("positive", np.abs(signed))], style=Style(clip=100))
    bars = [ax._colorbar.mappable for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]
    low = float(np.abs(signed).min())  # the non-negative map's own minimum
    assert [(b.norm.vmin, b.norm.vmax, b.cmap.name) for b in bars] == [(-3.0, 3.0, "RdBu_r"), (low, 3.0, "inferno")]
