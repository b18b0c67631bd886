"""Extract one shard end to end (read, decode, forward, write, commit); no Beam in here."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from features import retries
from features.extraction.feed import (
    DEFAULT_PREFETCH_BATCHES,
    BatchBuffers,
    DecodeFeed,
    plan_batches,
    policy_size,
    split_by_actual_size,
)
from features.extraction.images import DEFAULT_MAX_PIXELS, DecodedImage, load_image
from features.extraction.variants import stack_variants, variant_size
from features.model.devices import (
    BATCH_PIXELS_BY_KIND,
    configure_device,
    device_kind,
    placed_device,
)
from features.model.mlsp import ExtractorKey, ExtractorSet, get_extractor_set
from features.store import FeatureView, LeaseFence, ShardSpec
from schemas.errors import ConfigError, StoreError
from schemas.status import RowStatus
from schemas.tables import FEATURE_INDEX_SCHEMA
from schemas.view_spec import backbone_facts

LOGGER = logging.getLogger(__name__)
# CPU default (one AVA-sized image per forward); the device picks it when none is given.
DEFAULT_MAX_BATCH_PIXELS = BATCH_PIXELS_BY_KIND["cpu"]
NO_DEVICE = "none (no image forwarded)"
# Runs (ids) whose shards ran in this process: a launcher whose runner ran workers in its own
# process counts their store retries in its own counters already (the summary must not add
# them twice).
RUNS_IN_THIS_PROCESS: set[str] = set()


@dataclass(frozen=True)
class ExtractionConfig:
    """Worker-side settings of an extraction run (small and picklable; travels to workers).

    Attributes:
        store: store root path or URL.
        views: names of the views filled from one forward pass.
        run_id: identifier written into commit markers.
        max_pixels: decompression-bomb limit per image.
        max_batch_pixels: cap on pixels per forward batch of same-size images (variants
            included); None: the device's default (BATCH_PIXELS_BY_KIND).
        decode_threads: threads reading and decoding images of a shard.
        prefetch_batches: decoded batches kept ready ahead of the model (memory bound).
        device: auto, cpu, gpu or npu.
        fences: per view name, the launcher's lease holding (ViewLease.fence_settings()):
            every shard write and commit marker is checked against it. Empty: unfenced
            (tools and tests that write without a lease).
        store_retries: the object-store retry policy (features.retries.RetryPolicy.to_dict());
            None: the worker's own (MLSP_STORE_RETRIES or the defaults).
    """

    store: str
    views: tuple[str, ...]
    run_id: str
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch_pixels: int | None = None
    decode_threads: int = 2
    device: str = "auto"
    prefetch_batches: int = DEFAULT_PREFETCH_BATCHES
    fences: dict[str, dict[str, Any]] = field(default_factory=dict)
    store_retries: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.views:
            raise ConfigError("at least one view is needed")
        for name, value in (
            ("max_pixels", self.max_pixels),
            ("max_batch_pixels", self.max_batch_pixels),
            ("decode_threads", self.decode_threads),
            ("prefetch_batches", self.prefetch_batches),
        ):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        data = asdict(self)
        data["views"] = list(self.views)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtractionConfig:
        """Inverse of to_dict."""
        return cls(**{**data, "views": tuple(data["views"])})


@dataclass
class ShardResult:
    """What a worker reports for one shard (small: features never travel through the runner)."""

    shard: int
    rows: int
    skipped: bool
    status_counts: dict[str, int] = field(default_factory=dict)
    images_forwarded: int = 0
    seconds: float = 0.0
    bytes_written: int = 0
    # Per row of the shard, ms (read and decode for every row read, model for forwarded rows).
    read_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    model_ms: list[float] = field(default_factory=list)
    write_ms: float = 0.0  # the whole shard's writes and commits, every view
    store_retries: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, friendly to every runner's coder."""
        return asdict(self)


def extractor_keys(views: Sequence[FeatureView]) -> list[tuple[ExtractorKey, int]]:
    """One extractor per (backbone, weights, precision), with the smallest image side it takes.

    Every view must share the decode (input policy kind and size, variants); views of one
    backbone share one forward pass, whatever their taps and pooling.

    Raises:
        ConfigError: views that cannot share the decode.
    """
    first = views[0].spec
    groups: dict[tuple[str, str, str], list[FeatureView]] = {}
    for view in views:
        spec = view.spec
        if (spec.input_policy.kind, spec.input_policy.max_side, spec.variants) != (
            first.input_policy.kind,
            first.input_policy.max_side,
            first.variants,
        ):
            raise ConfigError(
                f"views {first.name!r} and {spec.name!r} cannot share a forward pass "
                "(input policy or variants differ)"
            )
        key = (spec.backbone_name, spec.weights_id, spec.compute_dtype)
        groups.setdefault(key, []).append(view)
    return [_group_key(members) for members in groups.values()]


def _group_key(views: list[FeatureView]) -> tuple[ExtractorKey, int]:
    spec = views[0].spec
    wanted = {tap for view in views for tap in view.spec.taps}
    taps = tuple(tap for tap in backbone_facts(spec.backbone).tap_names if tap in wanted)
    key = ExtractorKey(
        spec.weights_id,
        taps,
        tuple((view.name, view.spec.pooling) for view in views),
        spec.compute_dtype,
        spec.backbone_name,
        tuple((view.name, view.spec.taps) for view in views if view.spec.taps != taps),
        # Features leave the graph in their storage dtype when every view stores the same one.
        _shared_storage_dtype(views),
    )
    return key, min(view.spec.input_policy.min_side for view in views)


def _shared_storage_dtype(views: list[FeatureView]) -> str:
    dtypes = {view.spec.storage_dtype for view in views}
    return dtypes.pop() if len(dtypes) == 1 else "float32"


class ShardExtractor:
    """Runs shards for a set of views. Build once per worker process, call process() per shard."""

    def __init__(self, config: ExtractionConfig) -> None:
        self.config = config
        if config.store_retries is not None:
            retries.configure(retries.RetryPolicy.from_dict(config.store_retries), export=False)
        self.views = [FeatureView(config.store, name) for name in config.views]
        for view in self.views:
            settings = config.fences.get(view.name)
            view.fence = LeaseFence.from_dict(settings) if settings is not None else None
        self._keys = extractor_keys(self.views)
        self._model: ExtractorSet | None = None
        self.device_description = ""
        self.placed_device = ""
        self.max_batch_pixels = config.max_batch_pixels or DEFAULT_MAX_BATCH_PIXELS

    @property
    def model(self) -> ExtractorSet:
        """The process-wide models, loaded on first use and checked against the views' lineage."""
        if self._model is None:
            self.device_description = configure_device(self.config.device)
            model = get_extractor_set(self._keys)
            self.placed_device = placed_device()
            kind = device_kind(self.placed_device)
            self.max_batch_pixels = self.config.max_batch_pixels or BATCH_PIXELS_BY_KIND[kind]
            for view in self.views:
                loaded = model.weights_sha256_of(view.name)
                if view.spec.weights_sha256 and view.spec.weights_sha256 != loaded:
                    raise StoreError(
                        f"view {view.name!r} records weights sha256 "
                        f"{view.spec.weights_sha256[:12]}… but this worker loaded "
                        f"{loaded[:12]}… for "
                        f"{view.spec.weights_id!r}; refusing to mix features from different weights"
                    )
            self._model = model
        return self._model

    def shard_device(self, forwarded: int) -> str:
        """What a marker records: the device TensorFlow ran the forward passes on, or none."""
        if not forwarded:
            return NO_DEVICE
        return f"{self.placed_device} ({self.device_description})"

    def process(self, shard: ShardSpec, view_names: Sequence[str] | None = None) -> ShardResult:
        """Extract, write and commit one shard for every view that has not committed it yet.

        Args:
            shard: the shard.
            view_names: the views the launcher's plan found uncommitted; None = read each
                view's marker here. Either way a view committed meanwhile (a retried bundle,
                another run) is caught by the exclusive claim before its features are written.
        """
        started = time.perf_counter()
        counted_before = retries.COUNTERS.snapshot()
        RUNS_IN_THIS_PROCESS.add(self.config.run_id)
        if view_names is None:
            pending = [view for view in self.views if not view.is_committed(shard)]
        else:
            pending = [view for view in self.views if view.name in view_names]
        if not pending:
            return ShardResult(shard.index, shard.rows, skipped=True)
        model = self.model
        forwarded_before = model.images_forwarded
        rows = self.views[0].shard_allocation(shard).to_pylist()
        decoded, features, model_ms = self._extract_rows(rows, pending)
        index = self._index_table(rows, decoded, model_ms)
        counts = Counter(image.status.value for image in decoded)
        forwarded = model.images_forwarded - forwarded_before
        seconds = time.perf_counter() - started
        written_before = sum(view.bytes_written for view in pending)
        for view in pending:
            view_index = self._apply_view_minimum(view, index, features[view.name])
            view.commit_shard(
                shard,
                features[view.name],
                view_index,
                self.config.run_id,
                images_forwarded=forwarded,
                seconds=round(seconds, 3),
                device=self.shard_device(forwarded),
                store_retries=retries.counts_since(counted_before),
            )
        LOGGER.info(
            "shard %d rows %d:%d committed to %s: %s, %.2f images/s",
            shard.index,
            shard.row_start,
            shard.row_stop,
            [view.name for view in pending],
            dict(counts),
            shard.rows / max(seconds, 1e-9),
        )
        return ShardResult(
            shard.index,
            shard.rows,
            False,
            dict(counts),
            forwarded,
            seconds,
            bytes_written=sum(view.bytes_written for view in pending) - written_before,
            read_ms=[ms for ms in index.column("read_ms").to_pylist() if ms is not None],
            decode_ms=[ms for ms in index.column("decode_ms").to_pylist() if ms is not None],
            model_ms=[ms for ms in model_ms.tolist() if ms > 0],
            write_ms=(time.perf_counter() - started - seconds) * 1000,
            store_retries=retries.counts_since(counted_before),
        )

    def _load(self, row: dict[str, Any]) -> DecodedImage:
        """Read, check and decode one row (runs on a decode thread; Pillow releases the GIL)."""
        policy = self.views[0].spec.input_policy
        image = load_image(row["uri"], policy, row["sha256"], self.config.max_pixels)
        return self._check_variant_size(image, row["uri"])

    def _check_variant_size(self, image: DecodedImage, uri: str) -> DecodedImage:
        if image.pixels is None:
            return image
        # The least demanding view decides what is decoded and forwarded; views that need
        # more mark the rest too_small in their own index (_apply_view_minimum).
        min_side = min(view.spec.input_policy.min_side for view in self.views)
        height, width = image.pixels.shape[:2]
        smallest = _smallest_crop(height, width, self.views[0].spec.variants)
        if smallest >= min_side:
            return image
        message = _too_small_message(uri, width, height, smallest, min_side)
        return DecodedImage(None, RowStatus.TOO_SMALL, message, image.read_ms, image.decode_ms)

    @staticmethod
    def _apply_view_minimum(view: FeatureView, index: pa.Table, values: np.ndarray) -> pa.Table:
        """The view's index: ok rows below its own min_side become too_small with NaN features."""
        min_side, variants = view.spec.input_policy.min_side, view.spec.variants
        statuses, errors = index.column("status").to_pylist(), index.column("error").to_pylist()
        for row, (status, width, height) in enumerate(
            zip(
                statuses,
                index.column("width").to_pylist(),
                index.column("height").to_pylist(),
                strict=True,
            )
        ):
            if status != RowStatus.OK.value:  # failed rows may have no size
                continue
            smallest = _smallest_crop(height, width, variants)
            if smallest < min_side:
                values[row] = np.nan
                statuses[row] = RowStatus.TOO_SMALL.value
                image_id = index.column("image_id")[row].as_py()
                errors[row] = _too_small_message(image_id, width, height, smallest, min_side)
        for name, column in (("status", statuses), ("error", errors)):
            position = index.schema.get_field_index(name)
            field = index.schema.field(name)
            index = index.set_column(position, field, pa.array(column, field.type))
        return index

    def _expected_sizes(self, rows: list[dict[str, Any]]) -> list[tuple[int, int] | None]:
        """Sizes from the manifest's header sizes, after the input policy's resize."""
        policy = self.views[0].spec.input_policy
        return [
            policy_size(row["height"], row["width"], policy)
            if row.get("height") and row.get("width")
            else None
            for row in rows
        ]

    def _extract_rows(
        self, rows: list[dict[str, Any]], views: list[FeatureView]
    ) -> tuple[list[DecodedImage], dict[str, np.ndarray], np.ndarray]:
        """Decode on threads into ready batches (bounded) while the model runs earlier ones."""
        variants = views[0].spec.variants
        features = {
            view.name: np.full(
                (len(rows), len(variants), *view.spec.feature_shape),
                np.nan,
                dtype=view.spec.storage_dtype,
            )
            for view in views
        }
        model_ms = np.zeros(len(rows), dtype=np.float32)
        decoded: list[DecodedImage] = [None] * len(rows)  # type: ignore[list-item]
        sizes = self._expected_sizes(rows)
        plan = plan_batches(sizes, self.max_batch_pixels, len(variants))
        buffers = BatchBuffers(plan, sizes, variants)

        def load(position: int) -> tuple[DecodedImage, bool]:
            image = self._load(rows[position])
            if image.pixels is None or not buffers.place(position, image.pixels):
                return image, False
            # Copied into its batch: free the pixels now, on the decode thread (warm memory).
            return image.released(), True

        for batch in DecodeFeed(
            load, plan, self.config.decode_threads, self.config.prefetch_batches
        ):
            placed, loose = [], []
            for slot, (image, in_buffer) in enumerate(batch.results):
                decoded[batch.positions[slot]] = image
                if in_buffer:
                    placed.append(slot)
                elif image.pixels is not None:
                    loose.append((batch.positions[slot], image.pixels))
            if placed:
                ready = buffers.take(batch.index, placed)
                positions = [batch.positions[slot] for slot in placed]
                self._forward_batch(ready, positions, views, features, model_ms)
            self._forward_loose(loose, views, features, model_ms)
            for position, _ in loose:
                decoded[position] = decoded[position].released()
        return decoded, features, model_ms

    def _forward_loose(
        self,
        loose: list[tuple[int, np.ndarray]],
        views: list[FeatureView],
        features: dict[str, np.ndarray],
        model_ms: np.ndarray,
    ) -> None:
        """Images whose real size missed the plan (EXIF rotation, unknown size), by real size."""
        variants = views[0].spec.variants
        for positions, pixels in split_by_actual_size(
            [p for p, _ in loose], [x for _, x in loose], self.max_batch_pixels, len(variants)
        ):
            stacked = np.concatenate([stack_variants(x, variants) for x in pixels])
            self._forward_batch(stacked, positions, views, features, model_ms)

    def _forward_batch(
        self,
        batch: np.ndarray,
        positions: list[int],
        views: list[FeatureView],
        features: dict[str, np.ndarray],
        model_ms: np.ndarray,
    ) -> None:
        """Forward one same-size batch and scatter each view's values into `features`."""
        started = time.perf_counter()
        values = self._forward_views(batch, len(positions), views)
        model_ms[positions] = (time.perf_counter() - started) * 1000.0 / len(positions)
        for name, value in values.items():
            features[name][positions] = value

    def _forward_views(
        self, batch: np.ndarray, images: int, views: list[FeatureView]
    ) -> dict[str, np.ndarray]:
        """One forward pass of a same-size batch, split into each view's [images, variants, ...]."""
        outputs = self._extract_capped(batch)
        variants = len(views[0].spec.variants)
        return {
            view.name: outputs[view.name].reshape(images, variants, *view.spec.feature_shape)
            for view in views
            # a backbone skips batches below its own minimum side; those rows stay NaN
            if view.name in outputs
        }

    def _extract_capped(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Forward a batch in slices of at most max_batch_pixels (variants of one image too)."""
        per_slice = max(1, self.max_batch_pixels // (batch.shape[1] * batch.shape[2]))
        if per_slice >= len(batch):
            return self.model.extract(batch)
        parts = [
            self.model.extract(batch[start : start + per_slice])
            for start in range(0, len(batch), per_slice)
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    @staticmethod
    def _index_table(
        rows: list[dict[str, Any]], decoded: list[DecodedImage], model_ms: np.ndarray
    ) -> pa.Table:
        # Decoded sizes where the pixels were forwarded, the manifest's otherwise.
        heights = [
            image.size[0] if image.size is not None else row["height"]
            for row, image in zip(rows, decoded, strict=True)
        ]
        widths = [
            image.size[1] if image.size is not None else row["width"]
            for row, image in zip(rows, decoded, strict=True)
        ]
        return pa.table(
            {
                "image_id": [row["image_id"] for row in rows],
                "row": [row["row"] for row in rows],
                "status": [image.status.value for image in decoded],
                "error": [image.error for image in decoded],
                "dataset": [row["dataset"] for row in rows],
                "split": [row["split"] for row in rows],
                "width": widths,
                "height": heights,
                "read_ms": [image.read_ms for image in decoded],
                "decode_ms": [image.decode_ms for image in decoded],
                "model_ms": model_ms,
            },
            schema=FEATURE_INDEX_SCHEMA,
        )


def _smallest_crop(height: int, width: int, variants: Sequence[str]) -> int:
    """Smallest side over the variant crops of an image."""
    return min(min(variant_size(height, width, name)) for name in variants)


def _too_small_message(name: str, width: int, height: int, smallest: int, min_side: int) -> str:
    return (
        f"{name}: {width}x{height} px gives {smallest} px crops, smaller than the "
        f"network minimum {min_side} px"
    )
