"""Registered Keras objects: NIMA's EMD loss, an exact streaming PLCC, the scoring model's layers.

This is the one module of ours that imports Keras at module level. Import it lazily (inside the
function that needs it), so CLIs answer --help and modules import without TensorFlow; loading a
saved model through features.training.run_outputs.load_keras_model imports it to register these objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from features.model.backbones import PREPROCESSING
from features.model.mlsp import pool_taps
from schemas.view_spec import PoolingSpec

SCORE_READERS = ("value", "distribution")


@keras.saving.register_keras_serializable(package="mlsp", name="earth_movers_distance")
def earth_movers_distance(y_true: Any, y_pred: Any) -> Any:
    """Per-item EMD with r=2 between [N, bins] distributions (NIMA), via their CDFs."""
    cdf_true = ops.cumsum(ops.cast(y_true, y_pred.dtype), axis=-1)
    cdf_pred = ops.cumsum(y_pred, axis=-1)
    return ops.sqrt(ops.mean(ops.square(cdf_true - cdf_pred), axis=-1))


def expected_score(distribution: Any) -> Any:
    """sum(i * p_i) over bins 1..B of [N, B] distributions, as [N]."""
    bins = ops.shape(distribution)[-1]
    scores = ops.cast(ops.arange(1, bins + 1), distribution.dtype)
    return ops.sum(distribution * scores, axis=-1) / ops.sum(distribution, axis=-1)


@keras.saving.register_keras_serializable(package="mlsp", name="StreamingPLCC")
class StreamingPLCC(keras.metrics.Metric):
    """Pearson correlation over a whole epoch from running float64 sums (exact, not batch-mean).

    With score_reader='distribution', both truth and prediction are [N, bins] distributions and
    the correlation is taken between their expected scores.
    """

    def __init__(self, name: str = "plcc", score_reader: str = "value", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if score_reader not in SCORE_READERS:
            raise ValueError(f"score_reader must be one of {SCORE_READERS}, got {score_reader!r}")
        self.score_reader = score_reader
        self._sums = [
            self.add_variable(shape=(), initializer="zeros", dtype="float64", name=part)
            for part in ("n", "x", "y", "xx", "yy", "xy")
        ]

    def _scores(self, values: Any) -> Any:
        values = ops.cast(values, "float64")
        if self.score_reader == "distribution":
            return expected_score(values)
        return ops.reshape(values, (-1,))

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Add a batch to the running sums (sample_weight is not supported and ignored)."""
        x, y = self._scores(y_true), self._scores(y_pred)
        increments = (
            ops.cast(ops.shape(x)[0], "float64"),
            ops.sum(x),
            ops.sum(y),
            ops.sum(x * x),
            ops.sum(y * y),
            ops.sum(x * y),
        )
        for variable, increment in zip(self._sums, increments, strict=True):
            variable.assign_add(increment)

    def result(self) -> Any:
        """PLCC of everything seen since the last reset (0 when undefined)."""
        n, x, y, xx, yy, xy = self._sums
        covariance = xy - x * y / ops.maximum(n, 1.0)
        variance_x = xx - x * x / ops.maximum(n, 1.0)
        variance_y = yy - y * y / ops.maximum(n, 1.0)
        denominator = ops.sqrt(ops.maximum(variance_x * variance_y, 0.0))
        return ops.where(denominator > 0, covariance / ops.maximum(denominator, 1e-300), 0.0)

    def reset_state(self) -> None:
        """Zero the sums."""
        for variable in self._sums:
            variable.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        """Serialisable config."""
        return {**super().get_config(), "score_reader": self.score_reader}


LOSSES: dict[str, Any] = {
    "mean_squared_error": "mean_squared_error",
    "earth_movers_distance": earth_movers_distance,
}


@keras.saving.register_keras_serializable(package="mlsp", name="InceptionPreprocess")
class InceptionPreprocess(keras.layers.Layer):
    """uint8 RGB -> x / 127.5 - 1 (inception_resnet_v2.preprocess_input, as extraction does)."""

    def call(self, images: Any) -> Any:
        """Scale pixels to [-1, 1]."""
        return ops.cast(images, "float32") / 127.5 - 1.0


@keras.saving.register_keras_serializable(package="mlsp", name="ImagePreprocess")
class ImagePreprocess(keras.layers.Layer):
    """uint8 RGB -> the backbone's input (features.model.backbones.PREPROCESSING[mode])."""

    def __init__(self, mode: str = "inception", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in PREPROCESSING:
            raise ValueError(f"preprocessing {mode!r}: choose from {sorted(PREPROCESSING)}")
        self.mode = mode

    def call(self, images: Any) -> Any:
        """Preprocess as extraction does."""
        return PREPROCESSING[self.mode](images)

    def get_config(self) -> dict[str, Any]:
        """Serialisable config."""
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="mlsp", name="PoolTaps")
class PoolTaps(keras.layers.Layer):
    """MLSP pooling of the tap outputs (features.model.mlsp.pool_taps) inside a Keras model."""

    def __init__(
        self,
        kind: str = "gap",
        grid: Sequence[int] | None = None,
        levels: Sequence[int] | None = None,
        size_groups: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pooling = PoolingSpec(
            kind,
            tuple(grid) if grid is not None else None,  # type: ignore[arg-type]
            tuple(levels) if levels is not None else None,
        )
        self.size_groups = None if size_groups is None else tuple(size_groups)

    def call(self, taps: Sequence[Any]) -> Any:
        """Pool and concatenate the taps in float32."""
        return pool_taps([ops.cast(tap, "float32") for tap in taps], self.pooling, self.size_groups)

    def get_config(self) -> dict[str, Any]:
        """Serialisable config (size_groups only when set, so older configs keep their keys)."""
        config = {**super().get_config(), **self.pooling.to_dict()}
        if self.size_groups is not None:
            config["size_groups"] = list(self.size_groups)
        return config


@keras.saving.register_keras_serializable(package="mlsp", name="PyramidBins")
class PyramidBins(keras.layers.Layer):
    """Flat spp features [N, bins * sum(C_tap)] -> [N, bins, sum(C_tap)] (schemas PyramidLayout).

    Each tap's segment reshapes to [bins, C_tap] (levels in order, each grid row-major with
    channels inner, as features.model.mlsp._spp writes it); the taps concatenate on channels.
    """

    def __init__(self, bins: int, tap_channels: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bins = int(bins)
        self.tap_channels = tuple(int(channels) for channels in tap_channels)

    def call(self, flat: Any) -> Any:
        """Regroup the taps' segments by bin."""
        pieces, start = [], 0
        for channels in self.tap_channels:
            stop = start + self.bins * channels
            pieces.append(ops.reshape(flat[:, start:stop], (-1, self.bins, channels)))
            start = stop
        return ops.concatenate(pieces, axis=-1)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        """[batch, bins, channels of all taps]."""
        return (input_shape[0], self.bins, sum(self.tap_channels))

    def get_config(self) -> dict[str, Any]:
        """Serialisable config."""
        return {**super().get_config(), "bins": self.bins, "tap_channels": list(self.tap_channels)}
