"""How a view commits shards: fenced writes, then an exclusively created marker."""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pyarrow as pa

from features import files
from features.store.backends import FeatureArray
from features.store.lease import LeaseFence
from features.store.shards import CommitMarker, ShardSpec, image_ids_digest, read_marker_bytes
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
        """Write a shard's features, then its index part, then its commit marker.

        The marker gets the checksum of the features as stored (read back after the write).
        Readers trust only the marker, and it is written last and atomically, so a crash at any
        point leaves either the previous committed state or the new one. Prefer commit_shard;
        this form copies an existing marker's lineage (format conversion).

        Returns:
            The marker written (with features_file and features_sha256 filled in).
        """
        self._check_fence()
        existing = self._committed_elsewhere(shard, marker)
        if existing is not None:
            return existing
        if values is not None:
            expected = (shard.rows, len(self.spec.variants), *self.spec.feature_shape)
            if values.shape != expected:
                raise StoreError(
                    f"shard {shard.index}: features {values.shape} != expected {expected}"
                )
            dtype = self.spec.storage_dtype
            self.shard_writer.write_shard(shard.row_start, values.astype(dtype, copy=False))
        if index.num_rows != shard.rows:
            raise StoreError(
                f"shard {shard.index}: index has {index.num_rows} rows, not {shard.rows}"
            )
        features_file, checksum, size = self.shard_writer.shard_checksum(shard.index)
        marker = replace(marker, features_file=features_file, features_sha256=checksum)
        size += files.atomic_write_parquet(
            self.index_part_path(shard), index.cast(FEATURE_INDEX_SCHEMA)
        )
        self._check_fence()
        written = self._create_marker(shard, marker)
        self.bytes_written += size + len(written.to_bytes())
        return written

    def _committed_elsewhere(self, shard: ShardSpec, marker: CommitMarker) -> CommitMarker | None:
        """Before a fenced writer writes anything: the shard's marker if this holding already
        committed it (a retried bundle: nothing to write); raises if another holding did.

        Raises:
            LeaseLostError: another run committed the shard (its data is left untouched).
        """
        if self.fence is None:
            return None
        try:
            existing, _ = read_marker_bytes(self.marker_path(shard))
        except FileNotFoundError:
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
