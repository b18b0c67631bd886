"""Head training on stored features: config, staged Adam schedule with early stopping, lineage."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from features.extraction.planning import package_version
from features.store import FeatureView
from features.training.heads import (
    bn_momentum_for,
    build_head,
    head_definition,
    initialise_output_bias,
    target_definition,
)
from features.training.input_stream import BlockReader, InputConfig, RowSelection, make_dataset
from features.training.input_stream import select_rows as select_split_rows
from features.training.labels import TrainingLabels
from schemas.config_fields import reject_unknown_fields
from schemas.errors import ConfigError

LOGGER = logging.getLogger(__name__)
MONITORS: dict[str, tuple[str, str]] = {"plcc": ("plcc", "max"), "loss": ("loss", "min")}
TRAIN_SPLIT, VAL_SPLIT = "train", "val"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (written into run.json).

    Attributes:
        store: feature store root.
        view: view name.
        labels: label table (.parquet) or raw AVA.txt.
        head: 'narrow' or 'wide'.
        target: 'mos' or 'distribution'.
        label_column: score column for the MOS target ('mos' or 'mos_recalibrated').
        label_noise: std of Gaussian noise added to MOS targets each epoch.
        batch_size: samples per batch (None: the head's reference size).
        epochs_per_stage: maximum epochs of each learning-rate stage.
        patience: early-stopping patience in epochs.
        monitor: validation quantity for early stopping ('plcc' or 'loss').
        seed: seed of weights init, shuffling, variants and label noise.
        shuffle_buffer: shuffle-buffer capacity in samples.
        learning_rates: stage learning rates (empty: the head's reference schedule).
        bn_momentum: batch-norm momentum (None: about one epoch, at most the reference 0.99).
        read_threads: store blocks read concurrently ahead of training.
    """

    store: str
    view: str
    labels: str
    head: str = "narrow"
    target: str = "mos"
    label_column: str = "mos"
    label_noise: float = 0.0
    batch_size: int | None = None
    epochs_per_stage: int = 20
    patience: int = 5
    monitor: str = "plcc"
    seed: int = 0
    shuffle_buffer: int = 4096
    learning_rates: tuple[float, ...] = field(default_factory=tuple)
    bn_momentum: float | None = None
    read_threads: int = 1

    def __post_init__(self) -> None:
        head_definition(self.head)
        target_definition(self.target)
        object.__setattr__(self, "learning_rates", tuple(float(r) for r in self.learning_rates))
        checks = {
            "--epochs-per-stage": self.epochs_per_stage >= 1,
            "--patience": self.patience >= 1,
            "--batch-size": self.batch_size is None or self.batch_size >= 1,
            "--shuffle-buffer": self.shuffle_buffer >= 1,
            "--read-threads": self.read_threads >= 1,
            "--label-noise": self.label_noise >= 0.0,
            "--learning-rates": all(rate > 0 for rate in self.learning_rates),
            "--bn-momentum": self.bn_momentum is None or 0.0 < self.bn_momentum < 1.0,
        }
        for flag, valid in checks.items():
            if not valid:
                raise ConfigError(f"{flag}: invalid value in {self.to_dict()}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"--monitor {self.monitor!r}: choose from {sorted(MONITORS)}")
        if self.label_noise > 0 and self.target != "mos":
            raise ConfigError("--label-noise applies to --target mos only")

    @property
    def effective_batch_size(self) -> int:
        """The batch size used: the given one or the head's reference size."""
        return self.batch_size or head_definition(self.head).batch_size

    @property
    def effective_learning_rates(self) -> tuple[float, ...]:
        """The stage learning rates used."""
        return self.learning_rates or head_definition(self.head).learning_rates

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        data = asdict(self)
        data["learning_rates"] = list(self.learning_rates)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of to_dict.

        Raises:
            ConfigError: unknown fields or invalid values.
        """
        reject_unknown_fields(cls, data, "train config")
        values = dict(data)
        values["learning_rates"] = tuple(values.get("learning_rates") or ())
        return cls(**values)


@dataclass
class TrainingResult:
    """A trained head and what happened while training it."""

    model: Any
    history: list[dict[str, Any]]
    selections: dict[str, RowSelection]
    monitor: str
    bn_momentum: float


def default_variant(variants: Sequence[str]) -> int:
    """Variant used when one fixed variant is needed: 'orig' if stored, else the first."""
    return list(variants).index("orig") if "orig" in variants else 0


def select_training_rows(
    view: FeatureView, labels: TrainingLabels, config: TrainConfig
) -> dict[str, RowSelection]:
    """Train and validation selections; logs what was skipped and why.

    Raises:
        ConfigError: no usable training rows.
    """
    index = view.committed_index()
    column = target_definition(config.target).label_column
    selections = {
        split: select_split_rows(index, labels, split, column) for split in (TRAIN_SPLIT, VAL_SPLIT)
    }
    for split, selection in selections.items():
        LOGGER.info(
            "%s: %d rows usable, skipped %s", split, len(selection), dict(selection.skipped)
        )
    if len(selections[TRAIN_SPLIT]) == 0:
        raise ConfigError(
            f"--labels {config.labels}: no usable training rows in view {view.name!r} "
            f"(skipped: {dict(selections[TRAIN_SPLIT].skipped)})"
        )
    return selections


def _datasets(
    view: FeatureView, selections: dict[str, RowSelection], config: TrainConfig
) -> tuple[Any, Any]:
    batch = config.effective_batch_size
    train_input = InputConfig(
        batch_size=batch,
        shuffle=True,
        seed=config.seed,
        shuffle_buffer=config.shuffle_buffer,
        label_noise=config.label_noise,
        read_threads=config.read_threads,
    )
    train = make_dataset(BlockReader(view, selections[TRAIN_SPLIT], train_input))
    if len(selections[VAL_SPLIT]) < 2:
        LOGGER.warning("fewer than 2 validation rows: early stopping watches the training set")
        return train, None
    val_input = InputConfig(
        batch_size=batch,
        shuffle=False,
        variant_mode="fixed",
        variant=default_variant(view.spec.variants),
        read_threads=config.read_threads,
    )
    return train, make_dataset(BlockReader(view, selections[VAL_SPLIT], val_input))


def compile_head(model: Any, target: str, learning_rate: float) -> None:
    """Compile with Adam, the target's loss and the streaming PLCC metric."""
    import keras

    from features.training.keras_objects import LOSSES, StreamingPLCC

    definition = target_definition(target)
    reader = "distribution" if definition.name == "distribution" else "value"
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=LOSSES[definition.loss],
        metrics=[StreamingPLCC(score_reader=reader)],
    )


@dataclass(frozen=True)
class StageFit:
    """One learning-rate stage: its number, rate, early-stopping monitor and Keras options."""

    stage: int
    learning_rate: float
    monitor: str
    mode: str
    callbacks: list[Any]
    verbose: int | str


def fit_stage(
    model: Any, train: Any, val: Any, config: TrainConfig, stage: StageFit, first_epoch: int
) -> list[dict[str, Any]]:
    """Compile with Adam at the stage's rate, fit with early stopping; best weights restored.

    Returns:
        History rows of the stage's epochs (global epoch number, stage, rate, logs, best flag).
    """
    import keras

    LOGGER.info(
        "stage %d: Adam lr %g, up to %d epochs",
        stage.stage,
        stage.learning_rate,
        config.epochs_per_stage,
    )
    compile_head(model, config.target, stage.learning_rate)
    stopper = keras.callbacks.EarlyStopping(
        monitor=stage.monitor, patience=config.patience, mode=stage.mode, restore_best_weights=True
    )
    fitted = model.fit(
        train,
        validation_data=val,
        epochs=config.epochs_per_stage,
        callbacks=[stopper, *stage.callbacks],
        verbose=stage.verbose,
        shuffle=False,  # the dataset shuffles itself (blocks, then a buffer)
    )
    rows = []
    for epoch in range(len(fitted.history["loss"])):
        logs = {key: float(values[epoch]) for key, values in fitted.history.items()}
        rows.append(
            {
                "epoch": first_epoch + epoch,
                "stage": stage.stage,
                "learning_rate": stage.learning_rate,
                **logs,
                "best_of_stage": epoch == stopper.best_epoch,
            }
        )
    return rows


def train_head(
    view: FeatureView,
    labels: TrainingLabels,
    config: TrainConfig,
    callbacks: Sequence[Any] = (),
    verbose: int | str = "auto",
) -> TrainingResult:
    """Train a head in learning-rate stages, restoring the best weights after each stage.

    Args:
        view: the feature view to stream from.
        labels: training labels (splits 'train' and 'val' are used).
        config: run configuration.
        callbacks: extra Keras callbacks (e.g. TensorBoard).
        verbose: Keras progress verbosity.

    Returns:
        The trained model, the per-epoch history and the row selections.

    Raises:
        ConfigError: the head does not fit the view, or no usable training rows.
    """
    import keras

    keras.utils.set_random_seed(config.seed)
    selections = select_training_rows(view, labels, config)
    steps = -(-len(selections[TRAIN_SPLIT]) // config.effective_batch_size)
    momentum = config.bn_momentum or bn_momentum_for(steps)
    LOGGER.info("%d steps per epoch; batch-norm momentum %g", steps, momentum)
    spec = view.spec
    model = build_head(
        config.head, spec.feature_shape, config.target, momentum, spec.pyramid_layout
    )
    initialise_output_bias(model, selections[TRAIN_SPLIT].targets)
    train, val = _datasets(view, selections, config)
    name, mode = MONITORS[config.monitor]
    monitor = f"val_{name}" if val is not None else name
    history: list[dict[str, Any]] = []
    for stage, rate in enumerate(config.effective_learning_rates, start=1):
        stage_fit = StageFit(stage, rate, monitor, mode, list(callbacks), verbose)
        history += fit_stage(model, train, val, config, stage_fit, first_epoch=len(history))
    return TrainingResult(model, history, selections, monitor, momentum)


def lineage(
    config: TrainConfig, view: FeatureView, labels: TrainingLabels, result: TrainingResult
) -> dict[str, Any]:
    """The run.json contents: config, view spec, label version, selections and outcome."""
    import keras
    import tensorflow as tf

    best = [row for row in result.history if row["best_of_stage"]]
    return {
        "config": config.to_dict(),
        "store": config.store,
        "view": view.name,
        "view_spec": view.spec.to_dict(),
        "store_snapshot": view.last_read,  # snapshot read (+ shards after it): pass as_of to redo
        "feature_shape": list(view.spec.feature_shape),
        "label_version": labels.label_version,
        "labels_source": labels.source,
        "seed": config.seed,
        "batch_size": config.effective_batch_size,
        "learning_rates": list(config.effective_learning_rates),
        "monitor": result.monitor,
        "bn_momentum": result.bn_momentum,
        "rows": {split: len(sel) for split, sel in result.selections.items()},
        "skipped": {split: dict(sel.skipped) for split, sel in result.selections.items()},
        "best_epochs": best,
        "epochs_run": len(result.history),
        "package_version": package_version(),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
