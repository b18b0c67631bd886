"""Verify a view's latest snapshot: its pieces, its Arrow index copy and its shards' markers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from features import files
from features.store.snapshot import Snapshot
from features.store.snapshot_reader import read_piece
from features.store.verify_report import VerificationReport
from features.store.verify_sources import ShardSources
from features.store.view import FeatureView
from schemas.errors import StoreError

# Rows compared at a time: a copy's batches and the Parquet piece's are read one at a time,
# so the check holds a few thousand rows of each, not both whole indexes (AVA: 2 x 18 MB).
COMPARED_ROWS = 8192


def check_snapshot_index(sources: ShardSources, report: VerificationReport) -> Snapshot | None:
    """The latest snapshot's plan and index pieces: readable, the index's row count, and its
    Arrow copy equal to it. Run before the shards' checks, so the piece's bytes are dropped
    before those hold their decoded shards.

    Returns:
        The snapshot whose markers check_snapshot_markers compares, or None (none, or its
        pieces are unreadable: already reported).
    """
    view = sources.view
    try:
        read = view.snapshot_read()
    except StoreError as error:
        report.problems.append(str(error))
        return None
    if read is None:
        report.notes.append("no snapshot yet: run python -m features.compact to speed up reads")
        return None
    snapshot = read.snapshot
    try:
        read_piece(files.join(view.path, snapshot.plan), "plan piece of snapshot")
        indexed = sources.index_piece(snapshot.index)
    except StoreError as error:
        report.problems.append(str(error))
        return None
    if indexed.metadata.num_rows != snapshot.index_rows:
        report.problems.append(f"snapshot {snapshot.snapshot}: index piece row count differs")
    _check_arrow_copy(view, snapshot.snapshot, snapshot.index_arrow, indexed, report)
    sources.drop_pieces()
    return snapshot


def check_snapshot_markers(
    sources: ShardSources,
    snapshot: Snapshot,
    marker_digests: Mapping[int, str],
    report: VerificationReport,
) -> None:
    """Every shard the snapshot commits has the marker whose digest the snapshot recorded."""
    view = sources.view
    try:
        shards = read_piece(files.join(view.path, snapshot.shards), "shards piece of snapshot")
    except StoreError as error:
        report.problems.append(str(error))
        return
    recorded = dict(
        zip(
            shards.column("shard").to_pylist(),
            shards.column("marker_sha256").to_pylist(),
            strict=True,
        )
    )
    for shard in view.shards():
        if not snapshot.is_committed(shard.index):
            continue
        if shard.index not in marker_digests:
            report.problems.append(
                f"snapshot {snapshot.snapshot} commits shard {shard.index} but "
                f"{view.marker_path(shard)} is missing or invalid"
            )
            continue
        if marker_digests[shard.index] != recorded.get(shard.index):
            report.problems.append(
                f"{view.marker_path(shard)}: differs from the digest snapshot "
                f"{snapshot.snapshot} recorded"
            )


def _check_arrow_copy(
    view: FeatureView,
    number: int,
    relative: str,
    indexed: pq.ParquetFile,
    report: VerificationReport,
) -> None:
    """Format-2 snapshots keep an Arrow IPC copy of the index for large lookups: it must exist
    and hold exactly the Parquet index's rows (readers trust either)."""
    if not relative:
        return
    path = files.join(view.path, relative)
    try:
        with _open_arrow_copy(path) as copy:
            copied = (copy.get_batch(position) for position in range(copy.num_record_batches))
            parquet = _cast_batches(indexed.iter_batches(COMPARED_ROWS), copy.schema)
            same = same_rows(copied, parquet)
    except FileNotFoundError:
        report.problems.append(f"{path}: Arrow index copy of snapshot {number} is missing")
        return
    except pa.ArrowInvalid as error:
        report.problems.append(f"{path}: unreadable Arrow index copy ({error})")
        return
    if not same:
        report.problems.append(
            f"{path}: Arrow index copy of snapshot {number} differs from its Parquet index"
        )


@contextlib.contextmanager
def _open_arrow_copy(path: str) -> Iterator[pa.ipc.RecordBatchFileReader]:
    """The copy's reader: a local file is read a batch at a time (not memory-mapped, whose
    touched pages would all count in the process); an object is read whole in one request."""
    if files.is_local(path):
        with pa.OSFile(files.native(path)) as source:
            yield pa.ipc.open_file(source)
    else:
        yield pa.ipc.open_file(pa.BufferReader(files.read_bytes(path)))


def _cast_batches(batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Batches in the copy's schema where only the types' spelling differs (a cast that fails
    leaves the batch as it is, and the comparison reports the difference)."""
    for batch in batches:
        if batch.schema.equals(schema):
            yield batch
            continue
        try:
            yield batch.cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            yield batch


def same_rows(left: Iterable[pa.RecordBatch], right: Iterable[pa.RecordBatch]) -> bool:
    """Whether two streams of record batches hold the same rows (and schema), whatever their
    batch boundaries, holding one batch of each at a time.

    Args:
        left, right: the two streams.

    Returns:
        True when both end together and every row and column type is equal.
    """
    left_batches, right_batches = iter(left), iter(right)
    left_rest = _next_rows(left_batches, None)
    right_rest = _next_rows(right_batches, None)
    while left_rest is not None and right_rest is not None:
        size = min(left_rest.num_rows, right_rest.num_rows)
        if not left_rest.slice(0, size).equals(right_rest.slice(0, size)):
            return False
        left_rest = _next_rows(left_batches, left_rest.slice(size))
        right_rest = _next_rows(right_batches, right_rest.slice(size))
    return left_rest is None and right_rest is None


def _next_rows(
    batches: Iterator[pa.RecordBatch], rest: pa.RecordBatch | None
) -> pa.RecordBatch | None:
    """rest when it still has rows, else the next batch with rows; None at the end."""
    while rest is None or rest.num_rows == 0:
        rest = next(batches, None)
        if rest is None:
            return None
    return rest
