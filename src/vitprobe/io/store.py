"""Results of a dataset run on disk: atomic writes, a manifest, one part per rank, batch by batch.

Layout of an output folder::

    manifest.json                    what the run is (model, input, images, batching); checked on resume
    parts/rank-R-of-K/bNNNNNN/       one finished batch of rank R: records.parquet, failures.json,
                                     state.safetensors (accumulator states); a folder renamed into
                                     place, so it exists completely or not at all
    records.parquet, failures.csv, aggregates.json     the merged results (written last)

Every file is written under a temporary name in the same folder and renamed, so a run killed at
any moment (Ctrl-C, kill -9) leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ANALYZE_EXTRA = "pip install 'vitprobe[analyze]'"
RECORD_COLUMNS = ("image", "layer", "head", "metric", "value")
MANIFEST = "manifest.json"
_TMP = ".tmp-"


def require(module: str):
    """Import an optional dependency of the ``analyze`` extra, or fail with a one-line hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is missing; dataset runs need the analyze extra: {ANALYZE_EXTRA}") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a synced temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP + path.name, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def records_table(columns: dict[str, list]):
    """A pyarrow Table of records: image (string), layer (int16), head (int16, null when the metric
    is not per head), metric (dictionary-encoded string), value (float64)."""
    pa = require("pyarrow")
    schema = pa.schema([
        ("image", pa.string()),
        ("layer", pa.int16()),
        ("head", pa.int16()),
        ("metric", pa.dictionary(pa.int32(), pa.string())),
        ("value", pa.float64()),
    ])
    return pa.table({name: columns[name] for name in RECORD_COLUMNS}, schema=schema)


def table_bytes(table) -> bytes:
    """A pyarrow Table as Parquet (zstd) bytes."""
    pq = require("pyarrow.parquet")
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def read_table(path: Path):
    return require("pyarrow.parquet").read_table(path)


def write_failures_csv(path: Path, failures: list[tuple[str, str]]) -> None:
    """Failures as CSV with the header ``file,reason``, atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "reason"])
    writer.writerows(failures)
    atomic_write_text(path, buf.getvalue())


class RunStore:
    """The output folder of one dataset run (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # manifest -------------------------------------------------------------------------------
    def read_manifest(self) -> dict | None:
        path = self.root / MANIFEST
        return json.loads(path.read_text()) if path.exists() else None

    def claim(self, manifest: dict) -> None:
        """Write the manifest of a new run, or check that the folder holds this same run.

        Raises ValueError naming the first differing key when it holds another run.
        """
        existing = self.read_manifest()
        if existing is None:
            atomic_write_text(self.root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
            return
        for key in sorted(set(existing) | set(manifest)):
            if existing.get(key) != manifest.get(key):
                raise ValueError(
                    f"{self.root} holds another run ({key}: {existing.get(key)!r} there, {manifest.get(key)!r} now); "
                    "run the same command to resume, or choose another --out"
                )

    # batches ----------------------------------------------------------------------------------
    def part_dir(self, rank: int, world: int) -> Path:
        return self.root / "parts" / f"rank-{rank:03d}-of-{world:03d}"

    def clean_partial(self, rank: int, world: int) -> None:
        """Remove what an interrupted write of this rank left (temporary files and folders)."""
        part = self.part_dir(rank, world)
        if part.exists():
            for leftover in part.glob(_TMP + "*"):
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()

    def done_batches(self, world: int) -> dict[int, Path]:
        """Finished batches of every rank: global batch index -> its folder."""
        done = {}
        for rank in range(world):
            part = self.part_dir(rank, world)
            if part.exists():
                for folder in part.glob("b[0-9]*"):
                    done[int(folder.name[1:])] = folder
        return done

    def write_batch(
        self,
        rank: int,
        world: int,
        index: int,
        records: dict[str, list],
        failures: list[tuple[str, str]],
        states: dict[str, torch.Tensor],
    ) -> Path:
        """Write one finished batch atomically: a temporary folder, synced, renamed into place."""
        part = self.part_dir(rank, world)
        part.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP}b{index:06d}-", dir=part))
        try:
            (tmp / "records.parquet").write_bytes(table_bytes(records_table(records)))
            (tmp / "failures.json").write_text(json.dumps([list(f) for f in failures]))
            save_file({k: v.contiguous() for k, v in states.items()}, tmp / "state.safetensors")
            for name in ("records.parquet", "failures.json", "state.safetensors"):
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            _fsync_dir(tmp)
            final = part / f"b{index:06d}"
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(part)
        return final

    @staticmethod
    def read_batch(folder: Path) -> tuple[object, list[tuple[str, str]], dict[str, torch.Tensor]]:
        """(records Table, failures [(file, reason)], states) of one finished batch."""
        failures = [tuple(f) for f in json.loads((folder / "failures.json").read_text())]
        return read_table(folder / "records.parquet"), failures, load_file(folder / "state.safetensors")

    def iter_batches(self, world: int) -> Iterator[tuple[int, Path]]:
        """Finished batches of all ranks in global batch order."""
        yield from sorted(self.done_batches(world).items())
