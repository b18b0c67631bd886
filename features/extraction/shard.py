"""Extract one shard end to end (read, decode, forward, write, commit); no Beam in here."""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from features.extraction.images import DEFAULT_MAX_PIXELS, DecodedImage, load_image
from features.extraction.variants import stack_variants, variant_size
from features.model.devices import configure_device
from features.model.mlsp import ExtractorKey, ExtractorSet, get_extractor_set
from features.store.view import CommitMarker, FeatureView, ShardSpec, image_ids_digest
from schemas.errors import ConfigError, StoreError
from schemas.status import RowStatus
from schemas.tables import FEATURE_INDEX_SCHEMA
from schemas.view_spec import backbone_facts

LOGGER = logging.getLogger(__name__)
# On CPU one AVA-sized image (500x375 = 187,500 px) per forward is fastest (measured: batch 1
# 1.55 images/s vs 1.41 for ~10-image batches on 2 cores); small images still batch up.
DEFAULT_MAX_BATCH_PIXELS = 250_000


@dataclass(frozen=True)
class ExtractionConfig:
    """Worker-side settings of an extraction run (small and picklable; travels to workers).

    Attributes:
        store: store root path or URL.
        views: names of the views filled from one forward pass.
        run_id: identifier written into commit markers.
        max_pixels: decompression-bomb limit per image.
        max_batch_pixels: cap on pixels per forward batch of same-size images.
        decode_threads: threads reading and decoding images of a shard.
    """

    store: str
    views: tuple[str, ...]
    run_id: str
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS
    decode_threads: int = 2
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.views:
            raise ConfigError("at least one view is needed")
        for name, value in (
            ("max_pixels", self.max_pixels),
            ("max_batch_pixels", self.max_batch_pixels),
            ("decode_threads", self.decode_threads),
        ):
            if value < 1:
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
    )
    return key, min(view.spec.input_policy.min_side for view in views)


def _size_batches(
    sizes: dict[int, tuple[int, int]], max_batch_pixels: int, variants: int
) -> Iterator[list[int]]:
    """Group positions by image size, then cut groups so a batch stays under the pixel cap."""
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for position, size in sizes.items():
        by_size[size].append(position)
    for (height, width), positions in sorted(by_size.items()):
        per_batch = max(1, max_batch_pixels // (height * width * variants))
        for start in range(0, len(positions), per_batch):
            yield positions[start : start + per_batch]


class ShardExtractor:
    """Runs shards for a set of views. Build once per worker process, call process() per shard."""

    def __init__(self, config: ExtractionConfig) -> None:
        self.config = config
        self.views = [FeatureView(config.store, name) for name in config.views]
        self._keys = extractor_keys(self.views)
        self._model: ExtractorSet | None = None
        self.device_description = ""

    @property
    def model(self) -> ExtractorSet:
        """The process-wide models, loaded on first use and checked against the views' lineage."""
        if self._model is None:
            self.device_description = configure_device(self.config.device)
            model = get_extractor_set(self._keys)
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

    def process(self, shard: ShardSpec) -> ShardResult:
        """Extract, write and commit one shard for every view that has not committed it yet."""
        started = time.perf_counter()
        # One marker per view, not the whole commits/ listing: a run has thousands of shards.
        pending = [view for view in self.views if not view.is_committed(shard)]
        if not pending:
            return ShardResult(shard.index, shard.rows, skipped=True)
        model = self.model
        forwarded_before = model.images_forwarded
        rows = self.views[0].shard_allocation(shard).to_pylist()
        decoded = self._decode(rows)
        features, model_ms = self._forward(decoded, pending)
        index = self._index_table(rows, decoded, model_ms)
        counts = Counter(image.status.value for image in decoded)
        forwarded = model.images_forwarded - forwarded_before
        seconds = time.perf_counter() - started
        for view in pending:
            view_index = self._apply_view_minimum(view, index, features[view.name])
            marker = CommitMarker(
                shard=shard.index,
                row_start=shard.row_start,
                row_stop=shard.row_stop,
                image_ids_sha256=image_ids_digest([row["image_id"] for row in rows]),
                spec_sha256=view.spec.identity_sha256(),
                status_counts=dict(Counter(view_index.column("status").to_pylist())),
                run_id=self.config.run_id,
                images_forwarded=forwarded,
                seconds=round(seconds, 3),
                device=self.device_description,
            )
            view.write_shard(shard, features[view.name], view_index, marker)
        LOGGER.info(
            "shard %d rows %d:%d committed to %s: %s, %.2f images/s",
            shard.index,
            shard.row_start,
            shard.row_stop,
            [view.name for view in pending],
            dict(counts),
            shard.rows / max(seconds, 1e-9),
        )
        return ShardResult(shard.index, shard.rows, False, dict(counts), forwarded, seconds)

    def _decode(self, rows: list[dict[str, Any]]) -> list[DecodedImage]:
        policy = self.views[0].spec.input_policy

        def load(row: dict[str, Any]) -> DecodedImage:
            return load_image(row["uri"], policy, row["sha256"], self.config.max_pixels)

        with ThreadPoolExecutor(self.config.decode_threads) as pool:
            decoded = list(pool.map(load, rows))
        return [self._check_variant_size(image, rows[i]["uri"]) for i, image in enumerate(decoded)]

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

    def _forward(
        self, decoded: list[DecodedImage], views: list[FeatureView]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        spec = views[0].spec
        variants = spec.variants
        features = {
            view.name: np.full(
                (len(decoded), len(variants), *view.spec.feature_shape),
                np.nan,
                dtype=view.spec.storage_dtype,
            )
            for view in views
        }
        model_ms = np.zeros(len(decoded), dtype=np.float32)
        sizes = {
            i: image.pixels.shape[:2] for i, image in enumerate(decoded) if image.pixels is not None
        }
        for positions in _size_batches(sizes, self.config.max_batch_pixels, len(variants)):
            batch = np.concatenate(
                [
                    stack_variants(decoded[i].pixels, variants)  # type: ignore[arg-type]
                    for i in positions
                ]
            )
            started = time.perf_counter()
            outputs = self._extract_capped(batch)
            elapsed = (time.perf_counter() - started) * 1000.0
            model_ms[positions] = elapsed / len(positions)
            for view in (view for view in views if view.name in outputs):
                values = outputs[view.name].reshape(
                    len(positions), len(variants), *view.spec.feature_shape
                )
                features[view.name][positions] = values
        return features, model_ms

    def _extract_capped(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Forward a batch in slices of at most max_batch_pixels (variants of one image too)."""
        per_slice = max(1, self.config.max_batch_pixels // (batch.shape[1] * batch.shape[2]))
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
        heights = [
            image.pixels.shape[0] if image.pixels is not None else row["height"]
            for row, image in zip(rows, decoded, strict=True)
        ]
        widths = [
            image.pixels.shape[1] if image.pixels is not None else row["width"]
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
