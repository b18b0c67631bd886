"""Publish a view's snapshot: compact committed index parts into one sorted, prunable piece."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import logging
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features import files, preflight
from features.cli import add_common_arguments, configure_logging, run_cli
from features.store.fanout import iterate_in_order
from features.store.lease import ViewLease
from features.store.root import STORE_MARKER
from features.store.shards import CommitMarker, ShardSpec, image_ids_digest
from features.store.snapshot import (
    SNAPSHOTS_DIR,
    Snapshot,
    list_snapshots,
    publish_pointer,
    read_pointer_with_bytes,
    shard_ranges,
    write_snapshot,
)
from features.store.snapshot_reader import (
    INDEX_WITH_REMOVED,
    PLAN_SCHEMA,
    read_piece,
    removed_flags,
)
from features.store.view import FeatureView
from schemas.errors import StoreError
from schemas.tables import FEATURE_INDEX_SCHEMA

LOGGER = logging.getLogger(__name__)
# Rows per Parquet row group of the index and plan pieces: a point lookup decodes one group.
ROW_GROUP_ROWS = 8192
# Shards' index rows merged into one table while a snapshot reads its new markers.
PARTS_PER_TABLE = 256
SHARDS_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.int64()),
        pa.field("row_start", pa.int64()),
        pa.field("row_stop", pa.int64()),
        pa.field("marker_sha256", pa.string()),
        pa.field("features_file", pa.string()),
        pa.field("features_sha256", pa.string()),
    ]
)


def _write_piece(path: str, table: pa.Table) -> int:
    """A snapshot piece: LZ4 Parquet in row groups of ROW_GROUP_ROWS, with min/max statistics
    on image_id only (they prune row groups; others would only grow the footer). LZ4 decodes
    about twice as fast as zstd here, and a 1k-id lookup decodes most row groups. Returns its
    size in bytes."""
    buffer = io.BytesIO()
    pq.write_table(
        table,
        buffer,
        compression="lz4",
        row_group_size=ROW_GROUP_ROWS,
        write_statistics=["image_id"],
    )
    data = buffer.getbuffer()  # a view of the bytes written, not a copy
    files.atomic_write_bytes(path, data)
    return len(data)


def _write_arrow_piece(path: str, table: pa.Table) -> int:
    """The index piece again as an uncompressed Arrow IPC file in record batches of
    ROW_GROUP_ROWS. Memory-mapped it is read without decoding anything, so a lookup of many
    ids spread over the index (which would decode every Parquet row group) only probes the
    image_id column and takes the matched rows. Returns its size in bytes."""
    # Sized first, then written into a buffer of exactly that size: a growing output stream
    # would double its capacity up to twice the piece (tens of MB at AVA's 255k rows).
    counter = pa.MockOutputStream()
    _write_arrow_file(counter, table)
    data = pa.allocate_buffer(counter.size())
    _write_arrow_file(pa.FixedSizeBufferWriter(data), table)
    files.atomic_write_bytes(path, data)  # through the buffer protocol, not copied
    return data.size


def _write_arrow_file(sink: pa.NativeFile, table: pa.Table) -> None:
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=ROW_GROUP_ROWS)


def _new_shards(
    view: FeatureView, done: set[int], markers: dict[int, CommitMarker]
) -> tuple[list[pa.Table], list[dict[str, object]]]:
    """Index rows and shard records of shards committed but not in the previous snapshot;
    their markers (without their rows) go into `markers` (the run summary reads them there).

    The rows come back as a few tables of up to PARTS_PER_TABLE shards each: 4,000 tables of
    64 rows would cost more in per-table objects than their rows."""
    tables: list[pa.Table] = []
    waiting: list[pa.Table] = []
    records = []
    new = [shard for shard in view.listed_shards() if shard.index not in done]
    view.allocation_keys, view.spec  # noqa: B018 (loaded once here, not by each reading thread)

    def read(shard: ShardSpec) -> tuple[CommitMarker, bytes, pa.Table]:
        marker, data = view.read_marker_with_bytes(shard)
        return marker, data, _shard_index(view, shard, marker).cast(FEATURE_INDEX_SCHEMA)

    for shard, (marker, data, part) in zip(new, iterate_in_order(read, new), strict=True):
        markers[shard.index] = replace(marker, index_rows=None)  # its rows are in `tables`
        waiting.append(part)
        if len(waiting) == PARTS_PER_TABLE:
            tables.append(pa.concat_tables(waiting).combine_chunks())
            waiting = []
        records.append(
            {
                "shard": shard.index,
                "row_start": shard.row_start,
                "row_stop": shard.row_stop,
                "marker_sha256": hashlib.sha256(data).hexdigest(),
                "features_file": marker.features_file,
                "features_sha256": marker.features_sha256,
            }
        )
    if waiting:
        tables.append(pa.concat_tables(waiting).combine_chunks())
    return tables, records


def _shard_index(view: FeatureView, shard: ShardSpec, marker: CommitMarker) -> pa.Table:
    """A committed shard's index rows: those its marker carries, else its index part's."""
    carried = marker.index_table()
    if carried is not None:
        return carried
    try:
        return files.read_parquet(view.index_part_path(shard)).cast(FEATURE_INDEX_SCHEMA)
    except FileNotFoundError:
        raise StoreError(
            f"{view.index_part_path(shard)}: missing, but {view.marker_path(shard)} commits it"
        ) from None


def _plan(view: FeatureView, committed: set[int]) -> pa.Table:
    """image_id, row of allocated rows whose shard is not committed, sorted by image_id."""
    allocation = view.allocation_keys.select(["image_id", "row"]).cast(PLAN_SCHEMA)
    shard_of_row = allocation.column("row").to_numpy() // view.shard_rows
    pending = ~np.isin(shard_of_row, np.fromiter(committed, dtype=np.int64, count=len(committed)))
    plan = allocation.filter(pa.array(pending))
    return plan.take(pc.sort_indices(plan.column("image_id")))


def _merged_pieces(
    view: FeatureView,
    previous: Snapshot | None,
    parts: list[pa.Table],
    records: list[dict[str, object]],
    removed: set[str],
) -> tuple[pa.Table, pa.Table]:
    """The new index piece (previous one + new parts, sorted by image_id, current removed
    flags) and shards piece (previous records + new ones)."""
    kept, old_shards = [], []
    if previous is not None:
        old_index = read_piece(files.join(view.path, previous.index), "index piece")
        kept = [old_index.drop_columns(["removed"])]
        shards = read_piece(files.join(view.path, previous.shards), "shards piece")
        old_shards = [shards.cast(SHARDS_SCHEMA)]
    index = pa.concat_tables(
        [part.cast(FEATURE_INDEX_SCHEMA) for part in [*kept, *parts]]
        or [FEATURE_INDEX_SCHEMA.empty_table()]
    )
    index = index.take(pc.sort_indices(index.column("image_id")))
    flags = removed_flags(index.column("image_id"), removed)
    index = index.append_column(pa.field("removed", pa.bool_()), flags).cast(INDEX_WITH_REMOVED)
    shards_table = pa.concat_tables([*old_shards, pa.Table.from_pylist(records, SHARDS_SCHEMA)])
    return index, shards_table


def publish_snapshot(view: FeatureView, reason: str, lease: ViewLease | None = None) -> int:
    """Publish a snapshot of the view's committed shards; returns its number (see publish_with_markers)."""
    return publish_with_markers(view, reason, lease).snapshot


@dataclass(frozen=True)
class Publication:
    """What publishing read and wrote: the snapshot in force, and the commit markers of the
    shards it added (each read once, validated; the run summary needs no second read)."""

    snapshot: int
    new_markers: dict[int, CommitMarker]


def publish_with_markers(
    view: FeatureView, reason: str, lease: ViewLease | None = None
) -> Publication:
    """Publish a snapshot of the view's committed shards.

    Incremental: the previous snapshot's pieces are reused and only markers of shards
    committed since are read. Pieces are written first, then the snapshot file (exclusive
    create), then the pointer; a crash at any step leaves the previous snapshot in force and
    loses nothing (committed shards keep their markers). The caller holds the view's lease;
    given it, the lease is checked before the pieces, the snapshot file and the pointer.

    Raises:
        LeaseLostError: the lease is no longer this run's.
        StoreError: a marker or index part is invalid, or another publisher took the number
            or moved the pointer on.
    """
    _ensure_held(lease)
    previous, built_on = read_pointer_with_bytes(view.path)
    done = set(previous.committed_shards()) if previous else set()
    markers: dict[int, CommitMarker] = {}
    parts, records = _new_shards(view, done, markers)
    removed = view.removed_image_ids()
    removed_digest = image_ids_digest(sorted(removed))
    rows = int(view.meta["rows"])
    if (
        previous
        and not parts
        and (previous.rows, previous.removed_sha256) == (rows, removed_digest)
    ):
        return Publication(previous.snapshot, markers)
    index, shards_table = _merged_pieces(view, previous, parts, records, removed)
    committed = done | set(shards_table.column("shard").to_pylist())
    number = max([0, *list_snapshots(view.path)]) + 1
    tag = f"{number:06d}-{uuid.uuid4().hex[:8]}"
    names = {
        piece: f"{SNAPSHOTS_DIR}/{tag}.{piece}.parquet" for piece in ("index", "plan", "shards")
    }
    pieces = {"index": index, "plan": _plan(view, committed), "shards": shards_table}
    sizes = {name: _write_piece(files.join(view.path, names[name]), pieces[name]) for name in names}
    arrow_name = f"{SNAPSHOTS_DIR}/{tag}.index.arrow"
    sizes["index_arrow"] = _write_arrow_piece(files.join(view.path, arrow_name), index)
    snapshot = Snapshot(
        snapshot=number,
        parent=previous.snapshot if previous else None,
        rows=rows,
        shard_rows=view.shard_rows,
        spec_sha256=view.spec.identity_sha256(),
        committed=shard_ranges(sorted(committed)),
        shard_count=len(view.shards()),
        index=names["index"],
        plan=names["plan"],
        shards=names["shards"],
        index_arrow=arrow_name,
        index_rows=index.num_rows,
        removed_sha256=removed_digest,
        created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        reason=reason,
        sizes=sizes,
    )
    _ensure_held(lease)
    if not write_snapshot(view.path, snapshot):
        raise StoreError(f"{view.path}: snapshot {number} was published by another writer")
    _ensure_held(lease)
    publish_pointer(view.path, snapshot, built_on)
    LOGGER.info(
        "view %s: snapshot %d (%d shards committed, %d new; %d index rows)",
        view.name,
        number,
        len(committed),
        len(records),
        index.num_rows,
    )
    return Publication(number, markers)


def _ensure_held(lease: ViewLease | None) -> None:
    if lease is not None:
        lease.ensure_held()


def compact_view(view: FeatureView, owner: str) -> int:
    """Publish a snapshot under the view's writer lease (the same lease extraction holds).

    Raises:
        StoreError: another writer holds the lease, or see publish_snapshot.
    """
    lease = ViewLease(view.path, owner)
    lease.acquire()
    try:
        return publish_snapshot(view, "compact", lease)
    finally:
        lease.release()


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the compaction CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m features.compact",
        description="Publish a snapshot of each view (compacted index; upgrades older views).",
    )
    parser.add_argument("--store", required=True, help="store root (path or URL)")
    parser.add_argument(
        "--view", action="append", help="view to compact (repeatable; default: all)"
    )
    add_common_arguments(parser)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    preflight.check_input_folder(args.store, "--store")
    if not files.exists(files.join(args.store, STORE_MARKER)):
        raise StoreError(f"{args.store}: not a feature store (no {STORE_MARKER})")
    # Compaction publishes snapshots and takes leases in the store: it must be writable.
    preflight.check_writable_folder(args.store, "--store")
    names = args.view or [
        name
        for name in files.list_names(args.store)
        if files.exists(files.join(args.store, name, "view.json"))
    ]
    owner = f"compact-{uuid.uuid4().hex[:8]}"
    for name in names:
        view = FeatureView(args.store, name)
        if not view.exists():
            raise StoreError(f"no view {name!r} in {args.store}")
        number = compact_view(view, owner)
        print(f"{name}: snapshot {number}")
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 job error, 2 bad argument)."""
    return run_cli(_main, argv)


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
