"""Labels for head training: a label table (schemas.labels) or, as a fallback, a raw AVA.txt."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from features import files
from features.labels.parsing import LabelReport, SplitConfig, assign_splits, ava_frame, version_for
from schemas.errors import ConfigError, LabelError
from schemas.labels import AVA_BINS, LABELS_SCHEMA, RECALIBRATED_COLUMN, conform_table

LOGGER = logging.getLogger(__name__)
SCORE_COLUMNS = ("mos", RECALIBRATED_COLUMN)


@dataclass(frozen=True)
class TrainingLabels:
    """Per-image targets, aligned by position.

    Attributes:
        image_ids: image ids (unique).
        scores: [N] float64 scores from the chosen column.
        distributions: [N, bins] float32 vote distributions (NaN rows where absent).
        splits: [N] split names.
        label_version: the table's label_version (or one computed for an AVA.txt).
        source: where the labels were read from.
        score_column: which column the scores came from.
    """

    image_ids: np.ndarray
    scores: np.ndarray
    distributions: np.ndarray
    splits: np.ndarray
    label_version: str
    source: str
    score_column: str = "mos"

    def __len__(self) -> int:
        return len(self.image_ids)

    def positions(self) -> dict[str, int]:
        """image_id -> position."""
        return {str(image_id): i for i, image_id in enumerate(self.image_ids)}


def _distributions(column: pa.ChunkedArray) -> np.ndarray:
    values = column.to_pylist()
    out = np.full((len(values), AVA_BINS), np.nan, dtype=np.float32)
    for position, value in enumerate(values):
        if value is not None and len(value) == AVA_BINS:
            out[position] = value
    return out


def read_label_table(path: str, score_column: str = "mos") -> TrainingLabels:
    """Read a labels.parquet (optionally recalibrated) written by pipelines.labels.

    Raises:
        LabelError: missing file, not a Parquet file, a table that does not match the labels
            schema, or no rows.
        ConfigError: score_column is not one of SCORE_COLUMNS or not in the table.
    """
    if score_column not in SCORE_COLUMNS:
        raise ConfigError(f"--label-column {score_column!r}: choose from {SCORE_COLUMNS}")
    table = files.read_parquet_as(path, "--labels", LabelError)
    if score_column not in table.column_names:
        raise ConfigError(f"--label-column {score_column!r}: not a column of {path}")
    scores = table.column(score_column).to_numpy().astype(np.float64)
    table = conform_table(table, LABELS_SCHEMA, path)
    if table.num_rows == 0:
        raise LabelError(f"{path}: the label table has no rows")
    versions = set(table.column("label_version").to_pylist())
    return TrainingLabels(
        image_ids=np.asarray(table.column("image_id").to_pylist(), dtype=object),
        scores=scores,
        distributions=_distributions(table.column("distribution")),
        splits=np.asarray(table.column("split").to_pylist(), dtype=object),
        label_version=",".join(sorted(versions)),
        source=path,
        score_column=score_column,
    )


def read_ava_text(path: str, score_column: str = "mos", seed: int = 0) -> TrainingLabels:
    """Fallback reader of a raw AVA.txt: MOS, distributions and a seeded hash split.

    Uses the same split rule as pipelines.labels (10 % test, 10 % of the rest val).

    Raises:
        LabelError: more than 1 % of its lines malformed (fewer are dropped with a warning).
        ConfigError: score_column is not 'mos' (raw files carry no recalibrated scores).
    """
    if score_column != "mos":
        raise ConfigError(f"--label-column {score_column!r}: an AVA.txt only has 'mos'")
    data = files.read_bytes(path)
    text = data.decode("utf-8", errors="surrogateescape")  # bad bytes: a malformed line
    frame: pd.DataFrame = ava_frame(text, path, LabelReport())
    config = SplitConfig(seed=seed)
    splits = assign_splits(frame["image_id"], config)
    LOGGER.warning("labels read from raw %s (no label table); splits drawn by hash", path)
    return TrainingLabels(
        image_ids=frame["image_id"].to_numpy(dtype=object),
        scores=frame["mos"].to_numpy(dtype=np.float64),
        distributions=np.stack(frame["distribution"].to_list()).astype(np.float32),
        splits=np.asarray([splits[i] for i in frame["image_id"]], dtype=object),
        label_version=version_for({Path(path).name: data}, "ava", config.to_dict()),
        source=path,
    )


LABEL_READERS: dict[str, Callable[[str, str], TrainingLabels]] = {
    ".parquet": read_label_table,
    ".txt": read_ava_text,
}


def load_training_labels(path: str, score_column: str = "mos") -> TrainingLabels:
    """Read labels by file type (.parquet label table, or .txt raw AVA votes).

    Raises:
        ConfigError: no such file, or an unsupported suffix (the message names --labels).
        LabelError: the file is malformed.
    """
    if not files.exists(path):
        raise ConfigError(f"--labels {path}: no such file")
    suffix = Path(path.split("?")[0]).suffix.lower()
    if suffix not in LABEL_READERS:
        raise ConfigError(
            f"--labels {path}: expected a label table (.parquet) or an AVA.txt (.txt)"
        )
    return LABEL_READERS[suffix](path, score_column)
