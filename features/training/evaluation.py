"""Evaluate a trained head on a split of a feature view, optionally averaging over variants (TTA)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from features import files
from features.store import FeatureView
from features.training.input_stream import RowSelection, iter_all_variants, select_rows
from features.training.labels import TrainingLabels
from features.training.metrics import (
    METRIC_SETS,
    MetricReport,
    compute_metrics,
    mos_from_distribution,
)
from features.training.run_outputs import MODEL_FILE, RUN_FILE, load_keras_model, read_json
from features.training.trainer import TrainConfig, default_variant
from schemas.errors import ConfigError
from schemas.labels import PREDICTIONS_COLUMNS

LOGGER = logging.getLogger(__name__)
Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TrainedRun:
    """A finished training run: its lineage, config and head.

    Attributes:
        path: run folder.
        record: run.json contents.
        config: the training config.
        model: the Keras head (not compiled).
    """

    path: str
    record: dict[str, Any]
    config: TrainConfig
    model: Any


def read_run(path: str) -> tuple[dict[str, Any], TrainConfig]:
    """A run folder's run.json and training config, without loading its model (cheap).

    Raises:
        ConfigError: not a finished run (no run.json, or one jobs.train did not write); the
            message names --run.
    """
    if not files.exists(files.join(path, RUN_FILE)):
        raise ConfigError(f"--run {path}: no {RUN_FILE} (not a finished training run)")
    try:
        record = read_json(files.join(path, RUN_FILE))
        return record, TrainConfig.from_dict(record["config"])
    except (KeyError, TypeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise ConfigError(
            f"--run {path}: {RUN_FILE} is not a training run's record ({error!r})"
        ) from None


def load_run(path: str) -> TrainedRun:
    """Open a run folder written by jobs.train.

    Raises:
        ConfigError: not a complete run (no run.json, or no readable model); the message names
            --run.
    """
    record, config = read_run(path)
    try:
        model = load_keras_model(files.join(path, MODEL_FILE))
    except (ValueError, OSError) as error:  # what Keras raises for a damaged .keras file
        detail = " ".join(str(error).split())
        raise ConfigError(f"--run {path}: {MODEL_FILE} cannot be loaded ({detail})") from None
    return TrainedRun(path, record, config, model)


def scores_from_outputs(outputs: np.ndarray) -> np.ndarray:
    """Head outputs [N, units] -> MOS [N]: the value itself, or the distribution's mean."""
    outputs = np.asarray(outputs, dtype=np.float64)
    return outputs[:, 0] if outputs.shape[1] == 1 else mos_from_distribution(outputs)


def keras_predictor(model: Any) -> Predictor:
    """Wrap a head as features [N, *shape] -> MOS [N] (inference mode)."""

    def predict(features: np.ndarray) -> np.ndarray:
        outputs = model.predict_on_batch(features.astype(np.float32))
        return scores_from_outputs(np.asarray(outputs))

    return predict


def predict_variants(
    predict: Predictor,
    view: FeatureView,
    selection: RowSelection,
    variants: list[int],
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Scores [n, len(variants)] of every selected row under each listed variant, in row order."""
    scores = np.empty((len(selection), len(variants)), dtype=np.float64)
    feature_shape = view.spec.feature_shape
    for values, positions in iter_all_variants(view, selection, batch_size, variants):
        flat = values.reshape(len(positions) * len(variants), *feature_shape)
        scores[positions] = predict(flat).reshape(len(positions), len(variants))
        if progress is not None:
            progress(len(positions))
    return scores


def evaluation_variants(view: FeatureView, tta: bool) -> list[int]:
    """All stored variants with TTA, else the single default variant ('orig' or the first)."""
    if tta:
        return list(range(len(view.spec.variants)))
    return [default_variant(view.spec.variants)]


@dataclass(frozen=True)
class Evaluation:
    """Predictions and metrics of one split.

    Attributes:
        image_ids: evaluated ids, in row order.
        truth: true scores.
        prediction: predicted scores (the mean over variants with TTA).
        variants: names of the variants averaged.
        report: metric values.
        skipped: reason -> count of split rows not evaluated.
    """

    image_ids: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    variants: tuple[str, ...]
    report: MetricReport
    skipped: dict[str, int]

    def predictions_table(self) -> pa.Table:
        """The predictions Parquet table (image_id, prediction) read by the recalibration job."""
        return pa.table(
            {
                PREDICTIONS_COLUMNS[0]: pa.array(self.image_ids.tolist(), pa.string()),
                PREDICTIONS_COLUMNS[1]: pa.array(self.prediction, pa.float64()),
            }
        )


def evaluate_split(
    predict: Predictor,
    view: FeatureView,
    labels: TrainingLabels,
    split: str,
    tta: bool = False,
    metric_set: str = "ava",
    threshold: float = 5.0,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Predict a split's usable rows and compute the metrics against the label scores.

    Raises:
        ConfigError: unknown metric set, or fewer than two usable rows in the split.
    """
    if metric_set not in METRIC_SETS:
        raise ConfigError(f"--metrics {metric_set!r}: choose from {sorted(METRIC_SETS)}")
    selection = select_rows(view.committed_index(), labels, split, "mos")
    if len(selection) < 2:
        raise ConfigError(
            f"--split {split!r}: {len(selection)} usable row(s) (skipped {dict(selection.skipped)})"
        )
    variants = evaluation_variants(view, tta)
    per_variant = predict_variants(predict, view, selection, variants, progress=progress)
    prediction = per_variant.mean(axis=1)
    truth = selection.targets[:, 0].astype(np.float64)
    report = compute_metrics(truth, prediction, METRIC_SETS[metric_set], threshold)
    return Evaluation(
        image_ids=selection.image_ids,
        truth=truth,
        prediction=prediction,
        variants=tuple(view.spec.variants[i] for i in variants),
        report=report,
        skipped=dict(selection.skipped),
    )
