"""How a view's committed rows are read: through its snapshots, or every marker (older views)."""

from __future__ import annotations

import abc
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from features import files
from features.store.shards import CommitMarker, ShardSpec
from features.store.snapshot import list_snapshots, read_pointer, read_snapshot
from features.store.snapshot_reader import SnapshotRead, removed_flags
from schemas.tables import FEATURE_INDEX_SCHEMA

LOGGER = logging.getLogger(__name__)
_HINTED: set[str] = set()  # views already told to run features.compact (log once each)


class ViewReads(abc.ABC):
    """Read methods of FeatureView (kept apart to keep each module small)."""

    path: str
    name: str
    store_root: str
    # What the last committed_index() read: {"snapshot": N or None, "shards_after": [...]}.
    last_read: dict[str, Any]

    @property
    @abc.abstractmethod
    def meta(self) -> dict[str, Any]:
        """Contents of view.json."""

    @property
    @abc.abstractmethod
    def allocation(self) -> pa.Table:
        """Row allocation table."""

    @abc.abstractmethod
    def shards(self) -> list[ShardSpec]:
        """All shards in row order."""

    @abc.abstractmethod
    def committed(self) -> dict[int, CommitMarker]:
        """Valid commit markers by shard index."""

    @abc.abstractmethod
    def index_part_path(self, shard: ShardSpec) -> str:
        """Parquet index part of a shard."""

    @abc.abstractmethod
    def removed_image_ids(self) -> set[str]:
        """Ids whose images left the manifest."""

    def snapshots(self) -> list[int]:
        """Numbers of the view's published snapshots, ascending."""
        return list_snapshots(self.path)

    def snapshot_read(self, as_of: int | None = None) -> SnapshotRead | None:
        """A read at snapshot as_of, or at the latest plus shards committed since (as_of None).

        Returns None for a view without snapshots (written before them): callers then read
        every marker (correct, slower; `python -m features.compact` upgrades the view).

        Raises:
            StoreError: as_of names no snapshot, or the pointer is unreadable or names a
                missing one (the messages name the files).
        """
        if as_of is not None:
            older = read_snapshot(self.path, as_of, f"as_of={as_of}")
            return SnapshotRead(self.path, older, include_pending=False, removed=None)
        latest = read_pointer(self.path)
        if latest is None:
            return None
        rows, first_new = int(self.meta["rows"]), latest.rows
        # Rows appended after the snapshot are planned from rows.parquet (read only then).
        tail = None if rows == first_new else lambda: self._tail_plan(first_new)
        return SnapshotRead(self.path, latest, True, self.removed_image_ids(), tail)

    def _tail_plan(self, first_row: int) -> pa.Table:
        allocation = self.allocation.select(["image_id", "row"])
        rows = allocation.column("row").to_numpy()
        return allocation.slice(int(np.searchsorted(rows, first_row)))

    def committed_index(self, as_of: int | None = None) -> pa.Table:
        """Index rows of committed shards only, ordered by row, with a `removed` column.

        Args:
            as_of: a snapshot number (time travel); None = the latest state.

        Raises:
            StoreError: see snapshot_read.
        """
        read = self.snapshot_read(as_of)
        if read is None:
            index = self.marker_index()
            self.last_read = {"snapshot": None, "shards_after": []}
            return index
        index = read.index()
        self.last_read = {
            "snapshot": read.snapshot.snapshot,
            "shards_after": sorted(read.pending_committed),
        }
        return index

    def marker_index(self) -> pa.Table:
        """The committed index built from every marker and index part (no snapshot used)."""
        if self.path not in _HINTED:
            _HINTED.add(self.path)
            LOGGER.info(
                "view %s has no snapshot: reading every commit marker; run "
                "`python -m features.compact --store %s --view %s` once to speed up reads",
                self.name,
                self.store_root,
                self.name,
            )
        markers = self.committed()
        parts = [
            files.read_parquet(self.index_part_path(shard)).cast(FEATURE_INDEX_SCHEMA)
            for shard in self.shards()
            if shard.index in markers
        ]
        index = pa.concat_tables(parts) if parts else FEATURE_INDEX_SCHEMA.empty_table()
        flags = removed_flags(index.column("image_id"), self.removed_image_ids())
        return index.append_column(pa.field("removed", pa.bool_()), flags)
