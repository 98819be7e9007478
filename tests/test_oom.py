"""Out of memory, injected: the model's forward raises the allocator's own error for batches above a size
(and for any batch holding a white image). Batches shrink to what fits with one warning naming the size;
an image that does not fit alone gives one line naming it and the memory asked for, and the run goes on."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vitprobe as vp
from vitprobe.memory import BatchSize, OutOfMemory, asked_for, is_out_of_memory

CPU_CANT = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
            "allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)")
CPU_NOT_ENOUGH = ("[enforce fail at alloc_cpu.cpp:116] data. DefaultCPUAllocator: not enough memory: you tried to "
                  "allocate 3221225472 bytes.")
CUDA = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which "
        "1.52 GiB is free.")
WHITE = "white.png"


def test_allocation_failures_are_told_from_other_errors_with_the_size_they_asked_for():
    assert is_out_of_memory(RuntimeError(CPU_CANT)) and asked_for(RuntimeError(CPU_CANT)) == "1.0 GiB"
    assert is_out_of_memory(RuntimeError(CPU_NOT_ENOUGH)) and asked_for(RuntimeError(CPU_NOT_ENOUGH)) == "3.0 GiB"
    cuda = torch.cuda.OutOfMemoryError(CUDA)
    assert is_out_of_memory(cuda) and asked_for(cuda) == "2.00 GiB"
    assert is_out_of_memory(MemoryError()) and asked_for(MemoryError()) == "an unknown amount"
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of range"))


def test_a_batch_is_halved_down_to_one_and_an_item_that_never_fits_is_skipped(caplog):
    tried: list[list[int]] = []

    def step(span: slice) -> list[int]:
        items = list(range(12))[span]
        tried.append(items)
        if len(items) > 3 or 7 in items:
            raise RuntimeError(CPU_CANT)
        return items

    skipped: list[tuple[int, str]] = []
    sizer = BatchSize(8, "test")
    with caplog.at_level(logging.WARNING, logger="vitprobe.memory"):
        done = sizer.run(12, step, lambda i, err: skipped.append((i, str(err))))
    assert [x for _, items in done for x in items] == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    assert skipped == [(7, "out of memory (asked for 1.0 GiB at batch size 1)")]
    assert tried[:3] == [list(range(8)), [0, 1, 2, 3], [0, 1]]  # 8 and 4 fail, 2 works and is kept
    assert sizer.size == 1
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning == ("test: out of memory at batch size 8 (asked for 1.0 GiB); batch size 2 worked and is used "
                       "from here on")
    with pytest.raises(OutOfMemory, match="asked for 1.0 GiB"):
        BatchSize(2, "test").run(12, step)
    with pytest.raises(RuntimeError, match="shapes"):
        BatchSize(2, "test").run(2, lambda span: (_ for _ in ()).throw(RuntimeError("shapes differ")))


def limit_forward(model: vp.VitModel, largest: int, message: str = CPU_CANT) -> list[int]:
    """Make ``model.forward`` raise the allocator's error for batches above ``largest`` images and for any
    batch holding an all-white image; returns the batch sizes that ran."""
    inner = model.forward
    ran: list[int] = []

    def forward(pixels: torch.Tensor) -> torch.Tensor | None:
        white = (pixels.flatten(1).amin(dim=1) > 0.99).any()
        if len(pixels) > largest or white:
            raise RuntimeError(message)
        ran.append(len(pixels))
        return inner(pixels)

    model.forward = forward
    return ran


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("oom") / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 200, (40, 44, 3), dtype=np.uint8)).save(root / f"im{i}.png")
    Image.new("RGB", (40, 44), "white").save(root / WHITE)
    return root


def memory_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vitprobe.memory"]


def test_analyze_shrinks_its_batches_and_records_an_image_that_never_fits(tiny_dirs, folder, tmp_path, caplog):
    pq = pytest.importorskip("pyarrow.parquet")
    from vitprobe.runner import AnalyzeOptions, read_image_list, run_analysis

    images = [p for p in read_image_list(folder) if p.name != WHITE]
    reference = run_analysis(vp.load(str(tiny_dirs["vit"])), images, tmp_path / "reference",
                             AnalyzeOptions(batch_size=4, progress=False))
    model = vp.load(str(tiny_dirs["vit"]))
    ran = limit_forward(model, 2)
    with caplog.at_level(logging.WARNING):
        aggregates = run_analysis(model, read_image_list(folder), tmp_path / "run",
                                  AnalyzeOptions(batch_size=4, progress=False))
    assert max(ran) == 2
    assert aggregates["images"] == {"listed": 7, "analysed": 6, "failed": 1}
    (shrunk,) = memory_warnings(caplog)
    assert "out of memory at batch size 4 (asked for 1.0 GiB); batch size 2 worked" in shrunk
    (alone,) = [r.getMessage() for r in caplog.records if r.name == "vitprobe.runner"]
    assert alone == f"{folder / WHITE}: out of memory (asked for 1.0 GiB at batch size 1)"
    failures = (tmp_path / "run" / "failures.csv").read_text().splitlines()
    assert failures == ["file,reason", f"{folder / WHITE},out of memory (asked for 1.0 GiB at batch size 1)"]
    got = pq.read_table(tmp_path / "run" / "records.parquet").to_pylist()
    want = pq.read_table(tmp_path / "reference" / "records.parquet").to_pylist()
    assert [(r["image"], r["layer"], r["head"], r["metric"]) for r in got] == \
        [(r["image"], r["layer"], r["head"], r["metric"]) for r in want]
    np.testing.assert_allclose([r["value"] for r in got], [r["value"] for r in want], rtol=1e-6, atol=1e-6)
    assert aggregates["metrics"]["entropy_cls"]["images"] == reference["metrics"]["entropy_cls"]["images"]


def test_explain_over_a_folder_names_the_image_that_does_not_fit_and_goes_on(tiny_dirs, folder, tmp_path,
                                                                            monkeypatch):
    import vitprobe.cli as cli

    model = vp.load(str(tiny_dirs["vit"]))
    limit_forward(model, 1, CUDA)
    monkeypatch.setattr(cli, "load_model", lambda spec, device: model)
    result = CliRunner().invoke(cli.app, ["explain", str(folder), "--model", str(tiny_dirs["vit"]), "--method",
                                          "cls", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("vitprobe: error")]
    assert errors == [f"vitprobe: error: {folder / WHITE}: out of memory (asked for 2.00 GiB at batch size 1)"]
    assert "6 of 7 images explained" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"im{i}" for i in range(6)]


def test_video_frames_shrink_to_what_fits_and_a_frame_that_never_does_is_one_line(tiny_dirs, tmp_path, caplog):
    pytest.importorskip("imageio_ffmpeg")
    from vitprobe.render.video import VideoError, VideoWriter
    from vitprobe.video import VideoOptions, attention_video

    rng = np.random.default_rng(1)
    frames = [np.kron(rng.integers(0, 200, (5, 6, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
              for _ in range(7)]
    video = tmp_path / "in.mp4"
    with VideoWriter(video, 5.0, frames[0].shape[:2]) as writer:
        for frame in frames:
            writer.write(frame)
    opts = VideoOptions(batch_size=4)
    attention_video(vp.load(str(tiny_dirs["vit"])), video, [tmp_path / "reference.mp4"], opts,
                    maps_path=tmp_path / "reference.npy", progress=False)
    model = vp.load(str(tiny_dirs["vit"]))
    ran = limit_forward(model, 1, CPU_NOT_ENOUGH)
    with caplog.at_level(logging.WARNING):
        result = attention_video(model, video, [tmp_path / "out.mp4"], opts, maps_path=tmp_path / "maps.npy",
                                 progress=False)
    assert result.frames == 7 and set(ran) == {1}
    assert memory_warnings(caplog) == ["video: out of memory at batch size 4 (asked for 3.0 GiB); batch size 1 "
                                       "worked and is used from here on"]
    np.testing.assert_allclose(np.load(tmp_path / "maps.npy"), np.load(tmp_path / "reference.npy"), rtol=0,
                               atol=1e-6)
    limit_forward(model, 0, CPU_NOT_ENOUGH)  # not even one frame
    with pytest.raises(VideoError) as raised:
        attention_video(model, video, [tmp_path / "never.mp4"], opts, progress=False)
    assert str(raised.value) == f"{video}: frame 0: out of memory (asked for 3.0 GiB at batch size 1)"
    assert not (tmp_path / "never.mp4").exists()


def test_faithfulness_scores_in_smaller_batches_and_records_an_image_that_does_not_fit(tiny_dirs, folder, caplog):
    from vitprobe.faithfulness import faithfulness

    paths = [folder / "im0.png", folder / WHITE, folder / "im1.png"]
    options = dict(methods=["cls"], steps=4, randomisation_steps=1, batch_size=16, progress=False)
    reference = faithfulness(vp.load(str(tiny_dirs["vit"])), paths, **options)
    model = vp.load(str(tiny_dirs["vit"]))
    ran = limit_forward(model, 5)
    with caplog.at_level(logging.WARNING):
        report = faithfulness(model, paths, **options)
    assert max(ran) == 4
    assert memory_warnings(caplog) == ["faithfulness: out of memory at batch size 16 (asked for 1.0 GiB); batch "
                                       "size 4 worked and is used from here on"]
    assert report.failures == [(str(paths[1]), f"{paths[1]}: out of memory (asked for 1.0 GiB at batch size 1)")]
    assert report.images == [str(paths[0]), str(paths[2])]
    kept = [row for row in reference.rows() if row["image"] != str(paths[1])]
    for got, want in zip(report.rows(), kept, strict=True):
        assert got.keys() == want.keys() and (got["image"], got["method"]) == (want["image"], want["method"])
        np.testing.assert_allclose([v for k, v in got.items() if k not in ("image", "method")],
                                   [v for k, v in want.items() if k not in ("image", "method")], rtol=1e-6, atol=1e-6)
