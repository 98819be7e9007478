"""Hugging Face datasets as the ``datasets`` package itself writes them (``Dataset.save_to_disk``,
``DatasetDict.save_to_disk``, ``to_parquet``; ``ClassLabel`` and ``Image`` features) analyse exactly like a
folder of the same image files; splits are picked, the image column is found by its feature type or
chosen, labels go into the records and the per-class means; reading needs pyarrow, never ``datasets``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.test_datasets import encoded
from tests.test_runner import read_outputs, single_thread_env
from vitprobe.cli import app
from vitprobe.io import datasets as hfio
from vitprobe.io.images import ImageLoadError, load_image
from vitprobe.io.store import RECORD_COLUMNS
from vitprobe.models.hf import load_hf
from vitprobe.runner import AnalyzeOptions, read_image_list, read_source, run_analysis

hf = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")
runner = CliRunner()
N = 6
CLASSES = ["cat", "dog", "bird"]
LABELS = [2, 0, 1, 0, 2, 2]  # class indices of the images 0..5
OPTS = AnalyzeOptions(batch_size=4, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """The same six image files as a folder and as what ``datasets`` writes, built from those files."""
    hf.disable_progress_bars()
    root = tmp_path_factory.mktemp("hf")
    folder = root / "folder"
    folder.mkdir()
    files = []
    for i in range(N):
        ext, data = encoded(i)
        files.append(folder / f"{i:06d}.{ext}")
        files[-1].write_bytes(data)
    image, label = hf.Image(), hf.ClassLabel(names=CLASSES)
    paths = [str(f) for f in files]
    plain = hf.Dataset.from_dict({"image": paths, "label": LABELS},
                                 features=hf.Features({"image": image, "label": hf.Value("int64")}))
    plain.save_to_disk(root / "dataset", num_shards=2)  # two Arrow files, rows 0-2 and 3-5
    labelled = hf.Dataset.from_dict({"image": paths, "label": LABELS},
                                    features=hf.Features({"image": image, "label": label}))
    hf.DatasetDict(train=labelled.select(range(4)), test=labelled.select(range(4, N))).save_to_disk(root / "dict")
    named = hf.Dataset.from_dict({"file_name": [f.name for f in files], "image": paths, "label": LABELS},
                                 features=hf.Features({"file_name": hf.Value("string"), "image": image,
                                                       "label": label}))
    named.to_parquet(root / "named.parquet")  # keeps the local files as paths, no bytes
    # an Image column that is not the first binary column, a second Image column (the photos reversed),
    # and a row without an image
    photos = [{"bytes": f.read_bytes(), "path": None} for f in files]
    photos[1] = None
    hf.Dataset.from_dict(
        {"raw": [b"no image"] * N, "photo": photos, "mask": [{"bytes": f.read_bytes(), "path": None}
                                                             for f in reversed(files)]},
        features=hf.Features({"raw": hf.Value("binary"), "photo": image, "mask": image}),
    ).save_to_disk(root / "columns")
    labelled.select(range(3)).map(lambda row, i: {"label": -1 if i == 1 else row["label"]}, with_indices=True) \
        .save_to_disk(root / "partial")  # row 1 without a label (-1), as test splits often are
    return {"root": root, "folder": folder, "dataset": root / "dataset", "dict": root / "dict",
            "parquet": root / "named.parquet", "columns": root / "columns", "partial": root / "partial"}


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return load_hf(str(tiny_dirs["dinov2"]))


@pytest.fixture(scope="module")
def folder_run(data, model, tmp_path_factory) -> tuple[list[dict], dict]:
    """Records (with the image's index in the folder instead of its name) and aggregates of the folder."""
    out = tmp_path_factory.mktemp("folder_run")
    images = read_image_list(data["folder"])
    run_analysis(model, images, out, OPTS)
    records, aggregates, _ = read_outputs(out)
    return by_index(records, images), aggregates


def by_index(records: list[dict], images: list[Path]) -> list[tuple]:
    """(index of the image in ``images``, metric, layer, head, value) of each record, in order."""
    order = {str(p): i for i, p in enumerate(images)}
    return [(order[r["image"]], r["metric"], r["layer"], r["head"], r["value"]) for r in records]


def test_what_datasets_writes_is_listed_and_read(data):
    folder = sorted(data["folder"].iterdir())
    dataset = read_source(data["dataset"])
    assert dataset.items == [data["dataset"] / str(i) for i in range(N)]  # rows across both Arrow files
    assert len(list(data["dataset"].glob("*.arrow"))) == 2
    assert dataset.splits is None and dataset.columns == ["image"] and dataset.labels == []  # int, no ClassLabel
    dd = read_source(data["dict"])
    assert dd.items == [data["dict"] / "train" / str(i) for i in range(4)] + \
        [data["dict"] / "test" / str(i) for i in range(2)]
    assert dd.splits == [("train", 4), ("test", 2)]
    assert dd.summary() == "DatasetDict, splits train (4 rows), test (2 rows); images from column 'image'; " \
                           "labels from 'label'"
    named = read_source(data["parquet"])  # named by the file_name column, images read from their paths
    assert named.items == [data["parquet"] / f.name for f in folder]
    for items in (dataset.items, dd.items, named.items):
        for item, file in zip(items, folder, strict=True):
            assert np.array_equal(np.asarray(load_image(item)), np.asarray(load_image(file)))
    assert [hfio.labels_of(p) for p in dd.items] == [{"label": CLASSES[k]} for k in LABELS]
    assert [hfio.labels_of(p) for p in named.items] == [{"label": CLASSES[k]} for k in LABELS]
    assert hfio.labels_of(dataset.items[0]) == {} and hfio.labels_of(folder[0]) == {}
    assert hfio.class_names(dd.items) == {"label": CLASSES}


def test_splits_are_picked_in_the_order_given(data):
    assert read_image_list(data["dict"], ["test"]) == [data["dict"] / "test" / "0", data["dict"] / "test" / "1"]
    both = read_source(data["dict"], ["test", "train", "test"])
    assert both.splits == [("test", 2), ("train", 4)]
    assert both.items[:2] == [data["dict"] / "test" / "0", data["dict"] / "test" / "1"]


@pytest.mark.parametrize("layout", ["dataset", "dict", "parquet"])
def test_records_equal_those_of_the_folder(data, model, folder_run, tmp_path, layout):
    items = read_image_list(data[layout])
    aggregates = run_analysis(model, items, tmp_path, OPTS)
    assert aggregates["images"] == {"listed": N, "analysed": N, "failed": 0}
    table = pq.read_table(tmp_path / "records.parquet")
    records, aggs, _ = read_outputs(tmp_path)
    reference, ref_aggs = folder_run
    assert by_index(records, items) == reference
    assert aggs["metrics"] == ref_aggs["metrics"]
    if layout == "dataset":  # no ClassLabel: the records are the folder's
        assert table.column_names == list(RECORD_COLUMNS) and "classes" not in aggs
        return
    assert table.column_names == [*RECORD_COLUMNS, "label"]
    names = {str(p): CLASSES[k] for p, k in zip(items, LABELS, strict=True)}
    assert all(r["label"] == names[r["image"]] for r in records)
    classes = aggs["classes"]["label"]
    assert classes["images"] == {"cat": 2, "dog": 1, "bird": 3} and list(classes["images"]) == CLASSES
    assert classes["unlabelled"] == 0
    for metric in ("mean_attention_distance", "entropy_cls_map", "outliers_in_cls_peaks_share"):
        for name in CLASSES:
            for layer in range(model.num_layers):
                values = [r["value"] for r in records if r["metric"] == metric and r["label"] == name
                          and r["layer"] == layer and r["value"] != "nan"]
                mean = classes["metrics"][metric][name][layer]
                assert mean == pytest.approx(np.mean(values), rel=1e-12) if values else mean is None


def test_rows_without_a_label_are_counted_apart(data, model, tmp_path):
    items = read_image_list(data["partial"])
    assert [hfio.labels_of(p) for p in items] == [{"label": "bird"}, {"label": None}, {"label": "dog"}]
    aggregates = run_analysis(model, items, tmp_path, OPTS)
    records, _, _ = read_outputs(tmp_path)
    assert {(r["image"], r["label"]) for r in records} == {(str(items[0]), "bird"), (str(items[1]), None),
                                                            (str(items[2]), "dog")}
    classes = aggregates["classes"]["label"]
    assert classes["images"] == {"dog": 1, "bird": 1} and classes["unlabelled"] == 1
    dog = [r["value"] for r in records if r["image"] == str(items[2]) and r["metric"] == "entropy_cls_map"]
    assert classes["metrics"]["entropy_cls_map"]["dog"] == dog  # one image: its own values


def test_image_column_by_feature_type_or_chosen(data, model, folder_run, tmp_path):
    """``raw`` is the first binary column, ``photo`` the first Image one: the photos are read, a row without
    one is a recorded failure; ``--image-column mask`` reads the reversed photos."""
    reference, _ = folder_run
    listing = read_source(data["columns"])
    assert listing.columns == ["photo"]
    aggregates = run_analysis(model, listing.items, tmp_path / "photo", OPTS)
    assert aggregates["images"] == {"listed": N, "analysed": N - 1, "failed": 1}
    records, _, failures = read_outputs(tmp_path / "photo")
    assert failures.splitlines()[1:] == [f"{data['columns'] / '1'},the row holds no image bytes"]
    assert by_index(records, listing.items) == [r for r in reference if r[0] != 1]

    result = runner.invoke(app, ["analyze", str(data["columns"]), "--model", str(model.name), "--image-column",
                                 "mask", "--out", str(tmp_path / "mask"), "--no-report", "--no-progress",
                                 "--batch-size", "4", "--workers", "1"])  # a loader process reads the column too
    assert result.exit_code == 0, result.output
    assert f"{data['columns']}: 6 rows; images from column 'mask'" in result.stdout
    records, _, failures = read_outputs(tmp_path / "mask")
    assert failures == "file,reason\n"
    mask = by_index(records, [listing.items[N - 1 - i] for i in range(N)])  # row i holds photo N-1-i
    assert [r[0] for r in mask[:: len(mask) // N]] == list(range(N - 1, -1, -1))
    assert sorted(mask, key=lambda r: r[0]) == reference
    assert hfio._IMAGE_COLUMN is None  # the choice ended with the command
    with hfio.reading_column("mask"):
        assert np.array_equal(np.asarray(load_image(listing.items[0])),
                              np.asarray(load_image(sorted(data["folder"].iterdir())[-1])))


def test_cli_reads_the_split_picked_and_reports_by_class(data, model, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["analyze", str(data["dict"]), "--model", str(model.name), "--split", "train",
                                 "--out", str(out), "--no-progress", "--examples", "1", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == \
        f"{data['dict']}: DatasetDict, splits train (4 rows); images from column 'image'; labels from 'label'"
    assert "4 of 4 images analysed" in result.stdout
    records, aggregates, _ = read_outputs(out)
    assert {r["image"] for r in records} == {str(data["dict"] / "train" / str(i)) for i in range(4)}
    assert aggregates["classes"]["label"]["images"] == {"cat": 2, "dog": 1, "bird": 1}
    html = (out / "report.html").read_text()
    section = html[html.index('id="classes"'):html.index('id="failures"')]
    cells = [row.split("</td>")[0] for row in section.split('<td class="left">')[1:]]
    assert cells == CLASSES  # one row per class, in label order
    assert f"in layer\n{aggregates['spread_levels']['layer']}" in section


@pytest.mark.parametrize(("args", "message"), [
    (["--split", "valid"], "{dict}: no split 'valid' in dataset_dict.json (splits: train, test)"),
    (["--image-column", "pixels"], "{dict}: split 'train': no column 'pixels' (columns: image, label)"),
    (["--image-column", "label"], "{dict}: split 'train': column 'label' holds int64, not encoded images"),
])
def test_bad_split_or_column_is_one_line(data, tiny_dirs, tmp_path, args, message):
    result = runner.invoke(app, ["analyze", str(data["dict"]), "--model", str(tiny_dirs["dinov2"]), *args,
                                 "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitprobe: error: " + message.format(dict=data["dict"])), lines
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_split_on_other_sources_is_one_line(data, tiny_dirs, tmp_path):
    for source, kind in ((data["dataset"], "a single Dataset folder"), (data["folder"], None)):
        result = runner.invoke(app, ["analyze", str(source), "--model", str(tiny_dirs["dinov2"]), "--split", "train",
                                     "--out", str(tmp_path / "out"), "--no-progress"])
        assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.output
        assert result.stderr.startswith(f"vitprobe: error: {source}: splits can only be picked in a DatasetDict")
        assert kind is None or result.stderr.rstrip().endswith(kind)
    with pytest.raises(ImageLoadError, match="an image column can only be chosen in Parquet files"):
        read_source(data["folder"], image_column="image")


def test_resume_and_two_processes_equal_one_run(data, tiny_dirs, tmp_path):
    """A DatasetDict run resumes (a lost batch is the only one computed again) and, under torchrun with
    two CPU processes, gives the same outputs as one."""
    args = ["analyze", str(data["dict"]), "--model", str(tiny_dirs["dinov2"]), "--batch-size", "2",
            "--no-report", "--no-progress"]
    one = tmp_path / "one"
    result = runner.invoke(app, [*args, "--out", str(one)])
    assert result.exit_code == 0, result.output
    expected = read_outputs(one)
    part = one / "parts" / "rank-000-of-001"
    lost = part / "b000001"
    for file in lost.iterdir():
        file.unlink()
    lost.rmdir()
    result = runner.invoke(app, [*args, "--out", str(one)])
    assert result.exit_code == 0, result.output
    assert json.loads((part / "timing.json").read_text())["images"] == 2
    assert read_outputs(one) == expected

    two = tmp_path / "two"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vitprobe",
         *args, "--out", str(two)], capture_output=True, text=True, timeout=300, env=single_thread_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("DatasetDict, splits train (4 rows), test (2 rows)") == 1  # rank 0 only
    assert sorted(p.name for p in (two / "parts" / "rank-001-of-002").glob("b*")) == ["b000001"]
    assert read_outputs(two) == expected


def test_read_without_the_datasets_package(data, monkeypatch):
    """The reading is pyarrow and JSON only: with ``datasets`` unimportable, every layout still reads."""
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.setattr(hfio, "_OPEN_TABLES", {})
    monkeypatch.setattr(hfio, "_PARENTS", {})
    with pytest.raises(ImportError):
        import datasets  # noqa: F401
    folder = sorted(data["folder"].iterdir())
    for layout in ("dataset", "dict", "parquet"):
        listing = read_source(data[layout])
        assert len(listing.items) == N
        assert np.array_equal(np.asarray(load_image(listing.items[5])), np.asarray(load_image(folder[5])))
    assert hfio.labels_of(read_image_list(data["dict"])[0]) == {"label": CLASSES[LABELS[0]]}
