"""Score raw images: the view's backbone and pooling joined with a trained head in one model."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from features.download.manifest import entries_from_folder, read_manifest
from features.extraction.images import DecodedImage, load_image
from features.extraction.variants import stack_variants, variant_size
from features.model.backbones import backbone_entry
from features.model.mlsp import same_size_groups
from features.model.weights import load_weights_into, parse_weights_id
from features.training.evaluation import scores_from_outputs
from schemas.errors import StoreError
from schemas.status import RowStatus
from schemas.view_spec import FeatureViewSpec

if TYPE_CHECKING:  # Keras (and TensorFlow) load only inside the functions that build models
    import keras

LOGGER = logging.getLogger(__name__)

PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("prediction", pa.float64(), nullable=True),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
    ]
)


def build_scoring_model(spec: FeatureViewSpec, head: keras.Model) -> keras.Model:
    """uint8 images [N, H, W, 3] -> head outputs, with the backbone and weights that made the view.

    Args:
        spec: the view the head was trained on (backbone, weights, taps, pooling, precision).
        head: the trained head, mapping one variant's features to its outputs.

    Returns:
        keras.Model from uint8 images of any size to the head's outputs.

    Raises:
        StoreError: the loaded weights' sha256 differs from the one recorded in the view spec.
        WeightsUnavailableError: the weights cannot be loaded.
    """
    import keras

    from features.training.keras_objects import ImagePreprocess, PoolTaps

    entry = backbone_entry(spec.backbone)
    source = parse_weights_id(spec.weights_id)
    entry.check_weights(source)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(spec.compute_dtype)
    try:
        backbone = entry.build()
    finally:
        keras.config.set_dtype_policy(previous_policy)
    digest = load_weights_into(backbone, source, entry.name)
    if spec.weights_sha256 and digest != spec.weights_sha256:
        raise StoreError(
            f"weights {spec.weights_id!r} now hash to {digest[:12]}…, but view {spec.name!r} was "
            f"extracted with {spec.weights_sha256[:12]}…; refusing to score with other weights"
        )
    taps = keras.Model(backbone.input, entry.tap_outputs(backbone, spec.taps))
    images = keras.Input((None, None, 3), dtype="uint8", name="image")
    pooling = spec.pooling
    groups = same_size_groups(taps, entry.facts.min_input_side) if pooling.kind == "spp" else None
    features = PoolTaps(pooling.kind, pooling.grid, pooling.levels, groups, name="mlsp_pool")(
        taps(ImagePreprocess(entry.preprocessing, name="preprocess")(images))
    )
    return keras.Model(images, head(features), name=f"mlsp_{spec.name}_scorer")


@dataclass(frozen=True)
class ImageItem:
    """One image to score."""

    image_id: str
    uri: str
    sha256: str | None = None


def list_images(source: str) -> list[ImageItem]:
    """Images of a folder (id = file stem) or of a manifest Parquet file.

    Raises:
        ManifestError: not a folder and not a readable manifest.
    """
    if Path(source).is_dir():
        return [ImageItem(e.image_id, str(e.path)) for e in entries_from_folder(Path(source))]
    table = read_manifest(source, "--images")
    return [
        ImageItem(row["image_id"], row["uri"], row["sha256"] or None)
        for row in table.select(["image_id", "uri", "sha256"]).to_pylist()
    ]


def check_variant_size(image: DecodedImage, uri: str, spec: FeatureViewSpec) -> DecodedImage:
    """Mark images whose variant crops fall below the view's minimum side as too_small."""
    if image.pixels is None:
        return image
    height, width = image.pixels.shape[:2]
    smallest = min(min(variant_size(height, width, name)) for name in spec.variants)
    minimum = spec.input_policy.min_side
    if smallest >= minimum:
        return image
    message = (
        f"{uri}: {width}x{height} px gives {smallest} px crops, below the minimum {minimum} px"
    )
    return DecodedImage(None, RowStatus.TOO_SMALL, message, image.read_ms, image.decode_ms)


def compiled_forward(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """The model as one traced function over any batch and image size (no per-size retrace)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def forward(images: Any) -> Any:
        return model(images, training=False)

    return lambda images: np.asarray(forward(images))


def _size_groups(decoded: dict[int, np.ndarray], batch_size: int) -> Iterator[list[int]]:
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for position, pixels in decoded.items():
        groups[pixels.shape].append(position)
    for positions in groups.values():
        for start in range(0, len(positions), batch_size):
            yield positions[start : start + batch_size]


def score_images(
    model: keras.Model,
    spec: FeatureViewSpec,
    items: Sequence[ImageItem],
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> pa.Table:
    """Score images with a scoring model, averaging over the view's variants.

    Images are decoded as extraction decodes them; same-size images share a forward batch.
    An image that cannot be scored gets a null prediction and its status, never an exception.

    Returns:
        PREDICTIONS_SCHEMA table in input order.
    """
    decoded = [
        check_variant_size(load_image(item.uri, spec.input_policy, item.sha256), item.uri, spec)
        for item in items
    ]
    predictions = np.full(len(items), np.nan)
    pixels = {i: image.pixels for i, image in enumerate(decoded) if image.pixels is not None}
    variants = len(spec.variants)
    forward = compiled_forward(model)
    for positions in _size_groups(pixels, batch_size):
        batch = np.concatenate([stack_variants(pixels[i], spec.variants) for i in positions])
        outputs = forward(batch)
        scores = scores_from_outputs(outputs).reshape(len(positions), variants)
        predictions[positions] = scores.mean(axis=1)
        if progress is not None:
            progress(len(positions))
    return pa.table(
        {
            "image_id": [item.image_id for item in items],
            "prediction": [None if np.isnan(p) else float(p) for p in predictions],
            "status": [image.status.value for image in decoded],
            "error": [image.error for image in decoded],
        },
        schema=PREDICTIONS_SCHEMA,
    )
