"""Datasets where they live: WebDataset tar shards (a brace range, streamed from the archive), Parquet
with an image column and a Hugging Face ``save_to_disk`` folder analyse exactly like a folder of the
same images; a bad member is one recorded failure; a run resumes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.test_runner import read_outputs
from vitprobe.io.datasets import expand_braces, list_dataset
from vitprobe.io.images import IMAGE_SUFFIXES, ImageLoadError, load_image
from vitprobe.models.hf import load_hf
from vitprobe.runner import AnalyzeOptions, read_image_list, run_analysis

N_IMAGES = 7


def encoded(i: int) -> tuple[str, bytes]:
    """Image i of the set: alternating JPEG and PNG of different sizes."""
    g = np.random.default_rng(i)
    image = Image.fromarray((g.random((30 + 3 * i, 40 + 2 * i, 3)) * 255).astype("uint8"))
    buffer = io.BytesIO()
    fmt = "JPEG" if i % 2 == 0 else "PNG"
    image.save(buffer, format=fmt)
    return ("jpg" if fmt == "JPEG" else "png"), buffer.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path | str]:
    root = tmp_path_factory.mktemp("datasets")
    folder = root / "folder"
    folder.mkdir()
    images = [encoded(i) for i in range(N_IMAGES)]
    for i, (ext, data) in enumerate(images):
        (folder / f"{i:06d}.{ext}").write_bytes(data)
    shards = root / "shards"
    shards.mkdir()
    for s, members in enumerate((range(0, 4), range(4, N_IMAGES))):
        with tarfile.open(shards / f"shard-{s:06d}.tar", "w") as tar:
            for i in members:
                ext, data = images[i]
                add(tar, f"{i:06d}.{ext}", data)
                add(tar, f"{i:06d}.cls", str(i % 3).encode())  # WebDataset sidecars are skipped
            if s == 1:
                add(tar, "999999.jpg", b"\xff\xd8 not really a jpeg")
    structs = [{"bytes": data, "path": f"{i:06d}.{ext}"} for i, (ext, data) in enumerate(images)]
    table = pa.table({"label": list(range(N_IMAGES)), "image": structs})
    pq.write_table(table, root / "images.parquet")
    saved = root / "saved"
    saved.mkdir()
    halves = [table.slice(0, 3), table.slice(3)]
    for n, half in enumerate(halves):
        with pa.OSFile(str(saved / f"data-0000{n}-of-00002.arrow"), "wb") as sink, \
                pa.ipc.new_stream(sink, half.schema) as writer:
            writer.write_table(half)
    (saved / "state.json").write_text(json.dumps(
        {"_data_files": [{"filename": f"data-0000{n}-of-00002.arrow"} for n in range(2)], "_split": "train"}))
    (saved / "dataset_info.json").write_text(json.dumps({"features": {"image": {"_type": "Image"}}}))
    return {"folder": folder, "shards": f"{shards}/shard-{{000000..000001}}.tar", "parquet": root / "images.parquet",
            "saved": saved}


def test_names_and_order(sources):
    assert expand_braces("a/s-{08..11}.tar") == ["a/s-08.tar", "a/s-09.tar", "a/s-10.tar", "a/s-11.tar"]
    shard_items = list_dataset(sources["shards"], IMAGE_SUFFIXES)
    assert [p.name for p in shard_items] == [f"{i:06d}.{'jpg' if i % 2 == 0 else 'png'}" for i in range(N_IMAGES)] \
        + ["999999.jpg"]
    assert shard_items[0].parent.name == "shard-000000.tar"
    rows = list_dataset(sources["saved"], IMAGE_SUFFIXES)  # rows of the folder, over its Arrow files in order
    assert rows == [sources["saved"] / str(i) for i in range(N_IMAGES)]
    in_file = sources["saved"] / "data-00001-of-00002.arrow" / "0"  # a row of one Arrow file is read too
    assert np.array_equal(np.asarray(load_image(in_file)), np.asarray(load_image(rows[3])))
    folder = sorted(sources["folder"].iterdir())
    for listed in (shard_items[:N_IMAGES], list_dataset(sources["parquet"], IMAGE_SUFFIXES), rows):
        for item, file in zip(listed, folder, strict=True):
            assert np.array_equal(np.asarray(load_image(item)), np.asarray(load_image(file)))


def test_bad_members_and_shards_are_one_line(sources, tmp_path):
    bad = list_dataset(sources["shards"], IMAGE_SUFFIXES)[-1]
    with pytest.raises(ImageLoadError) as err:
        load_image(bad)
    assert str(err.value).endswith("999999.jpg: not an image file") or "corrupt" in str(err.value)
    with pytest.raises(ImageLoadError, match="no member 'gone.jpg' in the shard"):
        load_image(bad.parent / "gone.jpg")
    missing = str(sources["shards"]).replace("000001}", "000002}")
    with pytest.raises(ImageLoadError, match="shard-000002.tar: no such shard") as err:
        read_image_list(missing)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["shards", "parquet", "saved"])
def test_analysis_equals_the_folder_of_the_same_images(tiny_dirs, sources, tmp_path, kind):
    model = load_hf(str(tiny_dirs["dinov2"]))
    opts = AnalyzeOptions(batch_size=3, progress=False)
    run_analysis(model, read_image_list(sources["folder"]), tmp_path / "folder", opts)
    items = read_image_list(sources[kind])
    aggregates = run_analysis(model, items, tmp_path / kind, opts)
    expected_failed = 1 if kind == "shards" else 0
    assert aggregates["images"] == {"listed": N_IMAGES + expected_failed, "analysed": N_IMAGES,
                                    "failed": expected_failed}
    records, aggs, failures = read_outputs(tmp_path / kind)
    ref_records, ref_aggs, _ = read_outputs(tmp_path / "folder")
    by_order = {str(item): i for i, item in enumerate(items)}
    ref_order = {str(p): i for i, p in enumerate(read_image_list(sources["folder"]))}
    assert [(by_order[r["image"]], r["metric"], r["layer"], r["head"], r["value"]) for r in records] == \
        [(ref_order[r["image"]], r["metric"], r["layer"], r["head"], r["value"]) for r in ref_records]
    assert aggs["metrics"] == ref_aggs["metrics"]
    if kind == "shards":
        lines = failures.splitlines()
        assert len(lines) == 2 and "shard-000001.tar/999999.jpg" in lines[1]
        again = run_analysis(model, items, tmp_path / kind, opts)  # resumed: nothing left to compute
        assert again["metrics"] == aggregates["metrics"]


def test_large_jpegs_are_decoded_at_the_scale_the_model_needs(tmp_path):
    """Draft mode: a 2000×1500 JPEG for a short side of 448 decodes at 1/2 scale, both sides ≥ 448."""
    from vitprobe.io.preprocess import PreprocessSpec, preprocess
    from vitprobe.runner import _BatchLoader

    g = np.random.default_rng(0)
    photo = Image.fromarray((g.random((150, 200, 3)) * 255).astype("uint8")).resize((2000, 1500))
    photo.save(tmp_path / "big.jpg", quality=90)
    photo.save(tmp_path / "big.png")
    spec = PreprocessSpec(mean=(0.5,) * 3, std=(0.5,) * 3, shortest_edge=448, resize_hw=None, crop_hw=(448, 448))
    assert spec.decode_side() == 448
    assert load_image(tmp_path / "big.jpg", draft_side=448).size == (1000, 750)
    assert load_image(tmp_path / "big.jpg", draft_side=800).size == (2000, 1500)  # 1/2 would be too small
    assert load_image(tmp_path / "big.png", draft_side=448).size == (2000, 1500)  # only JPEG has a draft mode
    full = preprocess(load_image(tmp_path / "big.jpg"), spec, 14)[0]
    _, loaded, failures = _BatchLoader([(0, [(0, tmp_path / "big.jpg")])], spec, 14)[0]
    assert failures == [] and loaded[0][1].shape == full.shape == (3, 448, 448)
    torch_draft = preprocess(load_image(tmp_path / "big.jpg", draft_side=448), spec, 14)[0]
    assert (loaded[0][1] - torch_draft).abs().max() == 0  # the run's loader decodes in draft mode
    assert (loaded[0][1] - full).abs().mean() < 0.02  # and sees nearly the same pixels
