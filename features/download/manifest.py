"""Build an image manifest (ids, sizes, digests) from a folder and an optional label CSV."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import warnings
from collections import Counter, deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from features import parquet_writes
from features.download.manifest_entries import (
    ManifestEntries,
    StringColumn,
    checked_folder,
    csv_rows,
    int_array,
    walk_images,
)
from schemas.errors import ManifestError
from schemas.tables import MANIFEST_SCHEMA

LOGGER = logging.getLogger(__name__)
# Rows described and written per record batch: memory stays flat however many files there are.
CHUNK_ROWS = 4096
# Files per thread-pool task: few futures per chunk, small enough to keep the threads balanced.
TASK_FILES = 64
# Values turned into Python objects at a time when walking a whole column.
_SLICE_ROWS = 16384

Description = tuple[str, int, str, int | None, int | None]  # (uri, bytes, sha256, width, height)


@dataclass(frozen=True)
class ImageEntry:
    """One file to index, with its id and optional split."""

    image_id: str
    path: Path
    split: str | None = None


@dataclass
class ManifestSummary:
    """Counts of a written manifest, gathered batch by batch."""

    rows: int = 0
    total_bytes: int = 0
    unreadable: int = 0  # images whose header could not be read (null width)
    splits: Counter[str | None] = field(default_factory=Counter)

    def add(self, batch: pa.RecordBatch) -> None:
        """Count one MANIFEST_SCHEMA batch in."""
        self.rows += batch.num_rows
        self.total_bytes += pc.sum(batch.column("bytes")).as_py() or 0
        self.unreadable += batch.column("width").null_count
        self.splits.update(batch.column("split").to_pylist())


def scan_images(directory: Path) -> list[Path]:
    """Image files under a directory (recursive), sorted for determinism.

    Raises:
        ManifestError: directory is not a directory.
    """
    return sorted(Path(path) for path in walk_images(checked_folder(directory)))


def entries_from_folder(directory: Path) -> list[ImageEntry]:
    """One entry per image file, id = file stem."""
    return [ImageEntry(path.stem, path) for path in scan_images(directory)]


def entries_from_csv(directory: Path, labels_csv: Path) -> list[ImageEntry]:
    """Entries listed in a CSV with columns filename (relative to the folder), image_id, split.

    `image_id` and `split` are optional; without image_id the file stem is the id.

    Raises:
        ManifestError: missing column, or an empty filename, naming the CSV line.
    """
    rows = csv_rows(directory, labels_csv)
    return [ImageEntry(image_id, Path(path), split) for image_id, path, split in rows]


def _compact(entries: Iterable[ImageEntry]) -> ManifestEntries:
    return ManifestEntries.from_rows((e.image_id, str(e.path), e.split) for e in entries)


def _all_paths(entries: ManifestEntries) -> Iterator[str]:
    for start in range(0, len(entries), _SLICE_ROWS):
        yield from entries.full_paths(entries.path.slice(start, _SLICE_ROWS))


def _in_input_order(entries: ManifestEntries, paths: list[str]) -> list[str]:
    """Paths in the order the caller listed them (a folder's: sorted as Path objects)."""
    return sorted(paths, key=Path) if entries.scanned else paths


def _raise_duplicates(entries: ManifestEntries, duplicates: list[str]) -> NoReturn:
    def listed(image_id: str) -> str:
        paths = entries.full_paths(entries.path.filter(pc.equal(entries.image_id, image_id)))
        return ", ".join(_in_input_order(entries, paths))

    details = "; ".join(f"{image_id}: {listed(image_id)}" for image_id in duplicates[:10])
    raise ManifestError(f"duplicate image id(s) {duplicates[:10]} ({details})")


def _id_order(entries: ManifestEntries) -> pa.Array:
    """Indices of the entries sorted by image_id, once the ids are known to be unique."""
    order = pc.sort_indices(entries.image_id)
    ids = entries.image_id.take(order)
    if len(ids) > 1:
        repeated = pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1))
        if pc.any(repeated).as_py():
            _raise_duplicates(entries, pc.unique(ids.slice(1).filter(repeated)).to_pylist())
    return order


def check_unique_ids(entries: Iterable[ImageEntry]) -> None:
    """Raise ManifestError naming every id that occurs more than once, with its files."""
    _id_order(_compact(entries))


def _check_files_exist(entries: ManifestEntries) -> None:
    missing = [path for path in _all_paths(entries) if not Path(path).is_file()]
    if missing:
        missing = _in_input_order(entries, missing)
        raise ManifestError(f"{len(missing)} listed file(s) do not exist, e.g. {missing[:5]}")


def describe_file(path: Path | str) -> tuple[int, str, int | None, int | None]:
    """(bytes, sha256, width, height); width/height are None if the header is unreadable."""
    with open(path, "rb") as handle:
        data = handle.read()
    width = height = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # the bytes just read: no second read
                width, height = image.size
    except Exception:  # broken headers are extraction's job to report, not the manifest's
        LOGGER.debug("unreadable image header: %s", path)
    return len(data), hashlib.sha256(data).hexdigest(), width, height


def _describe_paths(paths: list[str]) -> list[Description]:
    folders: dict[str, str] = {}
    return [(resolved_path(path, folders), *describe_file(path)) for path in paths]


def resolved_path(path: str, folders: dict[str, str]) -> str:
    """str(Path(path).resolve()), with each folder resolved once (in folders, by its spelling).

    Path.resolve() checks every component of every path for a link: 7 system calls an image
    at /tmp/run/dataset/images/ID.jpg, half of the manifest's time at AVA's 255,530 files. A
    folder resolved once and one lstat of the file itself give the same path, since only a
    link as the last component (resolved in full here) can change it.
    """
    folder, name = os.path.split(path)
    if not name or name in (".", "..") or os.path.islink(path):
        return str(Path(path).resolve())
    if folder not in folders:
        folders[folder] = str(Path(folder or ".").resolve())
    return os.path.join(folders[folder], name)


def _record_batch(
    entries: ManifestEntries, dataset: str, rows: pa.Array, tasks: list[Future[list[Description]]]
) -> pa.RecordBatch:
    """The MANIFEST_SCHEMA batch of the entries at rows, described by tasks (in row order)."""
    described = [description for task in tasks for description in task.result()]
    datasets, uris, digests = StringColumn(), StringColumn(), StringColumn()
    for uri, _, digest, _, _ in described:
        datasets.append(dataset)
        uris.append(uri)
        digests.append(digest)
    columns = [
        datasets.finish(),
        entries.image_id.take(rows).cast(pa.string()),
        uris.finish(),
        int_array([size for _, size, _, _, _ in described], pa.int64(), "q"),
        int_array([width for _, _, _, width, _ in described], pa.int32(), "i"),
        int_array([height for _, _, _, _, height in described], pa.int32(), "i"),
        digests.finish(),
        entries.split.take(rows).cast(pa.string()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=MANIFEST_SCHEMA)


def _described_batches(
    entries: ManifestEntries, order: pa.Array, dataset: str, threads: int, chunk_rows: int
) -> Generator[pa.RecordBatch, None, None]:
    pool = ThreadPoolExecutor(threads)
    pending: deque[tuple[pa.Array, list[Future[list[Description]]]]] = deque()
    try:
        for start in range(0, len(order), chunk_rows):
            rows = order.slice(start, chunk_rows)
            paths = entries.full_paths(entries.path.take(rows))
            tasks = [
                pool.submit(_describe_paths, paths[first : first + TASK_FILES])
                for first in range(0, len(paths), TASK_FILES)
            ]
            pending.append((rows, tasks))
            # One chunk stays queued behind the one collected: the threads describe it while
            # this thread builds and writes the batch.
            if len(pending) > 1:
                yield _record_batch(entries, dataset, *pending.popleft())
        while pending:
            yield _record_batch(entries, dataset, *pending.popleft())
    finally:
        pool.shutdown(cancel_futures=True)  # after a failure: no work on chunks never written


def manifest_batches(
    entries: ManifestEntries, dataset: str, threads: int = 4, chunk_rows: int = CHUNK_ROWS
) -> Generator[pa.RecordBatch, None, None]:
    """Describe the entries, chunk_rows files at a time on threads, as MANIFEST_SCHEMA batches
    in image_id order. The entries are checked before this returns.

    Args:
        entries: the files to index.
        dataset: the dataset column's value.
        threads: files described in parallel.
        chunk_rows: rows per batch (at most two chunks are in flight at a time).

    Returns:
        A generator of the batches; close it to stop early.

    Raises:
        ManifestError: duplicate ids or a listed file that does not exist.
    """
    order = _id_order(entries)
    _check_files_exist(entries)
    return _described_batches(entries, order, dataset, threads, chunk_rows)


def write_manifest(
    entries: ManifestEntries,
    dataset: str,
    out: str,
    threads: int = 4,
    chunk_rows: int = CHUNK_ROWS,
) -> ManifestSummary:
    """Write the manifest of the entries to out (path or URL) batch by batch, published whole.

    Args:
        entries: the files to index.
        dataset: the dataset column's value.
        out: the Parquet file to write; on any failure it is left as it was.
        threads: files described in parallel.
        chunk_rows: rows described and written at a time (one row group each).

    Returns:
        The counts of the written manifest.

    Raises:
        ManifestError: duplicate ids or a listed file that does not exist (nothing written).
    """
    with (
        contextlib.closing(manifest_batches(entries, dataset, threads, chunk_rows)) as batches,
        parquet_writes.atomic_parquet_writer(out, MANIFEST_SCHEMA) as writer,
    ):
        summary = ManifestSummary()
        for batch in batches:
            writer.write_batch(batch)
            summary.add(batch)
    return summary


def build_manifest(entries: Iterable[ImageEntry], dataset: str, threads: int = 4) -> pa.Table:
    """Describe every entry and return a MANIFEST_SCHEMA table ordered by image_id.

    The whole table is in memory: write_manifest streams a large one to a file instead.

    Args:
        entries: the files to index.
        dataset: the dataset column's value.
        threads: files described in parallel.

    Returns:
        The manifest table.

    Raises:
        ManifestError: duplicate ids or a listed file that does not exist.
    """
    batches = list(manifest_batches(_compact(entries), dataset, threads))
    return pa.Table.from_batches(batches, MANIFEST_SCHEMA).combine_chunks()


def read_manifest(path: str, flag: str = "--manifest") -> pa.Table:
    """Read and validate a manifest Parquet file (local path or fsspec URL); errors name flag.

    Raises:
        ManifestError: the file is missing or not a valid manifest.
    """
    from features import files
    from schemas.tables import conform_manifest

    if not files.exists(path):
        raise ManifestError(f"{flag} {path}: no such file")
    try:
        table = files.read_parquet(path)
    except Exception as error:  # pyarrow raises ArrowInvalid/OSError for non-Parquet input
        raise ManifestError(f"{flag} {path}: not a Parquet file ({error})") from error
    return conform_manifest(table, source=path)
