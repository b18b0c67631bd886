"""Shards and their commit markers: the unit of work, of commit and of integrity checks."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pyarrow as pa

from features import files
from schemas.errors import StoreError
from schemas.tables import FEATURE_INDEX_SCHEMA

COMMITS_DIR = "commits"
INDEX_DIR = "index"


@dataclass(frozen=True)
class ShardSpec:
    """A contiguous, shard-aligned row range: the unit of work and of commit."""

    index: int
    row_start: int
    row_stop: int

    @property
    def rows(self) -> int:
        """Number of rows in the shard."""
        return self.row_stop - self.row_start

    @property
    def name(self) -> str:
        """File stem used for the shard's index part and commit marker."""
        return shard_name(self.index)


def shard_name(index: int) -> str:
    """File stem of shard `index` (shard-000123)."""
    return f"shard-{index:06d}"


def marker_path(view_path: str, index: int) -> str:
    """Commit marker of shard `index` of the view at view_path."""
    return files.join(view_path, COMMITS_DIR, f"{shard_name(index)}.json")


def index_part_path(view_path: str, index: int) -> str:
    """Parquet index part of shard `index` of the view at view_path."""
    return files.join(view_path, INDEX_DIR, f"{shard_name(index)}.parquet")


@dataclass(frozen=True)
class CommitMarker:
    """Proof that a shard's features and index part are completely written.

    Attributes:
        features_file: the stored object holding the shard's features, relative to the view
            (a Zarr shard object or an HDF5 shard file); "" in markers written before checksums.
        features_sha256: sha256 of that object's bytes as stored; "" when the object is absent
            (older Zarr views stored nothing for an all-NaN shard); None in markers written before checksums.
        lease_token: the fencing token of the lease holding that committed the shard ("" for
            writers outside a lease and markers written before fencing).
        store_retries: object-store retries and unsettled writes the worker process counted
            while it ran this shard, by kind (features.retries.COUNTERS).
        index_rows: the shard's index rows as columns (FEATURE_INDEX_SCHEMA names), the same
            rows as its index part, so that publishing a snapshot reads one object per new
            shard; None in markers written before.
    """

    shard: int
    row_start: int
    row_stop: int
    image_ids_sha256: str
    spec_sha256: str
    status_counts: Mapping[str, int]
    run_id: str
    images_forwarded: int
    seconds: float
    device: str = ""
    committed_at: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )
    features_file: str = ""
    features_sha256: str | None = None
    lease_token: str = ""
    store_retries: Mapping[str, int] = field(default_factory=dict)
    index_rows: Mapping[str, Sequence[Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        data = asdict(self)
        data["status_counts"] = dict(self.status_counts)
        data["store_retries"] = dict(self.store_retries)
        if self.index_rows is None:
            del data["index_rows"]  # markers without rows keep the bytes they always had
        return data

    def to_bytes(self) -> bytes:
        """The marker file's bytes (their sha256 is the marker digest snapshots record): the
        fields indented, one compact line for the index rows."""
        data = self.to_dict()
        rows = data.pop("index_rows", None)
        text = json.dumps(data, indent=2)
        if rows is not None:
            compact = json.dumps(rows, separators=(",", ":"))
            text = text[: text.rindex("}")].rstrip() + f',\n  "index_rows": {compact}\n}}'
        return text.encode("utf-8")

    def index_table(self) -> pa.Table | None:
        """The index rows the marker carries (FEATURE_INDEX_SCHEMA), or None.

        Raises:
            StoreError: rows that do not fit the schema or the marker's row range.
        """
        if self.index_rows is None:
            return None
        try:
            table = pa.Table.from_pydict(dict(self.index_rows), schema=FEATURE_INDEX_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError) as error:
            raise StoreError(
                f"shard {self.shard}: marker index rows are invalid ({error})"
            ) from error
        if table.num_rows != self.row_stop - self.row_start:
            raise StoreError(
                f"shard {self.shard}: marker carries {table.num_rows} index rows, not "
                f"{self.row_stop - self.row_start}"
            )
        return table

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CommitMarker:
        """Inverse of to_dict (unknown keys are refused)."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(f"unknown marker field(s) {unknown}")
        return cls(**dict(data))


def index_columns(index: pa.Table) -> dict[str, list[Any]]:
    """A shard's index rows in the form a marker carries them (index_rows)."""
    return index.cast(FEATURE_INDEX_SCHEMA).to_pydict()


def image_ids_digest(image_ids: Sequence[str]) -> str:
    """Digest of an ordered list of image ids (ties a marker to the rows it covers)."""
    return hashlib.sha256("\n".join(image_ids).encode("utf-8")).hexdigest()


def read_marker_bytes(path: str) -> tuple[CommitMarker, bytes]:
    """Parse a marker file; returns the marker and its raw bytes.

    Raises:
        FileNotFoundError: no marker.
        StoreError: an unreadable marker (the message names the file).
    """
    data = files.read_bytes(path)
    try:
        return CommitMarker.from_dict(json.loads(data)), data
    except (ValueError, TypeError) as error:
        raise StoreError(f"{path}: unreadable marker ({error})") from error


def check_marker(
    path: str, shard: ShardSpec, marker: CommitMarker, image_ids: Sequence[str], spec_sha256: str
) -> None:
    """Check a marker against the shard's planned rows, image ids and the view's spec digest.

    Raises:
        StoreError: any disagreement, naming the marker file.
    """
    if (marker.row_start, marker.row_stop) != (shard.row_start, shard.row_stop):
        raise StoreError(
            f"{path}: rows {marker.row_start}:{marker.row_stop}"
            f" do not match the shard {shard.row_start}:{shard.row_stop}"
        )
    if marker.image_ids_sha256 != image_ids_digest(image_ids):
        raise StoreError(f"{path}: image-id digest does not match the rows")
    if marker.spec_sha256 != spec_sha256:
        raise StoreError(f"{path}: written under a different spec")
