"""The MLSP model: a registered backbone's taps, pooled (gap, area grid or spp) and concatenated."""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.model.backbones import PREPROCESSING, backbone_entry
from features.model.weights import load_weights_into, parse_weights_id
from schemas.view_spec import PoolingSpec

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
LOGGER = logging.getLogger(__name__)
_CACHE_LOCK = threading.RLock()
DEFAULT_BACKBONE = "inception_resnet_v2"


def build_backbone(backbone: str = DEFAULT_BACKBONE) -> Any:
    """The backbone without top, accepting any image size, with uninitialised weights."""
    return backbone_entry(backbone).build()


def tap_layers(backbone: Any, taps: Sequence[str] | None = None) -> list[Any]:
    """InceptionResNetV2: layers whose name contains 'mixed', in model order (the MLSP definition),
    or those named."""
    mixed = [layer for layer in backbone.layers if "mixed" in layer.name]
    if taps is None:
        return mixed
    by_name = {layer.name: layer for layer in mixed}
    return [by_name[name] for name in taps]


def _gap(tap: Any, pooling: PoolingSpec) -> Any:
    import tensorflow as tf

    return tf.reduce_mean(tap, axis=[1, 2])


def _area_grid(tap: Any, pooling: PoolingSpec) -> Any:
    import tensorflow as tf

    return tf.image.resize(tap, pooling.grid, method="area")


def _adaptive_max(x: Any, bins: int, axis: int) -> Any:
    """Max over `bins` bins of axis 1 or 2; bin i covers [floor(i*a/n), ceil((i+1)*a/n)).

    One gather of a [bins, widest bin] index table, the short bins padded by repeating their
    last cell (max ignores repeats), then one reduce_max: a fixed handful of graph ops per
    level, where slicing bin by bin made irnv2_spp's graph 26,792 ops (about 35 s to trace
    and optimise in every process that extracts or predicts it).
    """
    import tensorflow as tf

    if bins == 1:  # the whole axis: no index table, no gathered copy of the map
        return tf.reduce_max(x, axis=axis, keepdims=True)
    side = tf.shape(x)[axis]
    index = tf.range(bins)
    start = (index * side) // bins
    stop = ((index + 1) * side + bins - 1) // bins
    offsets = tf.range(tf.reduce_max(stop - start))
    cells = tf.minimum(start[:, tf.newaxis] + offsets[tf.newaxis, :], stop[:, tf.newaxis] - 1)
    return tf.reduce_max(tf.gather(x, cells, axis=axis), axis=axis + 1)


def _spp(tap: Any, pooling: PoolingSpec) -> Any:
    """Per level n: an n x n grid of max-pooled bins, flattened row-major with channels inner.

    Max over a rectangle is separable, so each level pools rows into bins, then columns.
    """
    return _spp_same_size([tap], pooling)


def _spp_same_size(taps: Sequence[Any], pooling: PoolingSpec) -> Any:
    """_spp of each tap, concatenated in tap order, for taps whose maps share one size.

    Max pooling is per channel, so the taps are pooled as one map (channels concatenated) and
    split again: one set of bin ops per map size instead of per tap (IRv2's 43 taps have three
    sizes; per tap, irnv2_spp's graph had about 16,000 pooling ops).
    """
    import tensorflow as tf

    channels = [int(tap.shape[-1]) for tap in taps]
    joined = taps[0] if len(taps) == 1 else tf.concat(list(taps), axis=-1)
    per_tap: list[list[Any]] = [[] for _ in taps]
    for bins in pooling.levels or ():
        grid = _adaptive_max(_adaptive_max(joined, bins, 1), bins, 2)
        parts = [grid] if len(taps) == 1 else tf.split(grid, channels, axis=-1)
        for position, (part, count) in enumerate(zip(parts, channels, strict=True)):
            per_tap[position].append(tf.reshape(part, [-1, bins * bins * count]))
    return tf.concat([level for levels in per_tap for level in levels], axis=-1)


POOLERS: dict[str, Callable[[Any, PoolingSpec], Any]] = {
    "gap": _gap,
    "grid": _area_grid,
    "spp": _spp,
}


def pool_taps(
    tap_outputs: Sequence[Any], pooling: PoolingSpec, size_groups: Sequence[int] | None = None
) -> Any:
    """Pool each tap and concatenate on channels, as ava-mlsp does.

    'gap': global average over height and width -> [N, C].
    'grid': tf.image.resize(method='area') to the grid -> [N, rows, cols, C].
    'spp': max pooling over every level's bins, per tap -> [N, sum(n * n * C_tap)].

    Args:
        tap_outputs: [N, h, w, C_tap] maps in tap order.
        pooling: the view's pooling.
        size_groups: for spp, a group number per tap (same_size_groups); consecutive taps of
            one group are pooled together, with the same result. A wrong grouping cannot pass
            silently: concatenating maps of different sizes fails.
    """
    import tensorflow as tf

    if pooling.kind == "spp" and size_groups is not None:
        runs: list[list[Any]] = []
        for position, tap in enumerate(tap_outputs):
            if position and size_groups[position] == size_groups[position - 1]:
                runs[-1].append(tap)
            else:
                runs.append([tap])
        return tf.concat([_spp_same_size(run, pooling) for run in runs], axis=-1)
    pooler = POOLERS[pooling.kind]
    return tf.concat([pooler(tap, pooling) for tap in tap_outputs], axis=-1)


def same_size_groups(tap_model: Any, min_input_side: int) -> tuple[int, ...]:
    """A group number per tap output: consecutive taps whose maps have equal sizes at two
    probe image sizes (odd, non-square, above the backbone's minimum) share a number.

    Args:
        tap_model: Keras model from images to the tap maps.
        min_input_side: the backbone's smallest image side.
    """
    side = max(min_input_side, 32)
    probes = ((side + 17, side + 43), (2 * side + 6, 2 * side + 1))
    shapes = [tap_model.compute_output_shape((1, height, width, 3)) for height, width in probes]
    if len(tap_model.outputs) == 1:  # Keras gives one shape, not a list of one
        return (0,)
    keys = [tuple(tuple(outputs[i][1:3]) for outputs in shapes) for i in range(len(shapes[0]))]
    groups = [0]
    for previous, current in itertools.pairwise(keys):
        groups.append(groups[-1] + (current != previous))
    return tuple(groups)


def _load_backbone(backbone: str, weights_id: str, compute_dtype: str) -> tuple[Any, str]:
    import keras

    entry = backbone_entry(backbone)
    source = parse_weights_id(weights_id)
    entry.check_weights(source)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(compute_dtype)
    try:
        model = entry.build()
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return model, load_weights_into(model, source, entry.name)


_BACKBONES: dict[tuple[str, str, str], tuple[Any, str]] = {}


def loaded_backbone(backbone: str, weights_id: str, compute_dtype: str) -> tuple[Any, str]:
    """(Keras backbone with weights, weights sha256), built once per process for every view."""
    key = (backbone_entry(backbone).name, weights_id, compute_dtype)
    with _CACHE_LOCK:
        if key not in _BACKBONES:
            LOGGER.info("loading %s backbone (%s, %s)", *key)
            _BACKBONES[key] = _load_backbone(*key)
        return _BACKBONES[key]


def backbone_weights_sha256(
    weights_id: str,
    taps: tuple[str, ...] = (),
    compute_dtype: str = "float32",
    backbone: str = DEFAULT_BACKBONE,
) -> str:
    """Digest of the weights loaded for this backbone (loads it if needed; taps are unused)."""
    return loaded_backbone(backbone, weights_id, compute_dtype)[1]


@dataclass(frozen=True)
class ExtractorKey:
    """What makes two extractors interchangeable (the per-process cache key).

    Attributes:
        weights_id: weights of the backbone.
        taps: tap layers computed (the union over the views, in backbone order).
        poolings: (output name, pooling) of each view filled by the forward pass.
        compute_dtype: Keras precision policy.
        backbone: registry name.
        view_taps: (output name, taps) of views that pool a subset of taps (others pool all).
        output_dtype: dtype of the returned features. The shard path asks for the storage
            dtype, so the cast runs in the graph (on the accelerator, or multi-threaded on a
            CPU) instead of on the model thread: numpy's float32 -> float16 cast costs about
            0.1 ms per narrow image and 2.8 ms per wide one there. Rounding is the same
            (nearest, ties to even).
    """

    weights_id: str
    taps: tuple[str, ...]
    poolings: tuple[tuple[str, PoolingSpec], ...]
    compute_dtype: str = "float32"
    backbone: str = DEFAULT_BACKBONE
    view_taps: tuple[tuple[str, tuple[str, ...]], ...] = ()
    output_dtype: str = "float32"


class MLSPExtractor:
    """One backbone, one compiled function, several pooled outputs from a single forward pass.

    The function's input signature has None batch, height and width, so images of any size reuse
    one trace. Inputs are uint8 RGB; the backbone's preprocessing happens inside the graph.
    """

    def __init__(self, key: ExtractorKey) -> None:
        import keras
        import tensorflow as tf

        self.key = key
        entry = backbone_entry(key.backbone)
        backbone, self.weights_sha256 = loaded_backbone(
            key.backbone, key.weights_id, key.compute_dtype
        )
        self._tap_model = keras.Model(backbone.input, entry.tap_outputs(backbone, key.taps))
        self._preprocess = PREPROCESSING[entry.preprocessing]
        self.images_forwarded = 0
        self._lock = threading.Lock()
        subsets = dict(key.view_taps)
        selections = {
            name: (pooling, [key.taps.index(tap) for tap in subsets.get(name, key.taps)])
            for name, pooling in key.poolings
        }
        groups: tuple[int, ...] | None = None
        if any(pooling.kind == "spp" for _, pooling in key.poolings):
            groups = same_size_groups(self._tap_model, entry.facts.min_input_side)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def forward(images: Any) -> dict[str, Any]:
            taps = self._tap_model(self._preprocess(images), training=False)
            taps = [tf.cast(tap, tf.float32) for tap in taps]
            return {
                name: tf.cast(
                    pool_taps(
                        [taps[i] for i in chosen],
                        pooling,
                        None if groups is None else [groups[i] for i in chosen],
                    ),
                    key.output_dtype,
                )
                for name, (pooling, chosen) in selections.items()
            }

        self._forward = forward

    @property
    def tracing_count(self) -> int:
        """How many times the compiled function was traced (1 after the first call)."""
        return int(self._forward.experimental_get_tracing_count())

    def tap_activations(self, images: np.ndarray) -> list[np.ndarray]:
        """Raw tap maps [N, h, w, C] of uint8 images, in key.taps order (tests, diagnostics)."""
        taps = self._tap_model(self._preprocess(images), training=False)
        return [np.asarray(tap, dtype=np.float32) for tap in taps]

    def extract(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch of same-size uint8 RGB images [N, H, W, 3] through the network.

        Returns:
            View name -> features [N, *feature_shape] in key.output_dtype (float32 by default).
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


class ExtractorSet:
    """The extractors of a run's backbones behind one extract(): every view from one pass each.

    A backbone is skipped for a batch whose images are smaller than its smallest view minimum
    (its views' rows become too_small; running it could fail or give garbage maps).
    """

    def __init__(self, members: Sequence[tuple[MLSPExtractor, int]]) -> None:
        self.members = list(members)
        self.images_forwarded = 0
        self._lock = threading.Lock()

    def weights_sha256_of(self, view_name: str) -> str:
        """sha256 of the weights of the backbone that fills view_name."""
        for extractor, _ in self.members:
            if view_name in dict(extractor.key.poolings):
                return extractor.weights_sha256
        raise KeyError(view_name)

    def extract(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """View name -> features [N, *feature_shape] (each key's output_dtype), for the views whose
        backbone ran."""
        outputs: dict[str, np.ndarray] = {}
        for extractor, min_side in self.members:
            if min(images.shape[1:3]) >= min_side:
                outputs.update(extractor.extract(images))
        with self._lock:
            self.images_forwarded += int(images.shape[0])
        return outputs


def get_extractor_set(keys: Sequence[tuple[ExtractorKey, int]]) -> ExtractorSet:
    """An ExtractorSet of the process-wide extractors of (key, minimum image side) pairs."""
    return ExtractorSet([(get_extractor(key), min_side) for key, min_side in keys])
