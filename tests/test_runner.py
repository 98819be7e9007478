"""Dataset runs: records equal the definitions, resume after Ctrl-C and kill -9, 2 processes equal 1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

from tests.test_streaming import float64_rollout
from vitprobe.analysis.distance import mean_attention_distance
from vitprobe.analysis.entropy import cls_entropy, map_entropy, rows_entropy, spread_levels
from vitprobe.analysis.maps import cls_maps
from vitprobe.analysis.tokens import norm_outliers
from vitprobe.cli import app
from vitprobe.io.images import load_image
from vitprobe.io.samples import write_samples
from vitprobe.io.store import RunStore
from vitprobe.models.hf import load_hf
from vitprobe.runner import AnalyzeOptions, read_image_list, run_analysis

pq = pytest.importorskip("pyarrow.parquet")
runner = CliRunner()
N_GOOD = 30


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """30 small crops / flips / resizes of the three sample photos, and two files that are no image."""
    pytest.importorskip("skimage")
    root = tmp_path_factory.mktemp("photos")
    sources = [Image.open(p).convert("RGB") for p in write_samples(root / "src")]
    rng = np.random.default_rng(0)
    folder = root / "images"
    folder.mkdir()
    for i in range(N_GOOD):
        img = sources[i % 3]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.4, 0.9)), int(h * rng.uniform(0.4, 0.9))
        x0, y0 = int(rng.uniform(0, w - cw)), int(rng.uniform(0, h - ch))
        view = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((int(rng.integers(40, 90)), int(rng.integers(40, 90))))
        if i % 2:
            view = ImageOps.mirror(view)
        view.save(folder / f"img{i:02d}.{'png' if i % 3 else 'jpg'}")
    (folder / "img05_broken.jpg").write_bytes((folder / "img00.jpg").read_bytes()[:300])
    (folder / "notes.png").write_text("not an image")
    return folder


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitprobe", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def single_thread_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def read_outputs(out: Path) -> tuple[list[dict], dict, str]:
    """Records (NaN spelled "nan" so that equal runs compare equal), aggregates and failures."""
    records = [{**r, "value": "nan" if r["value"] != r["value"] else r["value"]}
               for r in pq.read_table(out / "records.parquet").to_pylist()]
    return records, json.loads((out / "aggregates.json").read_text()), (out / "failures.csv").read_text()


def test_records_equal_the_definitions_on_full_attention(tiny_dirs, photo_dir, tmp_path):
    model = load_hf(str(tiny_dirs["dinov2_with_registers"]))
    images = read_image_list(photo_dir)
    aggregates = run_analysis(model, images, tmp_path, AnalyzeOptions(batch_size=4, progress=False))
    table = pq.read_table(tmp_path / "records.parquet")
    assert table.column_names == ["image", "layer", "head", "metric", "value"]
    rows = table.to_pylist()
    layers, heads = model.num_layers, model.num_heads
    assert len(rows) == N_GOOD * (4 * layers * heads + 6 * layers)
    assert aggregates["images"] == {"listed": N_GOOD + 2, "analysed": N_GOOD, "failed": 2}
    failures = (tmp_path / "failures.csv").read_text().splitlines()
    assert failures[0] == "file,reason" and len(failures) == 3
    assert any("img05_broken.jpg" in f and "truncated" in f.lower() for f in failures)
    assert any("notes.png" in f and "not an image file" in f for f in failures)

    # one image, recomputed from its full attention with the definitions (not the streamed reducers),
    # decoded as the run decodes it (a JPEG at the scale the model needs)
    path = images[7]
    decoded = load_image(path, draft_side=model.preprocess.decode_side())
    cap = model.capture(decoded, fuse=(), full_layers=list(range(layers)), token_norms=True)
    mine = [r for r in rows if r["image"] == str(path)]

    def values(metric: str) -> np.ndarray:
        picked = [r for r in mine if r["metric"] == metric]
        shape = (layers, heads) if picked[0]["head"] is not None else (layers,)
        assert [r["layer"] for r in picked] == sorted(r["layer"] for r in picked)
        return np.array([r["value"] for r in picked]).reshape(shape)

    full = [cap.full[layer][0:1] for layer in range(layers)]
    expect = {
        "mean_attention_distance": [mean_attention_distance(a, cap.layout)[0] for a in full],
        "mean_attention_distance_renormalized": [mean_attention_distance(a, cap.layout, True)[0] for a in full],
        "entropy_rows": [rows_entropy(a)[0] for a in full],
        "entropy_cls": cls_entropy(cap.cls)[:, 0],
        "entropy_cls_map": map_entropy(cls_maps(cap.cls, cap.layout)[:, 0].mean(1)),
    }
    fused = np.stack([a[0].mean(0).numpy() for a in full])[:, None]  # (L, 1, T, T) head means, float64 below
    for depth in range(layers):  # rollout through layers 0..depth, entropy of its patch part renormalised
        row = float64_rollout(fused[: depth + 1], 0)[0, cap.layout.n_prefix:]
        p = row / row.sum()
        assert values("entropy_rollout_map")[depth] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-5)
    for metric, value in expect.items():
        ref = torch.stack(list(value)) if isinstance(value, list) else value
        np.testing.assert_allclose(values(metric), ref.double().numpy(), rtol=1e-5, atol=1e-6, err_msg=metric)
    share = norm_outliers(cap.token_norms[:, 0, 5:]).double().mean(-1)
    np.testing.assert_array_equal(values("token_norm_outlier_share"), share.numpy())
    assert np.all(values("mean_attention_distance_renormalized") >= values("mean_attention_distance"))

    # aggregates are the means of the records; spread levels the quartiles of the last layer's map entropy
    dist = np.array([r["value"] for r in rows if r["metric"] == "mean_attention_distance"])
    dist = dist.reshape(N_GOOD, layers, heads)
    np.testing.assert_allclose(aggregates["metrics"]["mean_attention_distance"]["mean"], dist.mean(0), rtol=1e-12)
    np.testing.assert_allclose(aggregates["metrics"]["mean_attention_distance"]["std"], dist.std(0), rtol=1e-6)
    last = {r["image"]: r["value"] for r in rows if r["metric"] == "entropy_cls_map" and r["layer"] == layers - 1}
    spread = aggregates["spread_levels"]
    levels, edges = spread_levels(torch.tensor([last[str(p)] for p in images if str(p) in last]))
    np.testing.assert_allclose(spread["edges"], edges.numpy())
    assert {k: len(v) for k, v in spread["levels"].items()} == {str(k): int((levels == k).sum()) for k in range(1, 5)}
    for level, members in spread["levels"].items():
        assert all(spread["edges"][int(level) - 2] < m["entropy_cls_map"] for m in members if int(level) > 1)


@pytest.fixture(scope="module")
def run_args(tiny_dirs, photo_dir) -> list[str]:
    """One run: 32 listed files in 16 batches of 2."""
    return ["analyze", str(photo_dir), "--model", str(tiny_dirs["vit"]), "--batch-size", "2", "--no-report",
            "--no-progress"]


@pytest.fixture(scope="module")
def uninterrupted(run_args, tmp_path_factory) -> tuple[list[dict], dict, str]:
    """The outputs of the run done in one go by one process, single-threaded like the subprocesses below."""
    out = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = runner.invoke(app, [*run_args, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return read_outputs(out)


def test_resume_after_ctrl_c_and_kill_9_equals_an_uninterrupted_run(run_args, uninterrupted, tmp_path):
    args = run_args
    out = tmp_path / "resumed"
    parts = out / "parts" / "rank-000-of-001"
    finished: dict[str, int] = {}
    for sig, after in ((signal.SIGINT, 2), (signal.SIGKILL, 6)):
        proc = subprocess.Popen([sys.executable, "-m", "vitprobe", *args, "--out", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=single_thread_env())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(parts.glob("b*"))) < after and proc.poll() is None:
            time.sleep(0.005)
        assert proc.poll() is None, proc.communicate()[1][-2000:]  # still running: stopped mid-run below
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        if sig == signal.SIGINT:  # Ctrl-C
            assert proc.returncode == 130 and "run the same command to resume" in stderr, stderr
        else:
            assert proc.returncode == -signal.SIGKILL
        assert not (out / "aggregates.json").exists()  # it really was stopped mid-run
        done = {p.name: p.stat().st_ino for p in parts.glob("b*")}
        assert all(finished[name] == ino for name, ino in finished.items() if name in done)
        assert set(finished) <= set(done)  # nothing finished was lost
        finished = done
    n_batches = 16  # 32 listed files in batches of 2
    assert len(finished) < n_batches

    result = cli(*args, "--out", str(out), env=single_thread_env())
    assert result.returncode == 0, result.stderr
    timing = json.loads((parts / "timing.json").read_text())
    assert timing["images"] == 32 - 2 * len(finished)  # only unfinished batches were computed again
    assert all((parts / name).stat().st_ino == ino for name, ino in finished.items())  # and none rewritten
    assert not list(parts.glob(".tmp-*"))
    assert read_outputs(out) == uninterrupted


def test_ctrl_c_swallowed_mid_batch_still_stops_at_the_next_batch(tiny_dirs, photo_dir, tmp_path, monkeypatch):
    """Python drops a KeyboardInterrupt raised inside a finalizer the garbage collector runs; the run must
    stop all the same, at the end of the batch in flight, keeping what it finished."""
    model = load_hf(str(tiny_dirs["vit"]))
    write_batch = RunStore.write_batch
    calls = []

    def write_batch_after_a_swallowed_ctrl_c(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            # Ctrl-C lands while a finalizer runs, where Python reports it as "Exception ignored" and carries on
            with contextlib.suppress(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        return write_batch(self, *args, **kwargs)

    monkeypatch.setattr(RunStore, "write_batch", write_batch_after_a_swallowed_ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run_analysis(model, read_image_list(photo_dir), tmp_path, AnalyzeOptions(batch_size=2, progress=False))
    assert len(calls) == 2  # stopped right after the batch in flight, not after all 16
    assert sorted(p.name for p in (tmp_path / "parts" / "rank-000-of-001").glob("b*")) == ["b000000", "b000001"]
    assert not (tmp_path / "aggregates.json").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the run's handler is gone with it


def test_two_processes_give_the_same_results_as_one(run_args, uninterrupted, tmp_path):
    """torchrun --nproc_per_node=2 on CPU (gloo): each rank takes every other batch; rank 0 merges."""
    two = tmp_path / "two"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vitprobe",
         *run_args, "--out", str(two)],
        capture_output=True, text=True, timeout=300, env=single_thread_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("30 of 32 images analysed") == 1  # printed by rank 0 only
    for rank in (0, 1):
        part = two / "parts" / f"rank-{rank:03d}-of-002"
        assert sorted(p.name for p in part.glob("b*")) == [f"b{b:06d}" for b in range(rank, 16, 2)]
    assert read_outputs(two) == uninterrupted


def test_list_file_limit_and_a_different_run_in_the_same_folder(tiny_dirs, photo_dir, tmp_path):
    listing = tmp_path / "list.txt"
    rel = os.path.relpath(photo_dir / "img04.png", tmp_path)
    listing.write_text(f"# three images\n{photo_dir / 'img01.png'}\n\n{rel}\n{photo_dir / 'notes.png'}\n")
    assert read_image_list(listing) == [photo_dir / "img01.png", tmp_path / rel, photo_dir / "notes.png"]
    out = tmp_path / "out"
    base = ["analyze", str(listing), "--model", str(tiny_dirs["dinov2"]), "--out", str(out), "--no-report",
            "--no-progress"]
    result = runner.invoke(app, [*base, "--limit", "2"])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "records.parquet").column("image").unique().to_pylist()
    assert len(rows) == 2
    again = runner.invoke(app, [*base, "--limit", "3"])
    assert again.exit_code == 2
    assert "holds another run" in again.output and "run the same command to resume" in again.output


def test_missing_extra_fails_with_a_one_line_hint(tiny_dirs, photo_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    result = runner.invoke(app, ["analyze", str(photo_dir), "--model", str(tiny_dirs["vit"]), "--out", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("a dataset run needs pyarrow: pip install vitprobe")


def test_no_readable_image_exits_1_with_the_failures_listed(tiny_dirs, photo_dir, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("img05_broken.jpg", "notes.png"):
        (folder / name).write_bytes((photo_dir / name).read_bytes())
    result = runner.invoke(app, ["analyze", str(folder), "--model", str(tiny_dirs["vit"]), "--out",
                                 str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 1 and "none of the 2 images could be analysed" in result.output
    assert len((tmp_path / "out" / "failures.csv").read_text().splitlines()) == 3
    assert not (tmp_path / "out" / "report.html").exists()
