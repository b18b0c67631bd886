"""Calibration files: pooled and per-group maps fitted on label tables, and applying them."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features.labels.recalibration import MAP_CHOICES, FitResult, RecalibrationConfig, fit
from schemas.errors import ConfigError, RecalibrationError
from schemas.labels import (
    PREDICTIONS_COLUMNS,
    RECALIBRATED_COLUMN,
    RECALIBRATED_LABELS_SCHEMA,
    label_version,
)

LOGGER = logging.getLogger(__name__)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Calibration:
    """What calibration.json holds: the fits, which one is applied, and the input versions."""

    config: RecalibrationConfig
    pooled: FitResult
    by: str | None = None
    groups: dict[str, FitResult] = field(default_factory=dict)
    use: str = "pooled"
    source_label_versions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.use not in MAP_CHOICES:
            raise ConfigError(f"--use {self.use!r}: choose one of {', '.join(MAP_CHOICES)}")
        if self.use == "group" and not self.by:
            raise ConfigError("--use group needs --by")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (calibration.json)."""
        return {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "by": self.by,
            "use": self.use,
            "pooled": self.pooled.to_dict(),
            "groups": {name: result.to_dict() for name, result in self.groups.items()},
            "source_label_versions": list(self.source_label_versions),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Inverse of to_dict.

        Raises:
            ConfigError: an unsupported format version or a malformed entry.
        """
        if data.get("format_version") != FORMAT_VERSION:
            raise ConfigError(
                f"calibration file: unsupported format_version "
                f"{data.get('format_version')!r} (expected {FORMAT_VERSION})"
            )
        try:
            return cls(
                config=RecalibrationConfig.from_dict(data["config"]),
                pooled=FitResult.from_dict(data["pooled"]),
                by=data.get("by"),
                groups={k: FitResult.from_dict(v) for k, v in data["groups"].items()},
                use=data.get("use", "pooled"),
                source_label_versions=tuple(data.get("source_label_versions", ())),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"calibration file: malformed ({error!r})") from error

    def to_json(self) -> str:
        """Stable JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def digest_parameters(self) -> dict[str, Any]:
        """What decides the mapped values (feeds the new label_version)."""
        maps = {name: result.map.to_dict() for name, result in self.groups.items()}
        return {"pooled": self.pooled.map.to_dict(), "groups": maps, "by": self.by, "use": self.use}


def join_predictions(labels: pd.DataFrame, predictions: pd.DataFrame, column: str) -> pd.DataFrame:
    """Inner join of labels and predictions on image_id.

    Raises:
        RecalibrationError: missing columns, duplicate prediction ids, or no common ids.
    """
    missing = [name for name in PREDICTIONS_COLUMNS if name not in predictions.columns]
    if missing:
        raise RecalibrationError(f"--predictions: missing column(s) {missing}")
    if column not in labels.columns:
        raise RecalibrationError(f"--labels: no column {column!r}")
    if predictions["image_id"].duplicated().any():
        raise RecalibrationError("--predictions: image_id values repeat")
    joined = labels.merge(predictions[list(PREDICTIONS_COLUMNS)], on="image_id", how="inner")
    if joined.empty:
        raise RecalibrationError(
            f"--labels and --predictions share no image ids ({len(labels)} labels, "
            f"{len(predictions)} predictions, e.g. {labels['image_id'].head(3).tolist()} vs "
            f"{predictions['image_id'].head(3).tolist()})"
        )
    LOGGER.info("%d of %d labelled images have a prediction", len(joined), len(labels))
    return joined


def fit_calibration(
    joined: pd.DataFrame, config: RecalibrationConfig, column: str, by: str | None, use: str
) -> Calibration:
    """Fit the pooled map and, with `by`, one map per group.

    Raises:
        RecalibrationError: a group (or the pool) cannot be fitted; the message names it.
    """
    y, p = joined[column].to_numpy(np.float64), joined["prediction"].to_numpy(np.float64)
    pooled = fit(y, p, config, "pooled")
    groups = {}
    if by is not None:
        if by not in joined.columns:
            raise RecalibrationError(f"--by {by!r}: no such column in --labels")
        for name, part in joined.groupby(joined[by].astype("string").fillna("<null>")):
            groups[str(name)] = fit(
                part[column].to_numpy(np.float64),
                part["prediction"].to_numpy(np.float64),
                config,
                f"group {by}={name}",
            )
    versions = sorted(set(joined["label_version"])) if "label_version" in joined else []
    return Calibration(config, pooled, by, groups, use, tuple(versions))


def apply_calibration(
    labels: pa.Table, calibration: Calibration, column: str = "mos"
) -> tuple[pa.Table, int]:
    """Add mos_recalibrated, keep the original column, and derive a new label_version.

    Returns:
        (RECALIBRATED_LABELS_SCHEMA table, rows whose group had no map and used the pooled one).

    Raises:
        RecalibrationError: the table lacks the column to map or the grouping column.
    """
    frame = labels.to_pandas()
    if column not in frame.columns:
        raise RecalibrationError(f"--labels: no column {column!r}")
    mapped = calibration.pooled.map.apply(frame[column].to_numpy(np.float64))
    fallback = 0
    if calibration.use == "group":
        if calibration.by not in frame.columns:
            raise RecalibrationError(f"--labels: no column {calibration.by!r} to pick group maps")
        keys = frame[calibration.by].astype("string").fillna("<null>")
        for name, result in calibration.groups.items():
            rows = (keys == name).to_numpy()
            mapped[rows] = result.map.apply(frame.loc[rows, column].to_numpy(np.float64))
        fallback = int((~keys.isin(set(calibration.groups))).sum())
    old_versions = sorted(set(labels.column("label_version").to_pylist()))
    version = label_version(
        {"labels": ",".join(old_versions)},
        {"calibration": calibration.digest_parameters(), "column": column},
    )
    table = (
        labels.drop_columns([RECALIBRATED_COLUMN])
        if RECALIBRATED_COLUMN in labels.column_names
        else labels
    )
    table = table.set_column(
        table.schema.get_field_index("label_version"),
        "label_version",
        pa.array([version] * table.num_rows, pa.string()),
    )
    table = table.append_column(RECALIBRATED_COLUMN, pa.array(mapped, pa.float64()))
    return table.select(RECALIBRATED_LABELS_SCHEMA.names).cast(RECALIBRATED_LABELS_SCHEMA), fallback
