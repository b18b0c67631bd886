"""What verification reads per shard: its marker once, its features object once, index rows in bulk."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features import files
from features.store.snapshot import Snapshot, read_pointer
from features.store.snapshot_reader import open_piece
from features.store.view import CommitMarker, FeatureView, ShardSpec
from schemas.errors import StoreError

ZARR_METADATA = "zarr.json"
# The snapshot index's columns each shard's check reads (the schema is checked from the footer).
SNAPSHOT_COLUMNS = ["image_id", "row", "status"]


class ShardSources:
    """Reads a view's shards for verification at a bounded request count per shard.

    Per committed shard: one GET of its marker (by the caller), one GET of its features object
    (decoded from those bytes, and hashed from them for --deep), and its index rows from the
    snapshot's index piece, read once for the whole view, or from its marker; only --deep (or
    a marker written before markers carried rows) reads the shard's index part (one GET more). Uncommitted shards are
    found from one listing of index/ and of the features objects, never one request each.
    """

    def __init__(self, view: FeatureView) -> None:
        self.view = view
        self.array = view.array  # one backend for every shard (opened once)
        self.snapshot: Snapshot | None = read_pointer(view.path)
        self._snapshot_index: pa.Table | None = None
        self._snapshot_row_numbers: np.ndarray | None = None
        # Index pieces' bytes, read once, decoded by column as needed; by path in the view.
        self._pieces: dict[str, pq.ParquetFile] = {}
        self._snapshot_schema: pa.Schema | None = None  # the piece's, less `removed`
        self._zarr_metadata: bytes | None = None
        self._listed_objects: set[str] | None = None

    def prepare(self) -> None:
        """Read what every shard's check shares once, before checks run in parallel."""
        if self.snapshot is not None:
            try:
                self._snapshot_rows()
            except StoreError:
                # A damaged snapshot is the snapshot check's problem to report; the shards
                # are checked against their markers' rows instead.
                self.snapshot = None
        if self.view.format_name == "zarr":
            self._zarr_metadata = files.read_bytes(files.join(self.array.path, ZARR_METADATA))
        self.array.shard_key(0)  # caches the feature rank (reads the array's metadata once)

    # ---- index rows ----------------------------------------------------------------------
    def index_rows(
        self, shard: ShardSpec, marker: CommitMarker, deep: bool
    ) -> tuple[pa.Table, pa.Schema] | None:
        """The shard's index rows, ordered by row, and the schema of where they came from:
        unless deep, from the snapshot when it commits the shard (its SNAPSHOT_COLUMNS only;
        the schema is the piece's), else from the marker when it carries them; from the
        shard's index part otherwise (and always when deep); None when that part is missing.

        Raises:
            StoreError: the marker's rows do not fit the index schema.
        """
        if not deep and self.snapshot is not None and self.snapshot.is_committed(shard.index):
            index = self._snapshot_rows()
            assert self._snapshot_row_numbers is not None and self._snapshot_schema is not None
            start, stop = np.searchsorted(
                self._snapshot_row_numbers, [shard.row_start, shard.row_stop]
            )
            return index.slice(int(start), int(stop - start)), self._snapshot_schema
        carried = None if deep else marker.index_table()
        if carried is None:
            try:
                carried = files.read_parquet(self.view.index_part_path(shard))
            except FileNotFoundError:
                return None
        return carried, carried.schema

    def _snapshot_rows(self) -> pa.Table:
        if self._snapshot_index is None:
            assert self.snapshot is not None
            piece = self.index_piece(self.snapshot.index)
            try:
                index = piece.read(columns=SNAPSHOT_COLUMNS)
            except (pa.ArrowInvalid, OSError, KeyError) as error:
                raise StoreError(
                    f"index piece of snapshot {self.snapshot.snapshot}: {error}"
                ) from None
            schema = piece.schema_arrow
            removed = schema.get_field_index("removed")
            self._snapshot_schema = schema.remove(removed) if removed >= 0 else schema
            rows = index.column("row").to_numpy()
            if len(rows) > 1 and bool((np.diff(rows) < 0).any()):
                # Pieces are written in row order; a copy sorted by row only when one is not.
                order = np.argsort(rows, kind="stable")
                index, rows = index.take(pa.array(order)), rows[order]
            self._snapshot_index, self._snapshot_row_numbers = index, rows
        return self._snapshot_index

    def drop_pieces(self) -> None:
        """Drop the index pieces' bytes (their columns in use are decoded by now)."""
        self._pieces.clear()
        pa.default_memory_pool().release_unused()

    def release(self) -> None:
        """Drop the snapshot's index rows (the checks that share them are done)."""
        self._snapshot_index = self._snapshot_row_numbers = None
        # Arrow's allocator keeps freed pages for reuse; the readers' copy read next would
        # otherwise come on top of them.
        self.drop_pieces()

    def index_piece(self, relative: str) -> pq.ParquetFile:
        """A snapshot's index piece, its bytes read once per verification (the shards' rows
        and the snapshot check both need it) and decoded by column where it is used: the
        whole piece decoded would hold every column of every row (18 MB at AVA's 255k).

        Raises:
            StoreError: the piece is missing or unreadable (the message names it).
        """
        if relative not in self._pieces:
            path = files.join(self.view.path, relative)
            try:
                self._pieces[relative] = open_piece(path, "index piece of snapshot")
            except (pa.ArrowInvalid, OSError) as error:
                raise StoreError(f"{path}: unreadable index piece of snapshot ({error})") from None
        return self._pieces[relative]

    # ---- features ------------------------------------------------------------------------
    def features(self, shard: ShardSpec, deep: bool) -> tuple[np.ndarray, str | None]:
        """(the shard's stored rows, sha256 of its features object or None) from one read of
        the object (Zarr); other formats read through their backend, and hash only if deep.

        Raises:
            Exception: whatever the codec raises on a corrupt object (the caller reports it).
        """
        if self.view.format_name != "zarr":
            values = self.array.read_range(shard.row_start, shard.row_stop)
            checksum = self.array.shard_checksum(shard.index)[1] if deep else None
            return values, checksum
        key = self.array.shard_key(shard.index)
        try:
            data = files.read_bytes(files.join(self.array.path, key))
        except FileNotFoundError:
            fill = np.full((shard.rows, *self._shape()[1:]), np.nan, dtype=self._dtype())
            return fill, ""
        values = self._decode(key, data, shard)
        return values, hashlib.sha256(data).hexdigest()

    def _decode(self, key: str, data: bytes, shard: ShardSpec) -> np.ndarray:
        """Rows of one shard decoded by zarr itself from the object's bytes (in memory)."""
        import zarr
        from zarr.core.buffer import cpu
        from zarr.storage import MemoryStore

        if self._zarr_metadata is None:
            self._zarr_metadata = files.read_bytes(files.join(self.array.path, ZARR_METADATA))
        store = MemoryStore(
            {
                ZARR_METADATA: cpu.Buffer.from_bytes(self._zarr_metadata),
                key: cpu.Buffer.from_bytes(data),
            }
        )
        array = zarr.open_array(store=store, mode="r", zarr_format=3)
        return np.asarray(array[shard.row_start : shard.row_stop])

    def _shape(self) -> tuple[int, ...]:
        return self.array.layout().shape

    def _dtype(self) -> np.dtype[np.generic]:
        return np.dtype(self.array.layout().dtype)

    # ---- uncommitted shards --------------------------------------------------------------
    def uncommitted_leftovers(self, shards: list[ShardSpec]) -> Iterator[tuple[ShardSpec, str]]:
        """(shard, what) for uncommitted shards with an index part or features bytes present,
        from one listing each of index/ and of the features objects."""
        if not shards:
            return
        parts = set(files.list_names(files.join(self.view.path, "index")))
        for shard in shards:
            if f"{shard.name}.parquet" in parts:
                yield shard, "index part"
            if self._has_features_object(shard) and self._has_values(shard):
                yield shard, "features"

    def _has_features_object(self, shard: ShardSpec) -> bool:
        if self.view.format_name != "zarr":
            return True  # one file holds every shard: read the rows to know
        if self._listed_objects is None:
            fs, inner = files.filesystem(files.join(self.array.path, "c"))
            fs.invalidate_cache(inner)
            prefix = files.filesystem(self.array.path)[1].rstrip("/") + "/"
            try:
                found = fs.find(inner)
            except FileNotFoundError:
                found = []
            self._listed_objects = {path[len(prefix) :] for path in found}
        return self.array.shard_key(shard.index) in self._listed_objects

    def _has_values(self, shard: ShardSpec) -> bool:
        try:
            values = self.array.read_range(shard.row_start, shard.row_stop)
        except (StoreError, ValueError):
            return True  # unreadable bytes are bytes present
        return not bool(np.isnan(values.astype(np.float32)).all())
