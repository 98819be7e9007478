"""Images inside dataset containers, named like files: ``<container>/<member>``.

- WebDataset-style tar shards: ``shard-000003.tar/000123.jpg`` is that member of the shard, read
  straight from the archive (no extraction to disk); ``dir/shard-{000000..000099}.tar`` names a
  range of shards (zero-padded like the pattern).
- Parquet files with an image column (``Dataset.to_parquet`` writes them): ``images.parquet/17`` is row 17.
- Hugging Face ``datasets`` saved with ``save_to_disk``: a ``Dataset`` folder (``state.json``, its Arrow
  files in that order) has its rows ``DIR/17``; a ``DatasetDict`` folder (``dataset_dict.json`` and a
  ``Dataset`` folder per split) has ``DIR/train/17``, every split or those picked. Rows of a table whose
  ``file_name`` (``filename``, ``file``, ``image_file``, ``image_path`` or ``path``) column holds unique
  relative names are named by it instead: ``DIR/train/cats/001.jpg``.

The image column is the first column of Hugging Face's ``Image`` feature type (the features of the
folder's ``dataset_info.json``, else of the Arrow schema's ``huggingface`` metadata), one named
``image`` (``img``, ``jpg``, ``png``, ``webp``) preferred when there are several; without features, a
column so named, else the first column of encoded images: binary, or Hugging Face's struct of ``bytes``
and ``path`` (a row without bytes is read from the file at its ``path``, as ``Dataset.to_parquet`` leaves
local files). ``reading_column(name)`` overrides it for every table read while it is active. Columns of
the ``ClassLabel`` type are the rows' labels (``labels_of``: class names). Containers are opened once
per process and read member by member. Reading needs pyarrow (never the ``datasets`` package).
"""

from __future__ import annotations

import contextlib
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

TAR_SUFFIXES = (".tar",)
TABLE_SUFFIXES = (".parquet", ".arrow")
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp")
NAME_COLUMNS = ("file_name", "filename", "file", "image_file", "image_path", "path")
DICT_FILE, STATE_FILE, INFO_FILE = "dataset_dict.json", "state.json", "dataset_info.json"
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")
_OPEN_TARS: dict[Path, tarfile.TarFile] = {}
_OPEN_TABLES: dict[Path, _Table] = {}
_PARENTS: dict[Path, tuple[Path, str] | None] = {}
_IMAGE_COLUMN: str | None = None


class MemberError(ValueError):
    """A member of a container that cannot be read; ``str()`` is the reason (one line)."""


@dataclass
class Listing:
    """What ``scan`` found: the ``items`` (image paths), and for tables the ``splits`` read with their
    row counts (a ``DatasetDict``; None otherwise), the image ``columns`` read and the ``labels`` columns."""

    items: list[Path]
    splits: list[tuple[str, int]] | None = None
    columns: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def summary(self) -> str | None:
        """One line for the user (tables only): the splits and rows found, the image and label columns."""
        if not self.columns:
            return None
        if self.splits is not None:
            found = "DatasetDict, splits " + ", ".join(
                f"{name} ({rows} row{'' if rows == 1 else 's'})" for name, rows in self.splits)
        else:
            found = f"{len(self.items)} row{'' if len(self.items) == 1 else 's'}"
        text = f"{found}; images from column {_names(self.columns)}"
        return text + (f"; labels from {_names(self.labels)}" if self.labels else "")


def _names(columns: list[str]) -> str:
    return ", ".join(f"'{c}'" for c in columns)


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


def is_dataset_folder(path: Path) -> bool:
    """Whether ``path`` is what ``Dataset.save_to_disk`` writes (``state.json`` and ``dataset_info.json``)."""
    return path.is_dir() and (path / STATE_FILE).is_file() and (path / INFO_FILE).is_file()


def is_dataset_dict(path: Path) -> bool:
    """Whether ``path`` is what ``DatasetDict.save_to_disk`` writes (``dataset_dict.json``)."""
    return path.is_dir() and (path / DICT_FILE).is_file()


def is_dataset(source: str | Path) -> bool:
    """Whether ``source`` names containers rather than a folder of files or a list file."""
    text = str(source)
    if _BRACES.search(text):
        return True
    path = Path(text)
    if path.is_file():
        return path.suffix.lower() in TAR_SUFFIXES + TABLE_SUFFIXES
    return is_dataset_folder(path) or is_dataset_dict(path)


def list_dataset(source: str | Path, suffixes: Iterable[str], splits: Iterable[str] | None = None,
                 image_column: str | None = None) -> list[Path]:
    """``scan(...).items``: every image of the containers ``source`` names, in order."""
    return scan(source, suffixes, splits, image_column).items


def scan(source: str | Path, suffixes: Iterable[str], splits: Iterable[str] | None = None,
         image_column: str | None = None) -> Listing:
    """Every image of the containers ``source`` names, in order: tar members with an image suffix (from
    ``suffixes``), table rows; of a ``DatasetDict`` folder the ``splits`` named (default: all, in
    ``dataset_dict.json`` order). ``image_column`` is checked to exist in every table. A missing shard
    raises ``FileNotFoundError`` naming it; a bad split or column ``ValueError`` (one line)."""
    text = str(source)
    path = Path(text)
    picked = list(dict.fromkeys(splits)) if splits else None
    if picked is not None and not is_dataset_dict(path):
        raise ValueError("splits can only be picked in a DatasetDict folder (one with dataset_dict.json); "
                         f"this is {_kind(path)}")
    if is_dataset_dict(path):
        available = _split_names(path)
        for name in picked or []:
            if name not in available:
                raise ValueError(f"no split {name!r} in {DICT_FILE} (splits: {', '.join(available) or 'none'})")
        chosen = picked or available
        for name in chosen:
            if not is_dataset_folder(path / name):
                raise ValueError(f"split {name!r}: {path / name} is no save_to_disk folder "
                                 f"({STATE_FILE} and {INFO_FILE})")
        containers = [path / name for name in chosen]
    elif path.is_dir():
        containers = [path]
    else:
        containers = [Path(name) for name in expand_braces(text)]
    wanted = {s.lower() for s in suffixes}
    listing = Listing([], [] if is_dataset_dict(path) else None)
    for container in containers:
        if container.is_dir():
            table = _table(container)
        elif not container.is_file():
            raise FileNotFoundError(f"{container}: no such shard")
        elif container.suffix.lower() in TAR_SUFFIXES:
            if image_column is not None:
                raise ValueError("tar shards have no columns: an image column can only be chosen in Parquet "
                                 "files and Hugging Face datasets")
            listing.items.extend(container / m.name for m in _tar(container).getmembers()
                                 if m.isfile() and Path(m.name).suffix.lower() in wanted)
            continue
        else:
            table = _table(container)
        try:
            column = table.image_column(image_column)
        except MemberError as err:
            prefix = f"split {container.name!r}: " if listing.splits is not None else ""
            raise ValueError(f"{prefix}{err}") from None
        listing.items.extend(container / name for name in table.names)
        if listing.splits is not None:
            listing.splits.append((container.name, len(table.names)))
        for found, names in ((listing.columns, [column]), (listing.labels, list(table.labels))):
            found.extend(n for n in names if n not in found)
    return listing


def _kind(path: Path) -> str:
    if is_dataset_folder(path):
        return "a single Dataset folder"
    if path.is_dir():
        return "a folder of image files"
    if _BRACES.search(str(path)) or path.suffix.lower() in TAR_SUFFIXES:
        return "tar shards"
    if path.suffix.lower() in TABLE_SUFFIXES:
        return f"a {path.suffix.lower().lstrip('.').capitalize()} file"
    return "a list of image files"


def _split_names(path: Path) -> list[str]:
    """The splits ``dataset_dict.json`` lists."""
    try:
        splits = json.loads((path / DICT_FILE).read_text()).get("splits")
    except (ValueError, AttributeError):
        raise ValueError(f"{DICT_FILE} is not a JSON object") from None
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise ValueError(f"{DICT_FILE} has no list of split names ('splits')")
    return splits


def container_of(path: Path) -> tuple[Path, str] | None:
    """(container, member name) when ``path`` lies inside a tar shard, a table file or a ``save_to_disk``
    folder; None otherwise. What each folder is is looked up once per process."""
    parent = path.parent
    if parent not in _PARENTS:
        _PARENTS[parent] = next(((p, parent.relative_to(p).as_posix()) for p in (parent, *parent.parents)
                                 if _is_container(p)), None)
    found = _PARENTS[parent]
    if found is None:
        return None
    container, inner = found
    return container, path.name if inner == "." else f"{inner}/{path.name}"


def _is_container(path: Path) -> bool:
    if path.suffix.lower() in TAR_SUFFIXES + TABLE_SUFFIXES and path.is_file():
        return True
    return is_dataset_folder(path)


@contextlib.contextmanager
def reading_column(name: str | None) -> Iterator[None]:
    """Read images from the column ``name`` of every table while active (None: the column found)."""
    global _IMAGE_COLUMN
    previous, _IMAGE_COLUMN = _IMAGE_COLUMN, name
    try:
        yield
    finally:
        _IMAGE_COLUMN = previous


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
    table = _table(container)
    column = table.images(_IMAGE_COLUMN)
    value = column[table.row(member)].as_py()
    if isinstance(value, dict):
        value, where = value.get("bytes"), value.get("path")
        if not value and where:  # Dataset.to_parquet keeps local image files as their paths
            file = Path(where) if Path(where).is_absolute() else (container if container.is_dir()
                                                                  else container.parent) / where
            try:
                return file.read_bytes()
            except OSError as err:
                raise MemberError(f"the row holds no image bytes, and its path {where!r} cannot be read "
                                  f"({err.strerror or err})") from None
    if not value:
        raise MemberError("the row holds no image bytes")
    return bytes(value)


def labels_of(path: Path) -> dict[str, str | None]:
    """The class names of a table row's ``ClassLabel`` columns ({column: name}; None where the row has
    no label, -1 in ``datasets``); {} for a path outside tables or a table without labels."""
    inside = container_of(path)
    if inside is None or inside[0].suffix.lower() in TAR_SUFFIXES:
        return {}
    table = _table(inside[0])
    if not table.labels:
        return {}
    try:
        row = table.row(inside[1])
    except MemberError:
        return dict.fromkeys(table.labels)
    return {name: table.label(name, row) for name in table.labels}


def class_names(paths: Iterable[Path]) -> dict[str, list[str]]:
    """Every ``ClassLabel`` column of the tables ``paths`` lie in, with its class names in label order."""
    out: dict[str, list[str]] = {}
    for parent in dict.fromkeys(Path(p).parent for p in paths):
        inside = container_of(parent / "0")
        if inside is None or inside[0].suffix.lower() in TAR_SUFFIXES:
            continue
        for name, names in _table(inside[0]).labels.items():
            known = out.setdefault(name, [])
            known.extend(n for n in names if n not in known)
    return out


def _tar(path: Path) -> tarfile.TarFile:
    if path not in _OPEN_TARS:
        try:
            _OPEN_TARS[path] = tarfile.open(path, mode="r:")  # noqa: SIM115 (kept open: read member by member)
        except tarfile.TarError as err:
            raise MemberError(f"not a readable tar shard ({err})") from None
    return _OPEN_TARS[path]


def _table(path: Path) -> _Table:
    if path not in _OPEN_TABLES:
        _OPEN_TABLES[path] = _Table(path)
    return _OPEN_TABLES[path]


class _Table:
    """A Parquet file, an Arrow file (IPC stream, as ``save_to_disk`` writes them) or a ``save_to_disk``
    folder (its Arrow files in ``state.json`` order) as one table: its features, image column, row names
    and labels."""

    def __init__(self, path: Path) -> None:
        from .store import require

        pa = require("pyarrow")
        self.path = path
        features = None
        if path.is_dir():
            state = json.loads((path / STATE_FILE).read_text())
            files = [path / entry["filename"] for entry in state.get("_data_files", [])]
            for file in files:
                if not file.is_file():
                    raise FileNotFoundError(f"{file}: no such shard")
            tables = [_read_arrow(pa, file) for file in files]
            self.table = pa.concat_tables(tables) if tables else pa.table({})
            features = _json_features((path / INFO_FILE).read_text(errors="replace"), ())
        elif path.suffix.lower() == ".parquet":
            self.table = require("pyarrow.parquet").read_table(path)
        else:
            self.table = _read_arrow(pa, path)
        if features is None:
            metadata = self.table.schema.metadata or {}
            features = _json_features(metadata.get(b"huggingface", b"{}"), ("info",))
        self.features = features or {}
        self._images: dict[str | None, object] = {}
        self.labels: dict[str, list[str]] = {
            name: [str(n) for n in spec.get("names") or []] for name, spec in self.features.items()
            if isinstance(spec, dict) and spec.get("_type") == "ClassLabel" and name in self.table.column_names}
        self._label_values: dict[str, list] = {}
        self.names, self._rows = self._row_names()

    def _row_names(self) -> tuple[list[str], dict[str, int] | None]:
        """Names from the first file-name column of unique relative names; else the row indices."""
        import pyarrow as pa

        n = self.table.num_rows
        for name in NAME_COLUMNS:
            if name not in self.table.column_names or not (
                    pa.types.is_string(self.table.schema.field(name).type)
                    or pa.types.is_large_string(self.table.schema.field(name).type)):
                continue
            values = self.table.column(name).to_pylist()
            names = [_relative(v) for v in values]
            if all(names) and len(set(names)) == n:
                return names, {v: i for i, v in enumerate(names)}
        return [str(i) for i in range(n)], None

    def row(self, member: str) -> int:
        """The row a member name stands for: a file name of the name column, or a row index."""
        if self._rows is not None and member in self._rows:
            return self._rows[member]
        if not member.isdigit():
            raise MemberError(f"no row named {member!r}" if self._rows is not None
                              else f"rows are named by their index, got {member!r}")
        row = int(member)
        if row >= self.table.num_rows:
            raise MemberError(f"row {row} is past the table's {self.table.num_rows} rows")
        return row

    def image_column(self, wanted: str | None = None) -> str:
        """The column images are read from: ``wanted`` (checked), else the one found (module docstring)."""
        import pyarrow as pa

        schema = self.table.schema
        if wanted is not None:
            if wanted not in schema.names:
                raise MemberError(f"no column {wanted!r} (columns: {', '.join(schema.names) or 'none'})")
            if not _encoded(pa, schema.field(wanted)):
                raise MemberError(f"column {wanted!r} holds {schema.field(wanted).type}, not encoded images "
                                  "(binary, or a struct with 'bytes')")
            return wanted
        typed = [name for name, spec in self.features.items() if isinstance(spec, dict)
                 and spec.get("_type") == "Image" and name in schema.names and _encoded(pa, schema.field(name))]
        named = [f.name for f in schema if f.name.lower() in IMAGE_COLUMNS and _encoded(pa, f)]
        candidates = [n for n in typed if n.lower() in IMAGE_COLUMNS] or typed or named \
            or [f.name for f in schema if _encoded(pa, f)]
        if not candidates:
            raise MemberError("no column of encoded images (an Image feature, binary, or a struct with 'bytes')")
        return candidates[0]

    def images(self, wanted: str | None = None):
        if wanted not in self._images:
            self._images[wanted] = self.table.column(self.image_column(wanted))
        return self._images[wanted]

    def label(self, name: str, row: int) -> str | None:
        if name not in self._label_values:
            self._label_values[name] = self.table.column(name).to_pylist()
        value, names = self._label_values[name][row], self.labels[name]
        return names[value] if isinstance(value, int) and 0 <= value < len(names) else None


def _read_arrow(pa, path: Path):
    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:  # the Arrow file format, not a stream
            source.seek(0)
            return pa.ipc.open_file(source).read_all()


def _json_features(text: str | bytes, path: tuple[str, ...]) -> dict | None:
    """``features`` of a ``dataset_info.json`` text (``path`` ()) or of the schema metadata (("info",));
    None when there are none."""
    try:
        value = json.loads(text)
        for key in path:
            value = value[key]
        features = value["features"]
    except (ValueError, KeyError, TypeError):
        return None
    return features if isinstance(features, dict) else None


def _encoded(pa, field) -> bool:
    t = field.type
    if pa.types.is_struct(t):
        return any(t.field(i).name == "bytes" for i in range(t.num_fields))
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _relative(value: object) -> str | None:
    """A file name usable as a member name (relative, no '..', as the path joins it), else None."""
    if not isinstance(value, str) or not value.strip() or "\\" in value:
        return None
    name = PurePosixPath(value)
    if name.is_absolute() or ".." in name.parts or name.as_posix() in ("", "."):
        return None
    return name.as_posix()
