"""Immutable per-view snapshots (a small table log) and the pointer naming the latest one.

Layout under a view:
    _latest_snapshot.json                  {"snapshot": N}: replaced atomically on publish
    snapshots/00000N.json                  the snapshot, created once (exclusive create)
    snapshots/00000N-<tag>.index.parquet   committed index rows sorted by image_id
    snapshots/00000N-<tag>.plan.parquet    image_id, row of allocated rows NOT committed in N
    snapshots/00000N-<tag>.shards.parquet  shard, rows, marker sha256, features checksum
    snapshots/00000N-<tag>.index.arrow     (format 2) the index piece again, uncompressed Arrow IPC
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from features import files
from schemas.errors import StoreError

POINTER_FILE = "_latest_snapshot.json"
SNAPSHOTS_DIR = "snapshots"
# 2: adds index_arrow (format 1 snapshots, without it, are read through their Parquet index).
SNAPSHOT_FORMAT_VERSION = 2


@dataclass(frozen=True)
class Snapshot:
    """One published state of a view.

    Attributes:
        snapshot: its number (1, 2, ...; parent + 1 normally).
        parent: the snapshot it was built from (None for the first).
        rows: allocated rows of the view when it was taken (view.json "rows").
        shard_rows: rows per shard.
        spec_sha256: the view's spec digest (markers must carry the same).
        committed: committed shard indexes as [start, stop) ranges.
        shard_count: shards planned over `rows` (committed or not).
        index, plan, shards: file names (relative to the view) of its Parquet pieces.
        index_rows: rows in the index piece.
        sizes: bytes of each piece by name (ranged reads need no HEAD request first).
        removed_sha256: digest of removed.json's ids when it was taken.
        created_at, reason: when and why (run id or "compact").
        index_arrow: the index piece as an uncompressed Arrow IPC file in record batches
            (row-addressable when memory-mapped: large id sets read no Parquet); "" in format 1.
    """

    snapshot: int
    parent: int | None
    rows: int
    shard_rows: int
    spec_sha256: str
    committed: tuple[tuple[int, int], ...]
    shard_count: int
    index: str
    plan: str
    shards: str
    index_rows: int
    removed_sha256: str
    created_at: str
    reason: str
    sizes: dict[str, int] = field(default_factory=dict)
    index_arrow: str = ""
    format_version: int = SNAPSHOT_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        data = asdict(self)
        data["committed"] = [list(pair) for pair in self.committed]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        """Inverse of to_dict."""
        return cls(**{**data, "committed": tuple(tuple(pair) for pair in data["committed"])})

    def is_committed(self, shard: int) -> bool:
        """Whether shard `shard` was committed in this snapshot."""
        return any(start <= shard < stop for start, stop in self.committed)

    def committed_shards(self) -> list[int]:
        """Committed shard indexes, ascending."""
        return [shard for start, stop in self.committed for shard in range(start, stop)]


def shard_ranges(shards: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Sorted shard indexes as [start, stop) ranges (a fully committed view is one range)."""
    ranges: list[list[int]] = []
    for shard in sorted(set(shards)):
        if ranges and ranges[-1][1] == shard:
            ranges[-1][1] = shard + 1
        else:
            ranges.append([shard, shard + 1])
    return tuple((start, stop) for start, stop in ranges)


def snapshot_path(view_path: str, number: int) -> str:
    """File of snapshot `number`."""
    return files.join(view_path, SNAPSHOTS_DIR, f"{number:06d}.json")


def pointer_path(view_path: str) -> str:
    """The latest-snapshot pointer."""
    return files.join(view_path, POINTER_FILE)


def read_pointer(view_path: str) -> Snapshot | None:
    """The latest snapshot, from the pointer (which carries a copy of its record), or None for
    a view without snapshots (older layout).

    Raises:
        StoreError: an unreadable pointer, or one naming a missing snapshot (the message names
            the file).
    """
    return read_pointer_with_bytes(view_path)[0]


def read_pointer_with_bytes(view_path: str) -> tuple[Snapshot | None, bytes | None]:
    """read_pointer, plus the pointer's bytes (a publisher swaps against exactly these)."""
    path = pointer_path(view_path)
    try:
        data = files.read_bytes(path)
    except FileNotFoundError:
        return None, None
    try:
        pointer = json.loads(data)
        number = pointer["snapshot"]
        if not isinstance(number, int) or number < 1:
            raise ValueError(f"snapshot {number!r} is not a positive integer")
        record = pointer.get("record")
        if record is not None and record.get("snapshot") != number:
            raise ValueError(f"its record is of snapshot {record.get('snapshot')}, not {number}")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise StoreError(f"{path}: unreadable snapshot pointer ({error})") from error
    if record is None:
        return read_snapshot(view_path, number, f"named by {path}"), data
    return _parse(path, record), data


def _parse(path: str, record: Any) -> Snapshot:
    try:
        snapshot = Snapshot.from_dict(record)
    except (ValueError, KeyError, TypeError) as error:
        raise StoreError(f"{path}: unreadable snapshot ({error})") from error
    if snapshot.format_version > SNAPSHOT_FORMAT_VERSION:
        raise StoreError(
            f"{path}: snapshot format {snapshot.format_version} is newer than this package "
            f"reads ({SNAPSHOT_FORMAT_VERSION}); upgrade the package"
        )
    return snapshot


def read_snapshot(view_path: str, number: int, named_by: str = "") -> Snapshot:
    """Load one snapshot.

    Args:
        view_path: the view.
        number: snapshot number.
        named_by: who asked for it, for the error message (the pointer, as_of, ...).

    Raises:
        StoreError: no such snapshot, or it is unreadable; the message names the file.
    """
    path = snapshot_path(view_path, number)
    try:
        data = files.read_bytes(path)
    except FileNotFoundError:
        known = list_snapshots(view_path)
        raise StoreError(
            f"{path}: snapshot {number} does not exist{f' ({named_by})' if named_by else ''}; "
            f"snapshots of this view: {known or 'none'}"
        ) from None
    try:
        record = json.loads(data)
    except ValueError as error:
        raise StoreError(f"{path}: unreadable snapshot ({error})") from error
    return _parse(path, record)


def list_snapshots(view_path: str) -> list[int]:
    """Numbers of the published snapshot files, ascending (one listing; writers and CLIs only)."""
    names = files.list_names(files.join(view_path, SNAPSHOTS_DIR))
    stems = [name.removesuffix(".json") for name in names if name.endswith(".json")]
    return sorted(int(stem) for stem in stems if stem.isdigit())


def publish_pointer(view_path: str, snapshot: Snapshot, built_on: bytes | None) -> None:
    """Point readers at a snapshot: a compare-and-swap against the pointer it was built on.

    The pointer carries a copy of the record, so readers of the latest state need one GET,
    not two; the snapshot file stays the immutable original time travel reads. The swap is
    a conditional request on S3/GCS, so a publisher whose base is no longer the latest (a
    stale writer, paused while another run published) fails instead of rolling the pointer
    back; the pointer's number only ever grows.

    Args:
        view_path: the view.
        snapshot: the new snapshot.
        built_on: the pointer's bytes when the snapshot's parent was read (None: no pointer).

    Raises:
        StoreError: the pointer moved on since (names the snapshot now in force).
    """
    path = pointer_path(view_path)
    parent = snapshot.parent or 0
    if snapshot.snapshot <= parent:
        raise StoreError(f"{path}: snapshot {snapshot.snapshot} does not follow {parent}")
    pointer = json.dumps({"snapshot": snapshot.snapshot, "record": snapshot.to_dict()}).encode()
    if files.replace_if_unchanged(path, built_on, pointer):
        return
    current = read_pointer(view_path)
    now = f"snapshot {current.snapshot}" if current is not None else "no snapshot"
    raise StoreError(
        f"{path}: not published: snapshot {snapshot.snapshot} was built on snapshot "
        f"{parent or 'none'}, but the pointer has moved on to {now} (another writer published "
        "meanwhile); the pointer is never rolled back. Re-run to publish on the newer snapshot"
    )


def write_snapshot(view_path: str, snapshot: Snapshot) -> bool:
    """Create the snapshot file exclusively; False if that number was already taken."""
    data = json.dumps(snapshot.to_dict(), indent=1).encode("utf-8")
    return files.create_exclusive(snapshot_path(view_path, snapshot.snapshot), data)
