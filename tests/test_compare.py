"""``vp.compare`` / ``vitprobe compare``: analyze runs of two tiny random models over a few tiny images put
side by side; every number checked against the runs' own records and aggregates, the figure's contents read
back from its axes."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vitprobe as vp
from vitprobe.cli import app
from vitprobe.comparison import NotARun, read_run
from vitprobe.render.compare import distance_comparison, entropy_comparison, levels_comparison
from vitprobe.runner import AnalyzeOptions, read_image_list, run_analysis

pq = pytest.importorskip("pyarrow.parquet")
N_IMAGES = 6


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("compare_photos") / "photos"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(N_IMAGES):
        pixels = (rng.random((int(rng.integers(30, 60)), int(rng.integers(30, 60)), 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def runs(tiny_dirs, photos, tmp_path_factory) -> dict[str, Path]:
    """Analyze runs: ``vit`` and ``dinov2`` (3 layers, 4 heads) over all photos, ``subset`` (the dinov2
    model again) over three of them copied to another folder, so only their names relative to it match."""
    root = tmp_path_factory.mktemp("compare_runs")
    out = {}
    for name, kind in (("vit", "vit"), ("dinov2", "dinov2")):
        model = vp.load(str(tiny_dirs[kind]))
        run_analysis(model, read_image_list(photos), root / name, AnalyzeOptions(batch_size=4, progress=False))
        out[name] = root / name
    other = root / "elsewhere" / "copies"
    other.mkdir(parents=True)
    for i in (0, 2, 4):
        shutil.copy(photos / f"img{i}.png", other / f"img{i}.png")
    model = vp.load(str(tiny_dirs["dinov2"]))
    run_analysis(model, read_image_list(other), root / "subset", AnalyzeOptions(batch_size=4, progress=False))
    out["subset"] = root / "subset"
    return out


def record_means(run: Path, metric: str, images: set[str] | None = None) -> np.ndarray:
    """(L, heads) or (L,) mean over ``images`` (all: None) of ``metric``, straight from records.parquet."""
    rows = [r for r in pq.read_table(run / "records.parquet").to_pylist()
            if r["metric"] == metric and (images is None or r["image"] in images)]
    layers = 1 + max(r["layer"] for r in rows)
    if rows[0]["head"] is None:
        return np.array([np.mean([r["value"] for r in rows if r["layer"] == layer]) for layer in range(layers)])
    heads = 1 + max(r["head"] for r in rows)
    return np.array([[np.mean([r["value"] for r in rows if r["layer"] == layer and r["head"] == head])
                      for head in range(heads)] for layer in range(layers)])


def test_curves_equal_the_runs_aggregates_and_records(runs, tmp_path):
    result = vp.compare([runs["vit"], runs["dinov2"]], tmp_path, maps=False)
    assert result.matched == f"{N_IMAGES} images in common (by name; vit {N_IMAGES}, dinov2 {N_IMAGES} images)"
    for name in ("vit", "dinov2"):
        aggregates = json.loads((runs[name] / "aggregates.json").read_text())
        for metric in ("mean_attention_distance", "mean_attention_distance_renormalized", "entropy_cls",
                       "entropy_rows", "entropy_cls_map", "entropy_rollout_map"):
            # every image is common: the means are the run's own dataset means (computed there by Chan's rule)
            np.testing.assert_allclose(result.curves[name][metric], np.asarray(aggregates["metrics"][metric]["mean"]),
                                       rtol=1e-9, atol=1e-12)
    rows = list(csv.DictReader((tmp_path / "layers.csv").open()))
    assert [(r["run"], int(r["layer"])) for r in rows] == [(n, i) for n in ("vit", "dinov2") for i in range(3)]
    distance = record_means(runs["dinov2"], "mean_attention_distance")
    for layer in range(3):
        row = rows[3 + layer]
        assert float(row["depth"]) == pytest.approx((layer + 1) / 3, abs=1e-4)
        assert float(row["mean_attention_distance"]) == pytest.approx(distance[layer].mean(), rel=1e-9)
        assert float(row["mean_attention_distance_min_head"]) == pytest.approx(distance[layer].min(), rel=1e-9)
        assert float(row["mean_attention_distance_max_head"]) == pytest.approx(distance[layer].max(), rel=1e-9)
    runs_csv = {r["run"]: r for r in csv.DictReader((tmp_path / "runs.csv").open())}
    assert runs_csv["vit"]["model"].endswith("vit") and runs_csv["dinov2"]["family"] == "hf-dinov2"
    assert int(runs_csv["vit"]["images_compared"]) == N_IMAGES
    markdown = (tmp_path / "comparison.md").read_text()
    assert result.matched in markdown and "| dinov2 | 2 | 1 |" in markdown  # run, layer, depth ...
    page = (tmp_path / "compare.html").read_text()
    assert result.matched in page and "compare_files/distance.png" in page
    for name in ("distance", "entropy", "levels"):
        assert Image.open(tmp_path / "compare_files" / f"{name}.png").size[0] > 500


def test_the_distance_figure_holds_every_run_and_head(runs):
    result = vp.compare([runs["vit"], runs["dinov2"]], maps=False)
    fig = distance_comparison(result)
    axes = fig.axes[:2]
    for ax, metric in zip(axes, ("mean_attention_distance", "mean_attention_distance_renormalized"), strict=True):
        lines = {line.get_label(): line for line in ax.get_lines()}
        for name in ("vit", "dinov2"):
            (label,) = [k for k in lines if k.startswith(f"{name} (") and k.endswith("head mean")]
            np.testing.assert_allclose(lines[label].get_ydata(), record_means(runs[name], metric).mean(axis=1),
                                       rtol=1e-9)
            depth = np.asarray(lines[label].get_xdata())
            np.testing.assert_allclose(depth, np.array([1, 2, 3]) / 3, atol=0.01)  # normalised depth (dodged)
            uniform = json.loads((runs[name] / "aggregates.json").read_text())["distance_uniform_px"]
            assert any(k.startswith(f"{name}: uniform") and line.get_ydata()[0] == pytest.approx(uniform)
                       for k, line in lines.items())
        points = [c.get_offsets() for c in ax.collections]
        assert [len(p) for p in points] == [3 * 4, 3 * 4]  # one point per layer and head, per run
        for offsets, name in zip(points, ("vit", "dinov2"), strict=True):
            np.testing.assert_allclose(np.sort(offsets[:, 1]), np.sort(record_means(runs[name], metric).ravel()),
                                       rtol=1e-6)
    entropy = entropy_comparison(result)
    assert [ax.get_title() for ax in entropy.axes] == ["CLS row over all tokens", "all query rows (mean)",
                                                        "head-mean CLS map over the patches",
                                                        "rollout map through the layer"]
    levels = levels_comparison(result)
    heights = [bar.get_height() for bar in levels.axes[0].patches]
    assert len(heights) == 8 and sum(heights) == 2 * N_IMAGES


def test_runs_over_different_images_compare_on_the_common_ones(runs, photos):
    result = vp.compare([runs["dinov2"], runs["subset"]], maps=False)
    assert result.matched == ("3 images in common (by name relative to each run's folder; dinov2 6, subset 3 "
                              "images)")
    assert result.keys == ["img0.png", "img2.png", "img4.png"]
    common = {str(photos / f"img{i}.png") for i in (0, 2, 4)}
    names = set(read_run(runs["dinov2"]).images)
    assert common <= names, names  # the records name images by the path they were read from
    # the same model on the same three images: its curves over the common images equal the subset run's
    expected = record_means(runs["dinov2"], "mean_attention_distance", common)
    np.testing.assert_allclose(result.curves["dinov2"]["mean_attention_distance"], expected, rtol=1e-9)
    np.testing.assert_allclose(result.curves["subset"]["mean_attention_distance"], expected, rtol=1e-5)
    assert not np.allclose(expected, record_means(runs["dinov2"], "mean_attention_distance"))


def test_a_run_compared_with_its_copy_agrees_exactly(runs, tmp_path):
    copy = tmp_path / "vit_again"
    shutil.copytree(runs["vit"], copy)
    result = vp.compare([runs["vit"], copy, runs["dinov2"]], tmp_path / "out", map_images=4)
    assert result.level_agreement[("vit", "vit_again")] == (1.0, pytest.approx(1.0))
    same, rho = result.level_agreement[("vit", "dinov2")]
    assert 0 <= same <= 1 and -1 <= rho <= 1
    assert set(result.maps) == {(a, b, m) for a, b in (("vit", "vit_again"), ("vit", "dinov2"),
                                                       ("vit_again", "dinov2")) for m in ("cls", "rollout")}
    np.testing.assert_allclose(result.maps[("vit", "vit_again", "cls")], 1.0, atol=1e-9)
    np.testing.assert_allclose(result.maps[("vit", "vit_again", "rollout")], 1.0, atol=1e-9)
    different = np.asarray(result.maps[("vit", "dinov2", "cls")])
    assert len(different) == 4 and np.all(np.abs(different) <= 1) and np.all(different < 0.999)
    assert result.maps_note == f"map agreement on 4 of {N_IMAGES} common images"
    maps_csv = list(csv.DictReader((tmp_path / "out" / "maps.csv").open()))
    assert len(maps_csv) == 3 * 2 * 4


def test_maps_left_out_with_a_note_when_a_model_cannot_be_loaded(runs, tmp_path):
    broken = tmp_path / "gone"
    shutil.copytree(runs["vit"], broken)
    aggregates = json.loads((broken / "aggregates.json").read_text())
    aggregates["model"]["model"] = str(tmp_path / "no_such_model")
    (broken / "aggregates.json").write_text(json.dumps(aggregates))
    result = vp.compare([broken, runs["dinov2"]], map_images=2)
    assert result.maps == {}
    assert result.maps_note.startswith("map agreement on 2 of 6 common images; left out: gone: model ")


def test_not_a_finished_run_is_one_line(runs, photos, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(runs["vit"] / "manifest.json", unfinished)
    cases = {photos: "is not a vitprobe analyze run (no manifest.json)",
             unfinished: "is an unfinished analyze run (no aggregates.json): run the same vitprobe analyze",
             tmp_path / "missing": "no such folder"}
    for folder, words in cases.items():
        with pytest.raises(NotARun, match=re.escape(words)):
            vp.compare([runs["vit"], folder])
        result = CliRunner().invoke(app, ["compare", str(runs["vit"]), str(folder), "--out", str(tmp_path / "o")])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and words in lines[0], result.output
    one = CliRunner().invoke(app, ["compare", str(runs["vit"])])
    assert one.exit_code == 2 and "at least two" in one.output


def test_vitprobe_compare_writes_the_page_and_tables(runs, tmp_path):
    result = CliRunner().invoke(app, ["compare", str(runs["vit"]), str(runs["dinov2"]), "--out", str(tmp_path),
                                      "--map-images", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"{N_IMAGES} images in common (by name; vit {N_IMAGES}, dinov2 " \
                                            f"{N_IMAGES} images)"
    assert "map agreement on 2 of 6 common images" in result.output
    for name in ("compare.html", "layers.csv", "runs.csv", "levels.csv", "maps.csv", "comparison.md"):
        assert (tmp_path / name).is_file(), name


def test_analyze_compare_with_runs_then_compares(runs, photos, tiny_dirs, tmp_path):
    out = tmp_path / "deit"
    args = ["analyze", str(photos), "--model", str(tiny_dirs["deit"]), "--out", str(out), "--no-progress",
            "--no-report"]
    bad = CliRunner().invoke(app, [*args, "--compare-with", str(photos)])
    assert bad.exit_code == 2 and "--compare-with: " in bad.output and "no manifest.json" in bad.output
    assert not (out / "records.parquet").exists()  # refused before anything ran
    done = CliRunner().invoke(app, [*args, "--compare-with", str(runs["vit"])])
    assert done.exit_code == 0, done.output
    assert f"{N_IMAGES} images in common (by name; deit {N_IMAGES}, vit {N_IMAGES} images)" in done.stdout
    rows = list(csv.DictReader((out / "compare" / "runs.csv").open()))
    assert [r["run"] for r in rows] == ["deit", "vit"] and rows[0]["family"] == "hf-deit"


def test_map_agreement_of_any_method_with_refusals_noted(runs, photos, tiny_dirs):
    """``map_methods`` names any registered method; one a model cannot draw (pool: no pooling head) is left out
    with the model's own reason; the agreement is Spearman's rho of the two maps on the photo's pixels."""
    from scipy.stats import spearmanr

    result = vp.compare([runs["vit"], runs["dinov2"]], map_methods="layers,pool", map_images=2)
    assert set(result.maps) == {("vit", "dinov2", "layers")}
    assert "vit: pool (method 'pool'" in result.maps_note and "dinov2: pool (method 'pool'" in result.maps_note
    first = sorted(p.name for p in photos.iterdir())[0]
    maps = []
    for kind in ("vit", "dinov2"):
        res = vp.attribute(vp.load(str(tiny_dirs[kind])), photos / first, method="layers")
        maps.append(res.on_image(0).numpy().astype(np.float64).ravel())
    keep = np.isfinite(maps[0]) & np.isfinite(maps[1])
    expected = spearmanr(maps[0][keep], maps[1][keep]).statistic
    assert result.maps[("vit", "dinov2", "layers")][0] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        vp.compare([runs["vit"], runs["dinov2"]], map_methods=["nope"])
    cli = CliRunner().invoke(app, ["compare", str(runs["vit"]), str(runs["dinov2"]), "--map-method", "nope"])
    assert cli.exit_code == 2 and "unknown method 'nope'" in cli.output
