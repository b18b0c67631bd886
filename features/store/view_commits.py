"""How a view commits shards: fenced writes, then an exclusively created marker."""

from __future__ import annotations

import abc
import json
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pyarrow as pa

from features import files
from features.store.backends import FeatureArray
from features.store.lease import LeaseFence
from features.store.shards import (
    CommitMarker,
    ShardSpec,
    image_ids_digest,
    index_columns,
    read_marker_bytes,
)
from schemas.errors import LeaseLostError, StoreError
from schemas.tables import FEATURE_INDEX_SCHEMA
from schemas.view_spec import FeatureViewSpec


class ViewCommits(abc.ABC):
    """Write methods of FeatureView (kept apart to keep each module small)."""

    # Set by a lease holder's writers: every shard write and marker is checked against it.
    fence: LeaseFence | None
    bytes_written: int  # stored bytes of the shards this object committed (metrics)

    @property
    @abc.abstractmethod
    def spec(self) -> FeatureViewSpec:
        """The view's spec."""

    @property
    @abc.abstractmethod
    def shard_writer(self) -> FeatureArray:
        """The array handle shard writes go through."""

    @abc.abstractmethod
    def marker_path(self, shard: ShardSpec) -> str:
        """Commit marker of a shard."""

    @abc.abstractmethod
    def index_part_path(self, shard: ShardSpec) -> str:
        """Parquet index part of a shard."""

    @abc.abstractmethod
    def shard_image_ids(self, shard: ShardSpec) -> list[str]:
        """Image ids of a shard's allocated rows, in row order."""

    def commit_shard(
        self,
        shard: ShardSpec,
        values: np.ndarray | None,
        index: pa.Table,
        run_id: str,
        images_forwarded: int | None = None,
        seconds: float = 0.0,
        device: str = "",
        store_retries: Mapping[str, int] | None = None,
    ) -> CommitMarker:
        """Write and commit one shard: features, index part, then a marker built here.

        The marker's digests come from the view itself (image ids of the allocated rows, the
        spec) and its status counts from the index, so callers never assemble one by hand.

        Args:
            shard: the shard.
            values: [rows, variants, *feature_shape] features, or None when the caller already
                wrote them to the array (bulk writers); the checksum covers what is stored.
            index: FEATURE_INDEX_SCHEMA rows of the shard, in row order.
            run_id, images_forwarded, seconds, device, store_retries: lineage recorded in
                the marker (images_forwarded defaults to the shard's rows).

        Returns:
            The marker written.

        Raises:
            StoreError: index ids or shapes that do not match the shard.
        """
        image_ids = self.shard_image_ids(shard)
        if index.column("image_id").to_pylist() != image_ids:
            raise StoreError(f"shard {shard.index}: index image ids differ from the row allocation")
        counts = Counter(index.column("status").to_pylist())
        marker = CommitMarker(
            shard=shard.index,
            row_start=shard.row_start,
            row_stop=shard.row_stop,
            image_ids_sha256=image_ids_digest(image_ids),
            spec_sha256=self.spec.identity_sha256(),
            status_counts=dict(sorted(counts.items())),
            run_id=run_id,
            images_forwarded=shard.rows if images_forwarded is None else images_forwarded,
            seconds=round(seconds, 3),
            device=device,
            lease_token=self.fence.token if self.fence is not None else "",
            store_retries=dict(store_retries or {}),
        )
        return self.write_shard(shard, values, index, marker)

    def write_shard(
        self, shard: ShardSpec, values: np.ndarray | None, index: pa.Table, marker: CommitMarker
    ) -> CommitMarker:
        """Claim a shard with its index part, then write its features, then its commit marker.

        The marker gets the checksum of the features as stored (hashed while they were
        written). Readers trust only the marker, and it is written last and atomically, so a
        crash at any point leaves either the previous committed state or the new one. Prefer
        commit_shard; this form copies an existing marker's lineage (format conversion).

        Returns:
            The marker written (with features_file and features_sha256 filled in), or the
            one this lease holding wrote before (a retried bundle: nothing is rewritten).

        Raises:
            StoreError: features or index of the wrong shape.
            LeaseLostError: the lease is lost, or another run committed the shard.
        """
        if index.num_rows != shard.rows:
            raise StoreError(
                f"shard {shard.index}: index has {index.num_rows} rows, not {shard.rows}"
            )
        expected = (shard.rows, len(self.spec.variants), *self.spec.feature_shape)
        if values is not None and values.shape != expected:
            raise StoreError(f"shard {shard.index}: features {values.shape} != expected {expected}")
        self._check_fence()
        part = _index_part_bytes(index, marker)
        existing = self._claim(shard, marker, part)
        if existing is not None:
            return existing
        if values is not None:
            dtype = self.spec.storage_dtype
            self.shard_writer.write_shard(shard.row_start, values.astype(dtype, copy=False))
        features_file, checksum, size = self.shard_writer.shard_checksum(shard.index)
        marker = replace(
            marker,
            features_file=features_file,
            features_sha256=checksum,
            index_rows=index_columns(index),
        )
        self._check_fence()
        written = self._create_marker(shard, marker)
        self.bytes_written += size + len(part) + len(written.to_bytes())
        return written

    def _claim(self, shard: ShardSpec, marker: CommitMarker, part: bytes) -> CommitMarker | None:
        """Write the shard's index part; a fenced writer creates it exclusively, which is its
        claim on the shard before any feature is written (one PUT, no read, when the shard is
        untouched: a run of thousands of shards pays no per-shard existence check).

        Returns:
            None to go on writing; the existing marker when this holding committed the shard.

        Raises:
            LeaseLostError: another holding committed the shard (its data is left untouched).
        """
        path = self.index_part_path(shard)
        if self.fence is None:
            files.atomic_write_bytes(path, part)
            return None
        if files.create_exclusive(path, part):
            return None
        # An index part was there first: a committed shard, or an attempt that never committed
        # (a crashed worker, a killed run) whose leftover this holder may replace.
        try:
            existing, _ = read_marker_bytes(self.marker_path(shard))
        except FileNotFoundError:
            files.atomic_write_bytes(path, part)
            return None
        if existing.lease_token == marker.lease_token:
            return existing
        raise LeaseLostError(
            f"{self.marker_path(shard)}: shard {shard.index} was committed by run "
            f"{existing.run_id} while run {marker.run_id} was extracting it; this run writes "
            "nothing more"
        )

    def _check_fence(self) -> None:
        if self.fence is not None:
            self.fence.check()

    def _create_marker(self, shard: ShardSpec, marker: CommitMarker) -> CommitMarker:
        """Create the marker exclusively: a committed shard is never re-committed, so a writer
        that lost its lease cannot replace another run's marker.

        Raises:
            LeaseLostError: another holding committed the shard meanwhile.
        """
        path = self.marker_path(shard)
        if files.create_exclusive(path, marker.to_bytes()):
            return marker
        existing, _ = read_marker_bytes(path)
        if marker.lease_token and existing.lease_token == marker.lease_token:
            return existing  # this holding committed it already (a retried bundle)
        if not marker.lease_token and not existing.lease_token:
            # Writers outside a lease (conversion, tools) replace their own shard's marker.
            files.atomic_write_bytes(path, marker.to_bytes())
            return marker
        raise LeaseLostError(
            f"{path}: shard {shard.index} was committed by run {existing.run_id} while run "
            f"{marker.run_id} was writing it; this run commits nothing more"
        )


def _index_part_bytes(index: pa.Table, marker: CommitMarker) -> bytes:
    """A shard's index part as Parquet, its bytes unique to this attempt (writer, run, nonce in
    the schema metadata), as an exclusive create on S3 and GCS requires to settle a lost answer."""
    table = index.cast(FEATURE_INDEX_SCHEMA)
    writer = {"lease_token": marker.lease_token, "run_id": marker.run_id, "nonce": uuid.uuid4().hex}
    table = table.replace_schema_metadata({b"mlsp_writer": json.dumps(writer).encode()})
    return files.parquet_bytes(table)
