"""Reads through a snapshot: pointer -> snapshot -> the index pieces that can hold the ids.

Shards committed after the snapshot stay visible without listing every marker: the snapshot's
plan piece maps every not-yet-committed row to its shard, so a point lookup of such a row reads
that one shard's marker and index part, and a full read reads the markers of shards pending in
the snapshot only (one listing of commits/ first when there are many of them).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features import files
from features.store.shards import (
    COMMITS_DIR,
    image_ids_digest,
    index_part_path,
    marker_path,
    read_marker_bytes,
    shard_name,
)
from features.store.snapshot import Snapshot
from schemas.errors import StoreError
from schemas.tables import FEATURE_INDEX_SCHEMA

LOGGER = logging.getLogger(__name__)
# Above this many pending shards, one listing of commits/ is cheaper than a GET per shard.
_LIST_ABOVE = 64
# From this many distinct ids, a lookup probes the memory-mapped Arrow index (a hash probe of
# every id, nothing decoded) rather than the Parquet row groups that can hold them: ids spread
# over the index hit nearly every row group, and decoding them all costs several times more.
_ARROW_FROM_IDS = 32
PLAN_SCHEMA = pa.schema([pa.field("image_id", pa.string()), pa.field("row", pa.int64())])
INDEX_WITH_REMOVED = FEATURE_INDEX_SCHEMA.append(pa.field("removed", pa.bool_()))


class RangeFile(io.RawIOBase):
    """A read-only file whose bytes come from ranged reads, kept once fetched.

    Parquet readers seek and read a file many times (footer length, footer, each column chunk);
    on an object store each of those would be a request. Here the caller prefetches the tail
    (footer) and the span of the row groups it needs, one ranged GET each, and every read
    pyarrow makes is served from them.
    """

    def __init__(self, path: str, what: str, size: int | None) -> None:
        super().__init__()
        self.path, self.what = path, what
        self._local = files.is_local(path)
        try:
            if self._local:
                self._descriptor = os.open(files.native(path), os.O_RDONLY)
                self.size = os.fstat(self._descriptor).st_size if size is None else size
            else:
                self._fs, self._inner = files.filesystem(path)
                self.size = int(self._fs.size(self._inner)) if size is None else size
        except FileNotFoundError:
            raise StoreError(f"{path}: {what} is missing") from None
        self._pieces: list[tuple[int, bytes]] = []
        self._position = 0

    def prefetch(self, start: int, stop: int) -> None:
        """Fetch bytes [start, stop) with one read (clipped to the file)."""
        start, stop = max(0, start), min(self.size, stop)
        if stop <= start or self._cached(start, stop) is not None:
            return
        try:
            if self._local:
                data = os.pread(self._descriptor, stop - start, start)
            else:
                data = bytes(self._fs.cat_file(self._inner, start=start, end=stop))
        except FileNotFoundError:
            raise StoreError(f"{self.path}: {self.what} is missing") from None
        self._pieces.append((start, data))

    def _cached(self, start: int, stop: int) -> bytes | None:
        for first, data in self._pieces:
            if first <= start and stop <= first + len(data):
                return data[start - first : stop - first]
        return None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        stop = min(self.size, self._position + len(view))
        if stop <= self._position:
            return 0
        self.prefetch(self._position, stop)
        data = self._cached(self._position, stop)
        assert data is not None  # prefetch just covered it
        view[: len(data)] = data
        self._position = stop
        return len(data)

    def close(self) -> None:
        if self._local and not self.closed:
            os.close(self._descriptor)
        super().close()


# The tail fetched first: the footer of a piece's few row groups fits with room to spare.
_TAIL_BYTES = 256 * 1024


def _group_span(metadata: pq.FileMetaData, group: int) -> tuple[int, int]:
    """Byte range of one row group's column chunks."""
    row_group = metadata.row_group(group)
    starts, stops = [], []
    for column in range(row_group.num_columns):
        chunk = row_group.column(column)
        first = chunk.data_page_offset
        if chunk.has_dictionary_page and chunk.dictionary_page_offset is not None:
            first = min(first, chunk.dictionary_page_offset)
        starts.append(first)
        stops.append(first + chunk.total_compressed_size)
    return min(starts), max(stops)


def candidate_row_groups(metadata: pq.FileMetaData, column: int, wanted: np.ndarray) -> list[int]:
    """Row groups whose [min, max] statistics of a sorted column can hold some wanted value.

    Args:
        metadata: the Parquet footer.
        column: index of the (sorted) key column.
        wanted: the keys looked for, sorted ascending (numpy object array of str).
    """
    groups = []
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            groups.append(group)
            continue
        low = np.searchsorted(wanted, stats.min, "left")
        high = np.searchsorted(wanted, stats.max, "right")
        if high > low:
            groups.append(group)
    return groups


def read_matching(path: str, what: str, ids: Sequence[str], size: int | None) -> pa.Table:
    """Rows of a Parquet piece sorted by image_id whose id is in ids, reading only the row
    groups whose statistics can hold them: one ranged read for the footer, one per run of
    adjacent row groups (size: the piece's bytes if known, else a HEAD request tells)."""
    wanted = np.asarray(sorted(set(ids)), dtype=object)
    with RangeFile(path, what, size) as handle:
        handle.prefetch(handle.size - _TAIL_BYTES, handle.size)
        piece = pq.ParquetFile(handle)
        column = piece.schema_arrow.get_field_index("image_id")
        groups = candidate_row_groups(piece.metadata, column, wanted)
        spans = [_group_span(piece.metadata, group) for group in groups]
        for start, stop in _merged(spans):
            handle.prefetch(start, stop)
        table = piece.read_row_groups(groups) if groups else piece.schema_arrow.empty_table()
    return table.filter(pc.is_in(table.column("image_id"), pa.array(wanted, pa.string())))


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent byte ranges joined, so neighbouring row groups cost one read."""
    merged: list[list[int]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [(start, stop) for start, stop in merged]


def read_piece(path: str, what: str, size: int | None = None) -> pa.Table:
    """A whole Parquet piece (one read of all its bytes, decoded from memory)."""
    del size  # one whole read needs no size
    return open_piece(path, what).read()


def open_piece(path: str, what: str) -> pq.ParquetFile:
    """A Parquet piece's bytes, read whole in one request, to decode by column from memory.

    Raises:
        StoreError: the piece is missing (the message names it and what it is).
    """
    try:
        data = files.read_bytes(path)
    except FileNotFoundError:
        raise StoreError(f"{path}: {what} is missing") from None
    return pq.ParquetFile(pa.BufferReader(data))


def read_arrow_piece(path: str, what: str) -> pa.Table:
    """A local Arrow IPC piece, memory-mapped: no copy and no decoding (the table keeps the
    mapping alive after the file is closed)."""
    try:
        with pa.memory_map(files.native(path)) as source:
            return pa.ipc.open_file(source).read_all()
    except FileNotFoundError:
        raise StoreError(f"{path}: {what} is missing") from None


def removed_flags(image_ids: pa.ChunkedArray | pa.Array, removed: set[str]) -> pa.Array:
    """`removed` column for ids (vectorized membership test)."""
    if not removed:
        return pa.array(np.zeros(len(image_ids), dtype=bool))
    flags = pc.is_in(image_ids, value_set=pa.array(sorted(removed), pa.string()))
    return flags.combine_chunks() if isinstance(flags, pa.ChunkedArray) else flags


class SnapshotRead:
    """One read of a view at a snapshot (plus, for the latest, the shards committed since).

    Args:
        view_path: the view.
        snapshot: the snapshot read.
        include_pending: also show shards committed after it (False for as_of reads).
        removed: current removed ids (None: the flags the snapshot recorded).
        tail_plan: allocation rows (image_id, row) added after the snapshot, loaded on demand.
    """

    def __init__(
        self,
        view_path: str,
        snapshot: Snapshot,
        include_pending: bool,
        removed: set[str] | None,
        tail_plan: Callable[[], pa.Table] | None = None,
    ) -> None:
        self.view_path = view_path
        self.snapshot = snapshot
        self.include_pending = include_pending
        self.removed = removed
        self.tail_plan = tail_plan
        self.pending_committed: list[int] = []  # shards read beyond the snapshot, for lineage

    def _file(self, relative: str) -> str:
        return files.join(self.view_path, relative)

    def _what(self, piece: str) -> str:
        return f"{piece} piece of snapshot {self.snapshot.snapshot}"

    def _piece(self, name: str) -> pa.Table:
        relative = getattr(self.snapshot, name)
        size = self.snapshot.sizes.get(name)
        return read_piece(self._file(relative), self._what(name), size)

    def _matching(self, name: str, ids: Sequence[str]) -> pa.Table:
        relative = getattr(self.snapshot, name)
        size = self.snapshot.sizes.get(name)
        return read_matching(self._file(relative), self._what(name), ids, size)

    def _arrow_index(self) -> pa.Table | None:
        """The index piece memory-mapped from its Arrow copy; None without one (format 1)
        or off the local disk (an object store reads the Parquet row groups it needs)."""
        relative = self.snapshot.index_arrow
        path = self._file(relative) if relative else ""
        if not relative or not files.is_local(path):
            return None
        return read_arrow_piece(path, self._what("index_arrow"))

    def _index_matching(self, ids: Sequence[str]) -> pa.Table:
        """Rows of the index piece whose id is in ids: few ids read the Parquet row groups
        that can hold them, many probe the memory-mapped Arrow copy."""
        wanted = set(ids)
        arrow = self._arrow_index() if len(wanted) >= _ARROW_FROM_IDS else None
        if arrow is None:
            return self._matching("index", ids)
        keys = pa.array(sorted(wanted), pa.string())
        return arrow.filter(pc.is_in(arrow.column("image_id"), value_set=keys))

    def index(self) -> pa.Table:
        """All visible index rows, ordered by row, with the `removed` column."""
        arrow = self._arrow_index()
        base = self._piece("index") if arrow is None else arrow
        parts = [base.cast(INDEX_WITH_REMOVED)]
        if self.include_pending:
            plan = self._piece("plan")
            if self.tail_plan is not None:
                plan = pa.concat_tables(
                    [plan.cast(PLAN_SCHEMA), self.tail_plan().cast(PLAN_SCHEMA)]
                )
            parts += self._pending_parts(plan, self._existing_markers(plan))
        table = pa.concat_tables(parts)
        rows = table.column("row").to_numpy()
        if np.any(rows[1:] < rows[:-1]):  # ids sort like rows within a segment: often no-op
            table = table.take(pc.sort_indices(table.column("row")))
        return self._with_removed(table)

    def lookup(self, ids: Sequence[str]) -> pa.Table:
        """Visible index rows of the given ids (any order; ids not visible are absent)."""
        found = self._index_matching(ids).cast(INDEX_WITH_REMOVED)
        missing = sorted(set(ids) - set(found.column("image_id").to_pylist()))
        if missing and self.include_pending:
            plan = self._matching("plan", missing)
            if self.tail_plan is not None and plan.num_rows < len(missing):
                tail = self.tail_plan()
                tail = tail.filter(pc.is_in(tail.column("image_id"), pa.array(missing)))
                plan = pa.concat_tables([plan.cast(PLAN_SCHEMA), tail.cast(PLAN_SCHEMA)])
            if plan.num_rows:
                shards = np.unique(plan.column("row").to_numpy() // self.snapshot.shard_rows)
                parts = self._pending_parts(plan, [int(shard) for shard in shards])
                extra = pa.concat_tables(parts) if parts else INDEX_WITH_REMOVED.empty_table()
                extra = extra.filter(pc.is_in(extra.column("image_id"), pa.array(missing)))
                found = pa.concat_tables([found, extra])
        return self._with_removed(found)

    def _with_removed(self, table: pa.Table) -> pa.Table:
        if self.removed is None:
            return table
        position = table.schema.get_field_index("removed")
        flags = removed_flags(table.column("image_id"), self.removed)
        return table.set_column(position, "removed", flags)

    def _existing_markers(self, plan: pa.Table) -> list[int]:
        """Pending shards of a plan that may have a marker (one listing when there are many)."""
        shards = np.unique(plan.column("row").to_numpy() // self.snapshot.shard_rows).tolist()
        if len(shards) <= _LIST_ABOVE:
            return [int(shard) for shard in shards]
        names = set(files.list_names(files.join(self.view_path, COMMITS_DIR)))
        return [int(shard) for shard in shards if f"{shard_name(int(shard))}.json" in names]

    def _pending_parts(self, plan: pa.Table, shards: Sequence[int]) -> list[pa.Table]:
        """Index parts of the shards (among those given) committed since the snapshot."""
        if not shards:
            return []
        plan_shards = plan.column("row").to_numpy() // self.snapshot.shard_rows
        plan = plan.filter(pa.array(np.isin(plan_shards, np.asarray(shards, dtype=np.int64))))
        plan_rows = plan.column("row").to_numpy()
        plan_ids = np.asarray(plan.column("image_id").to_pylist(), dtype=object)
        parts = []
        for shard in shards:
            in_shard = plan_rows // self.snapshot.shard_rows == shard
            part = self._pending_part(shard, plan_rows[in_shard], plan_ids[in_shard])
            if part is not None:
                parts.append(part)
                self.pending_committed.append(shard)
        return parts

    def _pending_part(self, shard: int, rows: np.ndarray, ids: np.ndarray) -> pa.Table | None:
        """A pending shard's index part if its marker exists and agrees with the plan."""
        marker_file = marker_path(self.view_path, shard)
        try:
            marker, _ = read_marker_bytes(marker_file)
        except FileNotFoundError:
            return None
        part = marker.index_table()  # markers carry their rows: no second read
        if part is None:
            part_file = index_part_path(self.view_path, shard)
            part = read_piece(part_file, f"index part of the shard {marker_file} commits")
            part = part.cast(FEATURE_INDEX_SCHEMA)
        self._check_pending(marker_file, marker, part, rows, ids)
        flags = pa.array(np.zeros(part.num_rows, dtype=bool))
        return part.append_column(pa.field("removed", pa.bool_()), flags)

    def _check_pending(
        self, where: str, marker: Any, part: pa.Table, rows: np.ndarray, ids: np.ndarray
    ) -> None:
        """The marker must match the snapshot's spec and shard plan, and its index part."""
        shard_start = (int(rows[0]) // self.snapshot.shard_rows) * self.snapshot.shard_rows
        part_rows = part.column("row").to_numpy()
        part_ids = part.column("image_id").to_pylist()
        if marker.spec_sha256 != self.snapshot.spec_sha256:
            raise StoreError(f"{where}: written under a different spec")
        if marker.row_start != shard_start or not np.array_equal(
            part_rows, np.arange(marker.row_start, marker.row_stop)
        ):
            raise StoreError(f"{where}: rows {marker.row_start}:{marker.row_stop} do not match")
        if marker.image_ids_sha256 != image_ids_digest(part_ids):
            raise StoreError(f"{where}: image-id digest does not match its index part")
        by_row = dict(zip(part_rows.tolist(), part_ids, strict=True))
        if any(by_row.get(int(row)) != image_id for row, image_id in zip(rows, ids, strict=True)):
            raise StoreError(f"{where}: image-id digest does not match the rows")
