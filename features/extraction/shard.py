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
from features.model.mlsp import ExtractorKey, MLSPExtractor, get_extractor
from features.store.view import FeatureView, ShardSpec
from schemas.errors import ConfigError, StoreError
from schemas.status import RowStatus
from schemas.tables import FEATURE_INDEX_SCHEMA

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


def extractor_key(views: Sequence[FeatureView]) -> ExtractorKey:
    """One extractor serves all views: they must share backbone, taps, weights and precision."""
    first = views[0].spec
    for view in views[1:]:
        spec = view.spec
        if (spec.taps, spec.weights_id, spec.compute_dtype, spec.input_policy, spec.variants) != (
            first.taps,
            first.weights_id,
            first.compute_dtype,
            first.input_policy,
            first.variants,
        ):
            raise ConfigError(
                f"views {first.name!r} and {spec.name!r} cannot share a forward pass "
                "(taps, weights, precision, input policy or variants differ)"
            )
    return ExtractorKey(
        first.weights_id,
        first.taps,
        tuple((view.name, view.spec.pooling) for view in views),
        first.compute_dtype,
    )


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
        self._key = extractor_key(self.views)
        self._model: MLSPExtractor | None = None
        self.device_description = ""

    @property
    def model(self) -> MLSPExtractor:
        """The process-wide model, loaded on first use and checked against the views' lineage."""
        if self._model is None:
            self.device_description = configure_device(self.config.device)
            model = get_extractor(self._key)
            for view in self.views:
                if view.spec.weights_sha256 and view.spec.weights_sha256 != model.weights_sha256:
                    raise StoreError(
                        f"view {view.name!r} records weights sha256 "
                        f"{view.spec.weights_sha256[:12]}… but this worker loaded "
                        f"{model.weights_sha256[:12]}… for "
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
            view.commit_shard(
                shard,
                features[view.name],
                index,
                self.config.run_id,
                images_forwarded=forwarded,
                seconds=seconds,
                device=self.device_description,
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
        policy, variants = self.views[0].spec.input_policy, self.views[0].spec.variants
        height, width = image.pixels.shape[:2]
        smallest = min(min(variant_size(height, width, name)) for name in variants)
        if smallest >= policy.min_side:
            return image
        message = (
            f"{uri}: {width}x{height} px gives {smallest} px crops, smaller than the "
            f"network minimum {policy.min_side} px"
        )
        return DecodedImage(None, RowStatus.TOO_SMALL, message, image.read_ms, image.decode_ms)

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
            for view in views:
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
