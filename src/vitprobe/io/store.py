"""Results of a dataset run on disk: atomic writes, a manifest, one part per rank, batch by batch.

Layout of an output folder::

    manifest.json                    what the run is (model, input, images, batching); checked on resume
    .lock, .lock.json                held by the run that uses the folder (and who that is)
    parts/rank-R-of-K/bNNNNNN/       one finished batch of rank R: records.parquet, failures.json,
                                     state.safetensors (accumulator states) and, written last,
                                     done.json with the SHA-256 of each; a folder renamed into place,
                                     so it exists completely or not at all
    records.parquet, failures.csv, aggregates.json     the merged results (written last)

Every file is written under a temporary name in the same folder and renamed, so a run killed at
any moment (Ctrl-C, kill -9) leaves either the old file or the new one, never half of one. A batch
whose files no longer match their checksums (a failing disk, a copy gone wrong) is computed again.
One run at a time uses a folder: ``RunStore.lock`` refuses a second one, naming the first.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..extras import require_extra
from .files import FULL_ERRNOS, DiskFull, atomic_write_bytes, atomic_write_text, fsync_dir, share
from .files import TMP_PREFIX as _TMP

log = logging.getLogger(__name__)

RECORD_COLUMNS = ("image", "layer", "head", "metric", "value")
MANIFEST = "manifest.json"
BATCH_FILES = ("records.parquet", "failures.json", "state.safetensors")
MARKER = "done.json"
LOCK = ".lock"

__all__ = ["DiskFull", "RunLocked", "RunStore", "atomic_write_bytes", "atomic_write_text", "require"]


class RunLocked(RuntimeError):
    """Another run holds the output folder; ``str()`` names the folder and the holder."""


_HELD: dict[Path, int] = {}
"""Folders this process holds the lock of, with how many nested ``RunStore.lock`` calls hold it."""


def require(module: str):
    """Import a dependency of dataset runs (pyarrow, jinja2: part of the base install), or fail with a
    one-line hint (they can still be missing from an environment someone pruned)."""
    return require_extra(module, None, "a dataset run")


def records_table(columns: dict[str, list]):
    """A pyarrow Table of records: image (string), layer (int16), head (int16, null when the metric
    is not per head), metric (dictionary-encoded string), value (float64), then any other column of
    ``columns`` (the images' class names) as a dictionary-encoded string."""
    pa = require("pyarrow")
    text = pa.dictionary(pa.int32(), pa.string())
    extra = [name for name in columns if name not in RECORD_COLUMNS]
    schema = pa.schema([
        ("image", pa.string()),
        ("layer", pa.int16()),
        ("head", pa.int16()),
        ("metric", text),
        ("value", pa.float64()),
        *((name, text) for name in extra),
    ])
    return pa.table({name: columns[name] for name in (*RECORD_COLUMNS, *extra)}, schema=schema)


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

    # the lock ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for one run (a ``filelock`` on ``.lock``, released when the process ends, even by
        kill -9); a second run is refused with ``RunLocked`` naming the holder from ``.lock.json``. A lock
        left by a process of this host that no longer exists is taken over."""
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        key = self.root.resolve()
        if key in _HELD:  # this process holds it already (the command around run_analysis)
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        owner = self.root / (LOCK + ".json")
        lock = FileLock(self.root / LOCK, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            holder = _read_json(owner) or {}
            if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
                (self.root / LOCK).unlink(missing_ok=True)  # the holder is gone: take the lock over
                lock = FileLock(self.root / LOCK, timeout=0)
                try:
                    lock.acquire()
                except Timeout:
                    raise RunLocked(self._locked_message(holder)) from None
            else:
                raise RunLocked(self._locked_message(holder)) from None
        _HELD[key] = 1
        try:
            atomic_write_text(owner, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
            yield
        finally:
            del _HELD[key]
            owner.unlink(missing_ok=True)
            lock.release()

    def _locked_message(self, holder: dict) -> str:
        who = (f"pid {holder['pid']} on {holder['host']}, since {holder.get('since', '?')}" if holder
               else "a process whose details are not written yet")
        return f"{self.root} is in use by another run ({who}); wait for it to finish or choose another --out"

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

    def verify_part(self, rank: int, world: int) -> list[Path]:
        """Remove this rank's finished batches whose files do not match their checksums (a failing disk, a
        copy gone wrong), each with one warning line, so they are computed again; returns them."""
        damaged = []
        part = self.part_dir(rank, world)
        for folder in sorted(part.glob("b[0-9]*")) if part.exists() else []:
            problem = _damage(folder)
            if problem:
                log.warning("%s: a finished batch is damaged (%s); computing it again", folder, problem)
                shutil.rmtree(folder, ignore_errors=True)
                damaged.append(folder)
        return damaged

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
        """Write one finished batch atomically: a temporary folder, synced, with its checksum marker written
        last, renamed into place. A full disk raises ``DiskFull`` and leaves no partial folder."""
        part = self.part_dir(rank, world)
        final = part / f"b{index:06d}"
        try:
            part.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP}b{index:06d}-", dir=part))
        except OSError as err:
            raise _disk_full(err, final, "a finished batch") from None
        try:
            (tmp / "records.parquet").write_bytes(table_bytes(records_table(records)))
            (tmp / "failures.json").write_text(json.dumps([list(f) for f in failures]))
            save_file({k: v.contiguous() for k, v in states.items()}, tmp / "state.safetensors")
            (tmp / MARKER).write_text(json.dumps({name: _sha256(tmp / name) for name in BATCH_FILES}))
            for name in (*BATCH_FILES, MARKER):
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
                share(tmp / name)  # safetensors writes 0600
            share(tmp)
            fsync_dir(tmp)
            os.rename(tmp, final)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, OSError):
                raise _disk_full(err, final, "a finished batch") from None
            raise
        fsync_dir(part)
        return final

    @staticmethod
    def read_batch(folder: Path) -> tuple[object, list[tuple[str, str]], dict[str, torch.Tensor]]:
        """(records Table, failures [(file, reason)], states) of one finished batch."""
        failures = [tuple(f) for f in json.loads((folder / "failures.json").read_text())]
        return read_table(folder / "records.parquet"), failures, load_file(folder / "state.safetensors")

    def iter_batches(self, world: int) -> Iterator[tuple[int, Path]]:
        """Finished batches of all ranks in global batch order."""
        yield from sorted(self.done_batches(world).items())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _damage(folder: Path) -> str | None:
    """What is wrong with a finished batch folder, or None when every file matches its checksum."""
    marker = _read_json(folder / MARKER)
    if not isinstance(marker, dict) or set(marker) != set(BATCH_FILES):
        return f"no valid {MARKER}"
    for name, digest in marker.items():
        if not (folder / name).is_file():
            return f"{name} is missing"
        if _sha256(folder / name) != digest:
            return f"{name} does not match its checksum"
    return None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _disk_full(err: OSError, path: Path, what: str) -> OSError:
    """``DiskFull`` for a full disk or quota, else the error itself."""
    return DiskFull(path, what) if err.errno in FULL_ERRNOS and not isinstance(err, DiskFull) else err
