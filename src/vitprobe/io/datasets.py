"""Images inside dataset containers, named like files: ``<container>/<member>``.

- WebDataset-style tar shards: ``shard-000003.tar/000123.jpg`` is that member of the shard, read
  straight from the archive (no extraction to disk); ``dir/shard-{000000..000099}.tar`` names a
  range of shards (zero-padded like the pattern).
- Parquet files with an image column: ``images.parquet/17`` is row 17.
- Hugging Face ``datasets`` saved with ``save_to_disk``: the folder's Arrow files, ``data-00000-of-00001.arrow/17``.

The image column is ``image`` (or ``img``, ``jpg``, ``png``, ``webp``) when there is one, else the
first column of encoded images: binary, or Hugging Face's struct of ``bytes`` and ``path``. Containers
are opened once per process and read member by member. Reading needs pyarrow for Parquet and Arrow.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path

TAR_SUFFIXES = (".tar",)
TABLE_SUFFIXES = (".parquet", ".arrow")
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp")
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")
_OPEN_TARS: dict[Path, tarfile.TarFile] = {}
_OPEN_COLUMNS: dict[Path, object] = {}


class MemberError(ValueError):
    """A member of a container that cannot be read; ``str()`` is the reason (one line)."""


def expand_braces(pattern: str) -> list[str]:
    """``shard-{000..002}.tar`` -> the three names, zero-padded as the pattern's first number; others as given."""
    found = _BRACES.search(pattern)
    if found is None:
        return [pattern]
    first, last = found.group(1), found.group(2)
    if int(last) < int(first):
        raise ValueError(f"{pattern}: the range {{{first}..{last}}} runs backwards")
    width = len(first) if first.startswith("0") else 0
    head, tail = pattern[: found.start()], pattern[found.end() :]
    return [name for n in range(int(first), int(last) + 1) for name in expand_braces(f"{head}{n:0{width}d}{tail}")]


def is_dataset(source: str | Path) -> bool:
    """Whether ``source`` names containers rather than a folder of files or a list file."""
    text = str(source)
    if _BRACES.search(text):
        return True
    path = Path(text)
    if path.is_file():
        return path.suffix.lower() in TAR_SUFFIXES + TABLE_SUFFIXES
    return path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def list_dataset(source: str | Path, suffixes: Iterable[str]) -> list[Path]:
    """Every image of the containers ``source`` names, in order: tar members with an image suffix (from
    ``suffixes``), table rows. A missing shard raises ``FileNotFoundError`` naming it."""
    text = str(source)
    path = Path(text)
    if path.is_dir():  # save_to_disk: state.json lists the Arrow files in order
        state = json.loads((path / "state.json").read_text())
        containers = [path / entry["filename"] for entry in state.get("_data_files", [])]
    else:
        containers = [Path(name) for name in expand_braces(text)]
    wanted = {s.lower() for s in suffixes}
    out: list[Path] = []
    for container in containers:
        if not container.is_file():
            raise FileNotFoundError(f"{container}: no such shard")
        if container.suffix.lower() in TAR_SUFFIXES:
            out.extend(container / m.name for m in _tar(container).getmembers()
                       if m.isfile() and Path(m.name).suffix.lower() in wanted)
        else:
            out.extend(container / str(row) for row in range(len(_column(container))))
    return out


def container_of(path: Path) -> tuple[Path, str] | None:
    """(container file, member name) when ``path`` lies inside a tar shard or a table; None otherwise."""
    for parent in path.parents:
        if parent.suffix.lower() in TAR_SUFFIXES + TABLE_SUFFIXES and parent.is_file():
            return parent, path.relative_to(parent).as_posix()
    return None


def read_member(container: Path, member: str) -> bytes:
    """The encoded bytes of one member (tar) or row (table); ``MemberError`` says why not."""
    if container.suffix.lower() in TAR_SUFFIXES:
        try:
            handle = _tar(container).extractfile(member)
        except KeyError:
            raise MemberError(f"no member {member!r} in the shard") from None
        if handle is None:
            raise MemberError("not a regular file in the shard")
        return handle.read()
    if not member.isdigit():
        raise MemberError(f"rows are named by their index, got {member!r}")
    column = _column(container)
    row = int(member)
    if row >= len(column):
        raise MemberError(f"row {row} is past the table's {len(column)} rows")
    value = column[row].as_py()
    if isinstance(value, dict):
        value = value.get("bytes")
    if not value:
        raise MemberError("the row holds no image bytes")
    return bytes(value)


def _tar(path: Path) -> tarfile.TarFile:
    if path not in _OPEN_TARS:
        try:
            _OPEN_TARS[path] = tarfile.open(path, mode="r:")  # noqa: SIM115 (kept open: read member by member)
        except tarfile.TarError as err:
            raise MemberError(f"not a readable tar shard ({err})") from None
    return _OPEN_TARS[path]


def _column(path: Path):
    """The image column of a Parquet or Arrow (IPC stream, as ``save_to_disk`` writes) table."""
    if path not in _OPEN_COLUMNS:
        from .store import require

        pa = require("pyarrow")
        if path.suffix.lower() == ".parquet":
            table = require("pyarrow.parquet").read_table(path)
        else:
            with pa.memory_map(str(path)) as source:
                table = pa.ipc.open_stream(source).read_all()
        _OPEN_COLUMNS[path] = table.column(image_column(table.schema, path))
    return _OPEN_COLUMNS[path]


def image_column(schema, path: Path) -> str:
    """The name of the column holding encoded images (see the module docstring)."""
    import pyarrow as pa

    def encoded(field) -> bool:
        t = field.type
        if pa.types.is_struct(t):
            return any(t.field(i).name == "bytes" for i in range(t.num_fields))
        return pa.types.is_binary(t) or pa.types.is_large_binary(t)

    named = [f for f in schema if f.name.lower() in IMAGE_COLUMNS and encoded(f)]
    candidates = named or [f for f in schema if encoded(f)]
    if not candidates:
        raise MemberError("no column of encoded images (binary, or a struct with 'bytes')")
    return candidates[0].name
