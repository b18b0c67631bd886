"""Files of a training run (model, lineage JSON, history CSV, plots), all written atomically."""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from features import files
from schemas.errors import ConfigError

LOGGER = logging.getLogger(__name__)
MODEL_FILE = "model.keras"
RUN_FILE = "run.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"


def write_json(path: str, data: Mapping[str, Any]) -> None:
    """Sorted, indented JSON, published atomically (NaN is written as null)."""
    text = json.dumps(_nan_to_none(data), indent=2, sort_keys=True, default=str)
    files.atomic_write_text(path, text + "\n")


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    return value


def read_json(path: str) -> dict[str, Any]:
    """Read a JSON object.

    Raises:
        ConfigError: the file does not exist.
    """
    if not files.exists(path):
        raise ConfigError(f"{path}: no such file")
    return dict(json.loads(files.read_bytes(path)))


def write_history_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """One row per epoch (global epoch, stage, learning rate, losses and metrics)."""
    files.atomic_write_text(path, pd.DataFrame(list(rows)).to_csv(index=False))


def save_keras_model(model: Any, path: str) -> None:
    """Save a Keras model so readers never see a partial file.

    Local targets: saved to a temp file in the same directory, then os.replace'd over the
    target. URLs: saved locally, then uploaded whole (object stores publish on completion).
    """
    if not files.is_local(path):
        with tempfile.TemporaryDirectory() as scratch:
            local = os.path.join(scratch, os.path.basename(path))
            model.save(local)
            with open(local, "rb") as stream:
                files.atomic_write_bytes(path, stream.read())
        return
    target = path.removeprefix("file://")
    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(target)}.", suffix=".tmp.keras", dir=directory
    )
    os.close(descriptor)
    try:
        model.save(temporary)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def load_keras_model(path: str) -> Any:
    """Load a model saved by save_keras_model (inference only: not compiled).

    Raises:
        ConfigError: no such file.
    """
    import keras

    import features.training.keras_objects  # noqa: F401  (registers the custom objects)

    if not files.exists(path):
        raise ConfigError(f"{path}: no such model file")
    if files.is_local(path):
        return keras.models.load_model(path.removeprefix("file://"), compile=False)
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, os.path.basename(path))
        with open(local, "wb") as sink:
            sink.write(files.read_bytes(path))
        return keras.models.load_model(local, compile=False)


def _png(figure: Any) -> bytes:
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def curves_png(rows: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """Training curves: loss and PLCC per epoch (train and validation), stages marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    frame = pd.DataFrame(list(rows))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "plcc"), strict=True):
        for column, style in ((metric, "-"), (f"val_{metric}", "--")):
            if column in frame:
                axis.plot(frame["epoch"], frame[column], style, marker="o", ms=3, label=column)
        for start in frame.groupby("stage")["epoch"].min().iloc[1:]:
            axis.axvline(start - 0.5, color="grey", linewidth=0.8)
        axis.set_xlabel("epoch (grey lines: learning-rate stages)")
        axis.set_title(metric)
        axis.legend()
    figure.suptitle(title)
    return _png(figure)


def scatter_png(truth: np.ndarray, prediction: np.ndarray, title: str) -> bytes:
    """Prediction-vs-truth scatter with the identity line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.scatter(truth, prediction, s=8, alpha=0.6)
    low = float(min(np.min(truth), np.min(prediction)))
    high = float(max(np.max(truth), np.max(prediction)))
    axis.plot([low, high], [low, high], color="black", linewidth=1)
    axis.set_xlabel("truth")
    axis.set_ylabel("prediction")
    axis.set_title(title)
    return _png(figure)
