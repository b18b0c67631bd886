"""One feature view on disk: spec, row allocation, features array, index parts, commit markers."""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from features import files
from features.store.append import reconcile_manifest
from features.store.backends import (
    DEFAULT_COMPRESSION,
    ArrayLayout,
    FeatureArray,
    check_compression,
)
from features.store.formats import BACKENDS, backend_for
from features.store.lease import LeaseFence
from features.store.shards import (
    CommitMarker,
    ShardSpec,
    check_marker,
    image_ids_digest,
    index_part_path,
    marker_path,
    read_marker_bytes,
)
from features.store.view_commits import ViewCommits
from features.store.view_reads import ViewReads
from schemas.errors import SpecMismatchError, StoreError
from schemas.tables import ROW_ALLOCATION_SCHEMA
from schemas.view_spec import FeatureViewSpec

LOGGER = logging.getLogger(__name__)
VIEW_FORMAT_VERSION = 1
# Files create() writes besides the features array; an interrupted create() leaves only these.
CREATION_FILES = ("rows.parquet", "spec.json")


__all__ = ["CommitMarker", "FeatureView", "ShardSpec", "image_ids_digest"]


class FeatureView(ViewCommits, ViewReads):
    """A view of one store: create or open it, write shards, and read committed rows."""

    def __init__(self, store_root: str, name: str) -> None:
        self.store_root = store_root
        self.name = name
        self.path = files.join(store_root, name)
        self._meta: dict[str, Any] | None = None
        self._spec: FeatureViewSpec | None = None
        self._allocation: pa.Table | None = None
        self._allocation_keys: pa.Table | None = None
        self._allocation_rows: np.ndarray | None = None
        self._shard_writer: FeatureArray | None = None
        # Set by a lease holder's writers: every shard write and marker is checked against it.
        self.fence: LeaseFence | None = None
        self.bytes_written = 0  # stored bytes of the shards this object committed (metrics)
        # What the last committed_index() read: {"snapshot": N or None, "shards_after": [...]}.
        self.last_read: dict[str, Any] = {}

    # ---- paths -------------------------------------------------------------------------
    def _file(self, *parts: str) -> str:
        return files.join(self.path, *parts)

    def index_part_path(self, shard: ShardSpec) -> str:
        """Parquet index part of a shard."""
        return index_part_path(self.path, shard.index)

    def marker_path(self, shard: ShardSpec) -> str:
        """Commit marker of a shard."""
        return marker_path(self.path, shard.index)

    # ---- lifecycle ---------------------------------------------------------------------
    def exists(self) -> bool:
        """A view exists once its view.json is written (the last step of creation)."""
        return files.exists(self._file("view.json"))

    def create(
        self,
        spec: FeatureViewSpec,
        allocation: pa.Table,
        shard_rows: int,
        format_name: str,
        compression: str | None = None,
    ) -> None:
        """Create the view: features array, row allocation, spec, then view.json last.

        Call only while holding the view's lease. A crash before view.json leaves the files
        this method writes, and only those are cleared by the next create().

        Args:
            spec, allocation, shard_rows, format_name: the view's spec, rows and layout.
            compression: a key of COMPRESSIONS (None = DEFAULT_COMPRESSION).

        Raises:
            ConfigError: an unknown compression.
            StoreError: shard_rows < 1, an unknown format, or the directory holds a view or
                shards (then nothing is removed).
        """
        if shard_rows < 1:
            raise StoreError(f"shard_rows must be >= 1, got {shard_rows}")
        allocation = allocation.cast(ROW_ALLOCATION_SCHEMA)
        rows = allocation.column("row").to_numpy()
        total_rows = int(rows[-1]) + 1 if len(rows) else 0  # appended segments leave gaps
        backend = backend_for(format_name, self.path)
        layout = ArrayLayout(
            total_rows,
            len(spec.variants),
            spec.feature_shape,
            spec.storage_dtype,
            shard_rows,
            backend.written_compression(compression or DEFAULT_COMPRESSION),
        )
        self._clear_unfinished_creation()
        files.makedirs(self.path)
        backend.create(layout)
        files.atomic_write_parquet(self._file("rows.parquet"), allocation)
        files.atomic_write_text(self._file("spec.json"), spec.to_json())
        meta = {
            "format": format_name,
            "compression": layout.compression,
            "shard_rows": shard_rows,
            "rows": total_rows,
            "format_version": VIEW_FORMAT_VERSION,
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        files.atomic_write_text(self._file("view.json"), json.dumps(meta, indent=2))
        self.reset_cache()
        self._meta, self._spec, self._allocation = (
            meta,
            spec,
            allocation,
        )  # a writer opened before belongs to the old array
        LOGGER.info(
            "created view %s: %d rows, shards of %d, %s (%s)",
            self.path,
            allocation.num_rows,
            shard_rows,
            format_name,
            layout.compression,
        )

    def _clear_unfinished_creation(self) -> None:
        """Remove what an interrupted create() left: only the files creation itself writes.

        Raises:
            StoreError: the directory holds a finished view, index parts or commit markers.
        """
        leftovers = ["view.json"] if self.exists() else []
        leftovers += [name for name in ("index", "commits") if files.list_names(self._file(name))]
        if leftovers:
            raise StoreError(
                f"{self.path} already holds {', '.join(leftovers)}; refusing to create a view "
                "over it (nothing was removed)"
            )
        for name in CREATION_FILES:
            files.remove_file(self._file(name))
        for backend in BACKENDS.values():
            files.remove_tree(self._file(backend.directory_name))

    def ensure(
        self,
        spec: FeatureViewSpec,
        allocation: pa.Table,
        shard_rows: int | None,
        format_name: str,
        compression: str | None = None,
    ) -> None:
        """Create the view, or check that the existing one matches spec, rows and layout.

        Args:
            spec, allocation, format_name: the view's spec, rows and format.
            shard_rows, compression: for a new view (None = 64 rows, DEFAULT_COMPRESSION); an
                existing view keeps its own when they are None.

        Raises:
            ConfigError: an unknown compression.
            SpecMismatchError: the existing view was made with another spec.
            StoreError: its rows, shard size, format or compression differ from what is asked.
        """
        if compression is not None:
            check_compression(compression)
        if not self.exists():
            self.create(spec, allocation, shard_rows or 64, format_name, compression)
            return
        differences = self.spec.differences(spec)
        if differences:
            raise SpecMismatchError(
                f"view {self.name!r} at {self.path} was created with a different spec "
                f"(fields differ: {', '.join(differences)}); use a new view name"
            )
        if shard_rows is not None and shard_rows != self.shard_rows:
            raise StoreError(
                f"view {self.name!r} has shards of {self.shard_rows} rows; "
                f"--shard-size {shard_rows} does not match (omit it to reuse)"
            )
        if format_name != self.format_name:
            raise StoreError(
                f"view {self.name!r} is stored as {self.format_name}, not {format_name}"
            )
        if compression is not None and self.compression not in (
            compression,
            self.array.written_compression(compression),  # HDF5 records "lzf" for zstd/lz4
        ):
            raise StoreError(
                f"view {self.name!r} is stored with {self.compression} compression, not "
                f"{compression} (omit --compression to reuse it, or use a new view name)"
            )
        reconcile_manifest(self, allocation)

    # ---- metadata ----------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        """Contents of view.json."""
        if self._meta is None:
            try:  # one GET, no existence check first: readers count requests
                data = files.read_bytes(self._file("view.json"))
            except FileNotFoundError:
                raise StoreError(f"no view {self.name!r} in store {self.store_root}") from None
            self._meta = json.loads(data)
        return self._meta

    @property
    def spec(self) -> FeatureViewSpec:
        """The view's spec."""
        if self._spec is None:
            self._spec = FeatureViewSpec.from_json(
                files.read_bytes(self._file("spec.json")).decode()
            )
        return self._spec

    @property
    def allocation(self) -> pa.Table:
        """Row allocation table (row, image_id and manifest columns)."""
        if self._allocation is None:
            self._allocation = files.read_parquet(self._file("rows.parquet"))
        return self._allocation

    @property
    def allocation_keys(self) -> pa.Table:
        """The allocation's row and image_id columns: all that planning and checks per shard
        need, so they do not hold every row's uri and sha256 (about 150 bytes a row)."""
        if self._allocation is not None:
            return self._allocation.select(["row", "image_id"])
        if self._allocation_keys is None:
            path = self._file("rows.parquet")
            self._allocation_keys = files.read_parquet(path, columns=["row", "image_id"])
        return self._allocation_keys

    def _rows(self) -> np.ndarray:
        # Cached: a chunked column's to_numpy() copies, and every shard's lookup needs it.
        if self._allocation_rows is None:
            self._allocation_rows = self.allocation_keys.column("row").to_numpy()
        return self._allocation_rows

    @property
    def shard_rows(self) -> int:
        """Rows per shard."""
        return int(self.meta["shard_rows"])

    @property
    def format_name(self) -> str:
        """Storage format of the features array."""
        return str(self.meta["format"])

    @property
    def compression(self) -> str:
        """Compression of the features array (views older than the choice: read from it)."""
        if "compression" not in self.meta:
            return self.array.layout().compression
        return str(self.meta["compression"])

    @property
    def array(self) -> FeatureArray:
        """Features array backend (a fresh one per call: readers see the array as it is now)."""
        return backend_for(self.format_name, self.path)

    @property
    def shard_writer(self) -> FeatureArray:
        """The backend this process writes and checksums its shards through, kept across
        shards so its open handle is reused (only the lease holder writes, and nothing else
        resizes the array meanwhile); reset_cache() drops it."""
        if self._shard_writer is None:
            self._shard_writer = backend_for(self.format_name, self.path)
        return self._shard_writer

    def shards(self) -> list[ShardSpec]:
        """All shards of the view in row order.

        Shard k covers the allocated rows in [k * shard_rows, (k + 1) * shard_rows); appended
        segments start on a shard boundary, so each shard's rows are contiguous from its start.
        """
        rows, size = self._rows(), self.shard_rows
        indexes, counts = np.unique(rows // size, return_counts=True)
        return [
            ShardSpec(int(index), int(index) * size, int(index) * size + int(count))
            for index, count in zip(indexes, counts, strict=True)
        ]

    def shard_allocation(self, shard: ShardSpec) -> pa.Table:
        """Allocation rows (row, image_id, uri, sha256, …) of one shard, in row order."""
        start = int(np.searchsorted(self._rows(), shard.row_start))
        return self.allocation.slice(start, shard.rows)

    def shard_image_ids(self, shard: ShardSpec) -> list[str]:
        """Image ids of a shard's rows, in row order."""
        start = int(np.searchsorted(self._rows(), shard.row_start))
        column = self.allocation_keys.column("image_id").slice(start, shard.rows)
        return [str(value) for value in column.to_pylist()]

    def removed_image_ids(self) -> set[str]:
        """Ids whose images left the manifest; their rows stay, marked removed."""
        try:
            return set(json.loads(files.read_bytes(self._file("removed.json"))))
        except FileNotFoundError:
            return set()

    def reset_cache(self) -> None:
        """Forget cached metadata (after the view was changed on disk)."""
        self._meta = self._spec = self._allocation = None
        self._allocation_keys = self._allocation_rows = None
        self._shard_writer = None

    # ---- reading -----------------------------------------------------------------------
    def committed(self) -> dict[int, CommitMarker]:
        """Valid commit markers by shard index (reads every marker: writers and verify only).

        Raises:
            StoreError: a marker disagrees with the view's shards or row allocation.
        """
        markers, problems = self.inspect_markers()
        if problems:
            raise problems[0]
        return markers

    def is_committed(self, shard: ShardSpec) -> bool:
        """Whether one shard has a valid marker, reading only that marker (workers ask per shard).

        Raises:
            StoreError: the marker exists but disagrees with the shard, its rows or the spec.
        """
        try:  # one GET: an existence check first would cost a HEAD (and on S3 a LIST) more
            self.read_marker(shard)
        except FileNotFoundError:
            return False
        return True

    def inspect_markers(self) -> tuple[dict[int, CommitMarker], list[StoreError]]:
        """Valid markers by shard index, and one error per invalid marker (for verification)."""
        markers: dict[int, CommitMarker] = {}
        problems: list[StoreError] = []
        for shard in self.listed_shards():
            try:
                markers[shard.index] = self.read_marker(shard)
            except StoreError as error:
                problems.append(error)
        return markers, problems

    def listed_shards(self) -> list[ShardSpec]:
        """Shards of the plan that have a marker file (one listing of commits/)."""
        present = set(files.list_names(self._file("commits")))
        return [shard for shard in self.shards() if f"{shard.name}.json" in present]

    def read_marker(self, shard: ShardSpec) -> CommitMarker:
        """Read and validate a shard's marker; any defect is a StoreError naming the file."""
        marker, _ = self.read_marker_with_bytes(shard)
        return marker

    def read_marker_with_bytes(self, shard: ShardSpec) -> tuple[CommitMarker, bytes]:
        """read_marker, plus the marker file's bytes (snapshots record their digest)."""
        path = self.marker_path(shard)
        marker, data = read_marker_bytes(path)
        check_marker(path, shard, marker, self.shard_image_ids(shard), self.spec.identity_sha256())
        return marker, data

    def finalize(self) -> None:
        """Publish format-level reader metadata (e.g. HDF5's Virtual Dataset) for committed shards."""
        if not self.array.finalize_reads_shards:
            return
        markers = self.committed()
        self.array.finalize([shard for shard in self.shards() if shard.index in markers])

    def write_run_summary(self, run_id: str, summary: Mapping[str, Any]) -> str:
        """Append a run's summary to the view's run history; returns its path."""
        path = self._file("runs", f"{run_id}.json")
        files.atomic_write_text(path, json.dumps(dict(summary), indent=2, sort_keys=True))
        return path

    def run_history(self) -> list[dict[str, Any]]:
        """Summaries of earlier runs, oldest first."""
        names = [name for name in files.list_names(self._file("runs")) if name.endswith(".json")]
        return [json.loads(files.read_bytes(self._file("runs", name))) for name in names]
