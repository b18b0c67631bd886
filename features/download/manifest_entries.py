"""Files to index (id, path, split) from a folder walk or a label CSV, as compact Arrow columns."""

from __future__ import annotations

import csv
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from schemas.errors import ManifestError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

Row = tuple[str, str, str | None]  # (image_id, path, split)


def _validity(valid: bytearray) -> tuple[pa.Buffer | None, int]:
    """Arrow validity bitmap of one byte per value (0: null), and the null count."""
    nulls = valid.count(0)
    if not nulls:
        return None, 0
    flags = pa.Array.from_buffers(pa.uint8(), len(valid), [None, pa.py_buffer(valid)])
    return flags.cast(pa.bool_()).buffers()[1], nulls


class StringColumn:
    """Strings (or None) appended into Arrow buffers: no Python object is kept per value.

    Arrays are built from buffers, never with pa.array: its first call imports pandas (35 MB).
    """

    def __init__(self) -> None:
        self._data = bytearray()
        self._offsets = array("q", [0])
        self._valid = bytearray()  # one byte per value: 0 for None

    def append(self, value: str | None) -> None:
        """Add one value."""
        if value is not None:
            self._data += value.encode()
        self._offsets.append(len(self._data))
        self._valid.append(value is not None)

    def finish(self) -> pa.Array:
        """The values as a string array (large_string past 2 GiB of text)."""
        count = len(self._valid)
        validity, nulls = _validity(self._valid)
        if nulls == count:  # a folder's splits: no offsets kept
            return pa.nulls(count, pa.string())
        kind, offsets = pa.large_string(), pa.py_buffer(self._offsets)
        if len(self._data) < 2**31:  # 32-bit offsets: half the memory per value
            wide = pa.Array.from_buffers(pa.int64(), count + 1, [None, offsets])
            kind, offsets = pa.string(), wide.cast(pa.int32()).buffers()[1]
        buffers = [validity, offsets, pa.py_buffer(self._data)]
        return pa.Array.from_buffers(kind, count, buffers, null_count=nulls)


def int_array(values: Sequence[int | None], kind: pa.DataType, typecode: str) -> pa.Array:
    """Python ints and Nones as an Arrow integer array without pa.array (see StringColumn).

    Args:
        values: the values, None for null.
        kind: the Arrow integer type.
        typecode: the array module's code of the same width ("i": int32, "q": int64).

    Returns:
        The array.
    """
    validity, nulls = _validity(bytearray(value is not None for value in values))
    data = array(typecode, [0 if value is None else value for value in values])
    buffers = [validity, pa.py_buffer(data)]
    return pa.Array.from_buffers(kind, len(values), buffers, null_count=nulls)


@dataclass(frozen=True)
class ManifestEntries:
    """Files to index as three Arrow string columns: compact at hundreds of thousands of files.

    Every path starts with `prefix`, kept once (a folder's path) instead of in every row.
    `scanned` marks rows in folder-walk order rather than an order the caller chose: error
    messages then list paths sorted, as scan_images and entries_from_folder order them.
    """

    image_id: pa.Array
    path: pa.Array
    split: pa.Array
    scanned: bool = False
    prefix: str = ""

    @classmethod
    def from_rows(
        cls, rows: Iterable[Row], scanned: bool = False, prefix: str = ""
    ) -> ManifestEntries:
        """Entries from (image_id, path, split) tuples, consumed one at a time.

        Args:
            rows: the files to index, in the caller's order (paths without prefix).
            scanned: rows come from a folder walk (see the class docstring).
            prefix: the start of every path, left out of rows.

        Returns:
            The entries.
        """
        ids, paths, splits = StringColumn(), StringColumn(), StringColumn()
        for image_id, path, split in rows:
            ids.append(image_id)
            paths.append(path)
            splits.append(split)
        return cls(ids.finish(), paths.finish(), splits.finish(), scanned, prefix)

    def __len__(self) -> int:
        return len(self.image_id)

    def full_paths(self, paths: pa.Array) -> list[str]:
        """Values of (a part of) the path column as whole paths."""
        return [self.prefix + path for path in paths.to_pylist()]


def _join(folder: str, name: str) -> str:
    # As str(Path(folder) / name), which drops a leading "./".
    return name if folder == "." else os.path.join(folder, name)


def _is_image(name: str) -> bool:
    """Whether Path(name).suffix, lower-cased, is an image suffix (without building a Path)."""
    dot = name.rfind(".")
    return 0 < dot < len(name) - 1 and name[dot:].lower() in IMAGE_SUFFIXES


def walk_images(folder: str) -> Iterator[str]:
    """Image paths under folder in directory order, visiting what os.walk visits.

    os.walk lists every name of a folder first; this keeps only the subfolders' names.
    """
    subfolders = []
    try:
        scan = os.scandir(folder)
    except OSError:  # os.walk skips unreadable folders too
        return
    with scan:
        for entry in scan:
            try:
                is_folder = entry.is_dir()
            except OSError:
                is_folder = False
            if is_folder:
                if not entry.is_symlink():  # os.walk does not follow links to folders
                    subfolders.append(entry.name)
            elif _is_image(entry.name):
                yield _join(folder, entry.name)
    for name in subfolders:
        yield from walk_images(_join(folder, name))


def checked_folder(directory: Path) -> str:
    """directory as a string, for walk_images.

    Raises:
        ManifestError: it is not a directory.
    """
    if not directory.is_dir():
        raise ManifestError(f"--images {directory}: not a directory")
    return str(directory)


def folder_entries(directory: Path) -> ManifestEntries:
    """entries_from_folder as compact ManifestEntries (in walk order: the manifest sorts by id).

    Raises:
        ManifestError: directory is not a directory.
    """
    folder = checked_folder(directory)
    prefix = _join(folder, "")  # every walked path starts with it: "" for ".", else "folder/"
    relative = (path[len(prefix) :] for path in walk_images(folder))
    # A matched image name has a suffix: its stem is the name up to the last dot.
    rows = ((path[: path.rfind(".")].rsplit(os.sep, 1)[-1], path, None) for path in relative)
    return ManifestEntries.from_rows(rows, scanned=True, prefix=prefix)


def csv_rows(directory: Path, labels_csv: Path) -> Iterator[Row]:
    """(image_id, path, split) of each line of a label CSV (see entries_from_csv), lazily.

    Raises:
        ManifestError: missing column, or an empty filename, naming the CSV line.
    """
    with labels_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "filename" not in reader.fieldnames:
            raise ManifestError(
                f"--labels {labels_csv}: needs a 'filename' column (found {reader.fieldnames})"
            )
        for record in reader:
            line_number = reader.line_num  # physical line: DictReader skips blank lines
            filename = (record.get("filename") or "").strip()
            if not filename:
                raise ManifestError(f"--labels {labels_csv}:{line_number}: empty filename")
            path = directory / filename
            image_id = (record.get("image_id") or "").strip() or path.stem
            yield image_id, str(path), (record.get("split") or "").strip() or None


def csv_entries(directory: Path, labels_csv: Path) -> ManifestEntries:
    """entries_from_csv as compact ManifestEntries.

    Raises:
        ManifestError: missing column, or an empty filename, naming the CSV line.
    """
    return ManifestEntries.from_rows(csv_rows(directory, labels_csv))
