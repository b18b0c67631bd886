"""The MLSP model: InceptionResNetV2 'mixed' taps, pooled narrow (GAP) or wide (area grid)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.model.weights import load_weights_into, parse_weights_id
from schemas.view_spec import PoolingSpec

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
LOGGER = logging.getLogger(__name__)
_CACHE_LOCK = threading.RLock()


def build_backbone() -> Any:
    """InceptionResNetV2 without top, accepting any image size, with uninitialised weights."""
    import keras

    return keras.applications.InceptionResNetV2(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )


def tap_layers(backbone: Any, taps: Sequence[str] | None = None) -> list[Any]:
    """Layers whose name contains 'mixed', in model order (the MLSP definition), or those named."""
    mixed = [layer for layer in backbone.layers if "mixed" in layer.name]
    if taps is None:
        return mixed
    by_name = {layer.name: layer for layer in mixed}
    return [by_name[name] for name in taps]


def pool_taps(tap_outputs: Sequence[Any], pooling: PoolingSpec) -> Any:
    """Pool each tap and concatenate on channels, as ava-mlsp does.

    'gap': global average over height and width -> [N, C].
    'grid': tf.image.resize(method='area') to the grid -> [N, rows, cols, C].
    """
    import tensorflow as tf

    if pooling.kind == "gap":
        return tf.concat([tf.reduce_mean(tap, axis=[1, 2]) for tap in tap_outputs], axis=-1)
    grid = pooling.grid
    return tf.concat([tf.image.resize(tap, grid, method="area") for tap in tap_outputs], axis=-1)


def _build_tap_model(weights_id: str, taps: tuple[str, ...], compute_dtype: str) -> tuple[Any, str]:
    import keras

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(compute_dtype)
    try:
        backbone = build_backbone()
    finally:
        keras.config.set_dtype_policy(previous_policy)
    digest = load_weights_into(backbone, parse_weights_id(weights_id))
    layers = tap_layers(backbone, taps)
    return keras.Model(backbone.input, [layer.output for layer in layers]), digest


_BACKBONES: dict[tuple[str, tuple[str, ...], str], tuple[Any, str]] = {}


def _backbone_taps(weights_id: str, taps: tuple[str, ...], compute_dtype: str) -> tuple[Any, str]:
    """(tap model, weights sha256), built once per process and shared by every extractor."""
    key = (weights_id, taps, compute_dtype)
    if key not in _BACKBONES:
        LOGGER.info(
            "loading InceptionResNetV2 backbone (%s, %s, %d taps)",
            weights_id,
            compute_dtype,
            len(taps),
        )
        _BACKBONES[key] = _build_tap_model(weights_id, taps, compute_dtype)
    return _BACKBONES[key]


def backbone_weights_sha256(
    weights_id: str, taps: tuple[str, ...], compute_dtype: str = "float32"
) -> str:
    """Digest of the weights loaded for this backbone (loads it if needed)."""
    with _CACHE_LOCK:
        return _backbone_taps(weights_id, taps, compute_dtype)[1]


@dataclass(frozen=True)
class ExtractorKey:
    """What makes two extractors interchangeable (the per-process cache key)."""

    weights_id: str
    taps: tuple[str, ...]
    poolings: tuple[tuple[str, PoolingSpec], ...]
    compute_dtype: str = "float32"


class MLSPExtractor:
    """One backbone, one compiled function, several pooled outputs from a single forward pass.

    The function's input signature has None batch, height and width, so images of any size reuse
    one trace. Inputs are uint8 RGB; preprocessing (x / 127.5 - 1) happens inside the graph.
    """

    def __init__(self, key: ExtractorKey) -> None:
        import tensorflow as tf

        self.key = key
        tap_model, self.weights_sha256 = _backbone_taps(key.weights_id, key.taps, key.compute_dtype)
        self._tap_model = tap_model
        self.images_forwarded = 0
        self._lock = threading.Lock()
        poolings = dict(key.poolings)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def forward(images: Any) -> dict[str, Any]:
            scaled = (
                tf.cast(images, tf.float32) / 127.5 - 1.0
            )  # inception_resnet_v2.preprocess_input
            taps = self._tap_model(scaled, training=False)
            taps = [tf.cast(tap, tf.float32) for tap in taps]
            return {name: pool_taps(taps, pooling) for name, pooling in poolings.items()}

        self._forward = forward

    @property
    def tracing_count(self) -> int:
        """How many times the compiled function was traced (1 after the first call)."""
        return int(self._forward.experimental_get_tracing_count())

    def extract(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch of same-size uint8 RGB images [N, H, W, 3] through the network.

        Returns:
            View name -> float32 features [N, *feature_shape].
        """
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
        outputs = self._forward(images)
        with self._lock:
            self.images_forwarded += int(images.shape[0])
        return {name: value.numpy() for name, value in outputs.items()}


_CACHE: dict[ExtractorKey, MLSPExtractor] = {}


def get_extractor(key: ExtractorKey) -> MLSPExtractor:
    """The process-wide extractor for key, built on first use (workers load the model once)."""
    with _CACHE_LOCK:
        extractor = _CACHE.get(key)
        if extractor is None:
            extractor = MLSPExtractor(key)
            _CACHE[key] = extractor
        return extractor
