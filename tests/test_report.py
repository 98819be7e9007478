"""The HTML report: its figures hold the data, its files exist, and it renders in a real browser."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from vitprobe.io.samples import write_samples
from vitprobe.models.hf import load_hf
from vitprobe.render.plots import distance_scatter, entropy_plot, position_grid_figure, tile_grid
from vitprobe.render.report import ReportOptions, write_report
from vitprobe.reporting import report_inputs
from vitprobe.runner import AnalyzeOptions, read_image_list, run_analysis

pytest.importorskip("pyarrow")
pytest.importorskip("jinja2")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]
SECTIONS = ("distance", "entropy", "spread", "examples", "embeddings", "artifacts", "failures")


@pytest.fixture(scope="module")
def report_dir(tiny_dirs, tmp_path_factory) -> Path:
    """A run of the tiny DINOv2-with-registers model over 12 variants of the sample photos and one bad file."""
    pytest.importorskip("skimage")
    root = tmp_path_factory.mktemp("report")
    images = root / "images"
    images.mkdir()
    for i, path in enumerate(write_samples(root / "src") * 4):
        img = Image.open(path).convert("RGB").resize((64 + 8 * i, 48 + 4 * i))
        (ImageOps.mirror(img) if i % 2 else img).save(images / f"{path.stem}_{i}.png")
    (images / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    model = load_hf(str(tiny_dirs["dinov2_with_registers"]))
    out = root / "out"
    aggregates = run_analysis(model, read_image_list(images), out, AnalyzeOptions(batch_size=5, progress=False))
    aggregates["timing"] = {"images_this_session": 13, "seconds": 2.0, "images_per_second": 6.5,
                            "peak_rss_mb_per_rank": [512.0]}
    opts = ReportOptions(examples=2, per_level=2)
    write_report(out, aggregates, report_inputs(model, aggregates, opts), opts.style)
    return out


def test_report_files_and_contents(report_dir):
    html = (report_dir / "report.html").read_text()
    sources = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(sources) >= 9 + 4 + 2  # figures, thumbnails of the four levels, examples
    for src in sources:
        assert not src.startswith(("/", "http")) and (report_dir / src).is_file(), src
    for section in SECTIONS:
        assert f'id="{section}"' in html
    aggregates = json.loads((report_dir / "aggregates.json").read_text())
    assert [f"Spread level {k}" in html for k in "1234"] == [True] * 4
    assert sum(len(v) for v in aggregates["spread_levels"]["levels"].values()) == 12
    assert "zz_broken.png" in html and "12 of 13 images analysed" in html
    assert "6.50 images/s" in html
    assert "colours run from its\nminimum to its 99th percentile" in html  # the colour scale drawn is stated
    for level in aggregates["spread_levels"]["levels"].values():  # sorted by entropy within a level
        values = [m["entropy_cls_map"] for m in level]
        assert values == sorted(values)


def test_report_renders_in_chromium(report_dir, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
            page.goto((report_dir / "report.html").as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
            headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.id)")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert len(images) >= 15
    assert all(complete and width > 0 for _, complete, width in images), [s for s, c, w in images if not w]
    assert headings == list(SECTIONS)
    with Image.open(tmp_path / "report.png") as shot:
        assert shot.width == 1280 and shot.height > 3000


def test_distance_scatter_draws_one_point_per_head_at_its_layer():
    values = np.arange(12, dtype=float).reshape(3, 4) * 10  # (layers, heads)
    fig = distance_scatter(values, [0, 5, 11], uniform=55.0)
    ax = fig.axes[0]
    points = [c.get_offsets() for c in ax.collections]
    assert len(points) == 4
    for head, xy in enumerate(points):
        np.testing.assert_array_equal(xy, np.c_[[0, 5, 11], values[:, head]])
    mean_line, uniform_line = ax.lines
    np.testing.assert_array_equal(mean_line.get_ydata(), values.mean(1))
    assert list(uniform_line.get_ydata()) == [55.0, 55.0]
    with pytest.raises(ValueError, match="layers"):
        distance_scatter(values, [0, 1])


def test_entropy_plot_has_a_panel_per_quantity():
    per_head = {"a": np.ones((2, 3)), "b": 2 * np.ones((2, 3))}
    fig = entropy_plot(per_head, [0, 1], {"map": np.array([0.5, 0.7])}, {"log T": 3.0})
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    np.testing.assert_array_equal(fig.axes[1].lines[0].get_ydata(), [2.0, 2.0])
    np.testing.assert_array_equal(fig.axes[1].lines[1].get_ydata(), [0.5, 0.7])


def test_tile_grid_places_tiles_row_major_with_gaps():
    tiles = np.arange(5, dtype=float)[:, None, None] * np.ones((5, 2, 3))
    mosaic = tile_grid(tiles, ncols=3, gap=1, background=-1)
    assert mosaic.shape == (2 * 2 + 1, 3 * 3 + 2)
    assert (mosaic[0:2, 4:7] == 1).all() and (mosaic[3:5, 4:7] == 4).all()
    assert (mosaic[2] == -1).all() and (mosaic[3:5, 8:] == -1).all()  # gap row; empty sixth cell


def test_position_grid_subsamples_positions_height_first():
    h, w = 20, 30
    sim = np.zeros((h, w, h, w))
    for r in range(h):
        for c in range(w):
            sim[r, c, r, c] = 1.0  # each map lights its own cell
    fig = position_grid_figure(sim, max_cells=5)
    ax = fig.axes[0]
    rows = [int(t.get_text()) for t in ax.get_yticklabels()]
    cols = [int(t.get_text()) for t in ax.get_xticklabels()]
    assert rows[0] == 0 and rows[-1] == h - 1 and cols[-1] == w - 1 and len(rows) == len(cols) == 5
