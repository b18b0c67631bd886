"""Reads through a snapshot: pointer -> snapshot -> the index pieces that can hold the ids.

Shards committed after the snapshot stay visible without listing every marker: the snapshot's
plan piece maps every not-yet-committed row to its shard, so a point lookup of such a row reads
that one shard's marker and index part, and a full read reads the markers of shards pending in
the snapshot only (one listing of commits/ first when there are many of them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

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
PLAN_SCHEMA = pa.schema([pa.field("image_id", pa.string()), pa.field("row", pa.int64())])
INDEX_WITH_REMOVED = FEATURE_INDEX_SCHEMA.append(pa.field("removed", pa.bool_()))


@contextmanager
def open_binary(path: str, what: str) -> Iterator[IO[bytes]]:
    """Open a file for random access (local or fsspec URL); a missing file names itself.

    Raises:
        StoreError: the file does not exist (`what` says whose file it is).
    """
    try:
        if files.is_local(path):
            handle: IO[bytes] = open(files.native(path), "rb")  # noqa: SIM115
        else:
            fs, inner = files.filesystem(path)
            handle = fs.open(inner, "rb")
    except FileNotFoundError:
        raise StoreError(f"{path}: {what} is missing") from None
    with handle:
        yield handle


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


def read_matching(path: str, what: str, ids: Sequence[str]) -> pa.Table:
    """Rows of a Parquet piece sorted by image_id whose id is in ids, reading only the row
    groups whose statistics can hold them."""
    wanted = np.asarray(sorted(set(ids)), dtype=object)
    with open_binary(path, what) as handle:
        piece = pq.ParquetFile(handle)
        column = piece.schema_arrow.get_field_index("image_id")
        groups = candidate_row_groups(piece.metadata, column, wanted)
        table = piece.read_row_groups(groups) if groups else piece.schema_arrow.empty_table()
    return table.filter(pc.is_in(table.column("image_id"), pa.array(wanted, pa.string())))


def read_piece(path: str, what: str) -> pa.Table:
    """A whole Parquet piece of a snapshot."""
    with open_binary(path, what) as handle:
        return pq.read_table(handle)


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

    def index(self) -> pa.Table:
        """All visible index rows, ordered by row, with the `removed` column."""
        base = read_piece(self._file(self.snapshot.index), self._what("index"))
        parts = [base.cast(INDEX_WITH_REMOVED)]
        if self.include_pending:
            plan = read_piece(self._file(self.snapshot.plan), self._what("plan"))
            if self.tail_plan is not None:
                plan = pa.concat_tables(
                    [plan.cast(PLAN_SCHEMA), self.tail_plan().cast(PLAN_SCHEMA)]
                )
            parts += self._pending_parts(plan, self._existing_markers(plan))
        table = pa.concat_tables(parts)
        table = table.take(pc.sort_indices(table.column("row")))
        return self._with_removed(table)

    def lookup(self, ids: Sequence[str]) -> pa.Table:
        """Visible index rows of the given ids (any order; ids not visible are absent)."""
        found = read_matching(self._file(self.snapshot.index), self._what("index"), ids)
        found = found.cast(INDEX_WITH_REMOVED)
        missing = sorted(set(ids) - set(found.column("image_id").to_pylist()))
        if missing and self.include_pending:
            plan = read_matching(self._file(self.snapshot.plan), self._what("plan"), missing)
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
