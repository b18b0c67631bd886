"""DAG params as plain (default, JSON schema) specs, built from the config defaults (no Airflow)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from orchestration.config import DATASETS, DEFAULT_VIEWS, NESTED_SETTINGS, VIEWS
from orchestration.settings import HEAD_TARGETS
from pipelines.runners import RUNNERS

DATA_ROOT_ENV = "MLSP_DATA_ROOT"
DEFAULT_DATA_ROOT = "/tmp/mlsp"
_STRING = {"type": "string"}
_NULL_OR_POSITIVE = {"type": ["null", "integer"], "minimum": 1}
_NUMBER = {"type": "number"}
# features.store.backends.COMPRESSIONS, not imported: parsing the DAG imports no pyarrow.
COMPRESSION_CHOICES = (None, "lz4", "none", "zstd")

_NESTED_SCHEMAS: dict[str, dict[str, Any]] = {
    "download": {
        "workers": {"type": "integer", "minimum": 1},
        "retries": {"type": "integer", "minimum": 0},
        "timeout": {"type": "number", "exclusiveMinimum": 0},
        "backoff": {"type": "number", "exclusiveMinimum": 0},
        "max_failed_fraction": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "labels": {
        "seed": {"type": "integer"},
        "test_fraction": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "val_fraction": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        # null: the labels CLI's default (0.01); AVA only.
        "max_malformed_share": {"type": ["number", "null"], "minimum": 0, "exclusiveMaximum": 1},
    },
    "head": {
        "epochs_per_stage": {"type": "integer", "minimum": 1},
        "patience": {"type": "integer", "minimum": 1},
        "batch_size": _NULL_OR_POSITIVE,
        "learning_rates": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}},
        "target": {"type": "string", "enum": list(HEAD_TARGETS)},
        "label_noise": {"type": "number", "minimum": 0},
        "seed": {"type": "integer"},
        "retrain": {"type": "boolean"},
    },
}


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "description": description}


def _nested_specs() -> dict[str, dict[str, Any]]:
    return {
        name: {
            "default": settings_cls().to_dict(),
            "type": "object",
            "properties": _NESTED_SCHEMAS[name],
            "additionalProperties": False,
            "description": f"{name} settings (see orchestration.config.{settings_cls.__name__})",
        }
        for name, settings_cls in NESTED_SETTINGS.items()
    }


def _data_specs() -> dict[str, dict[str, Any]]:
    data_root = os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT)
    return {
        "dataset": {"default": "ava", "type": "string", "enum": list(DATASETS)},
        "source": _described(
            {"default": "", **_STRING}, "URL template, URL prefix, folder, archives"
        ),
        "label_list": _described({"default": "", **_STRING}, "AVA.txt (ava) or CSV (folder)"),
        "split_files": {"default": [], "type": "array", "items": _STRING},
        "sha256": _described({"default": "", **_STRING}, "SCUT-FBP5500 zip digest"),
        "data_root": _described({"default": data_root, **_STRING, "minLength": 1}, "local folder"),
        "store_root": _described({"default": "", **_STRING}, "'' = DATA_ROOT/store; or gs://"),
        "runs_root": _described({"default": "", **_STRING}, "'' = DATA_ROOT/runs; or gs://"),
    }


def _extract_specs() -> dict[str, dict[str, Any]]:
    return {
        "views": {
            "default": list(DEFAULT_VIEWS),
            "type": "array",
            "items": {"type": "string", "enum": list(VIEWS)},
            "minItems": 1,
            "uniqueItems": True,
        },
        "variants": _described({"default": "orig", **_STRING}, "orig, train8, tta18 or a list"),
        "weights": _described({"default": "imagenet", **_STRING}, "imagenet, PATH.h5, random:N"),
        "runner": {"default": "direct", "type": "string", "enum": sorted(RUNNERS)},
        "runner_options": _described({"default": {}, "type": "object"}, "extra Beam options"),
        "shard_size": {"default": None, **_NULL_OR_POSITIVE},
        "max_side": {"default": None, **_NULL_OR_POSITIVE},
        "compression": _described(
            {"default": None, "type": ["null", "string"], "enum": list(COMPRESSION_CHOICES)},
            "new views: null = lz4 (fast reads), zstd (smallest, slow reads), none (largest)",
        ),
        "fail_on_errors": {"default": False, "type": "boolean"},
    }


def _evaluation_specs() -> dict[str, dict[str, Any]]:
    return {
        "evaluate_split": {"default": "test", "type": "string", "enum": ["train", "val", "test"]},
        "reference_run": _described({"default": "", **_STRING}, "recalibrate against this run"),
        "reference_predictions": _described({"default": "", **_STRING}, "or these predictions"),
        "recalibration_range": {
            "default": None,
            "type": ["null", "array"],
            "items": _NUMBER,
            "minItems": 2,
            "maxItems": 2,
        },
        "gcp_conn_id": {"default": "google_cloud_default", **_STRING},
        "gcp_project": _described({"default": "", **_STRING}, "'' = the connection's project"),
        "gcp_region": _described({"default": "", **_STRING}, "Dataflow region"),
    }


def param_specs() -> dict[str, dict[str, Any]]:
    """Every DAG param: {name: {"default": value, **JSON schema keywords}}.

    The DAG wraps each as airflow.sdk.Param(default, **schema); PipelineConfig.from_dict
    validates the same values again (cross-field rules included) in the configure task.

    Returns:
        The param specs, in display order.
    """
    return {**_data_specs(), **_extract_specs(), **_nested_specs(), **_evaluation_specs()}


DATAFLOW_PARAMS = ("gcp_conn_id", "gcp_project", "gcp_region")


def config_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params PipelineConfig takes (drops the Dataflow connection params).

    Args:
        params: the DAG run's params.

    Returns:
        A copy without the Dataflow-only keys.
    """
    return {key: value for key, value in params.items() if key not in DATAFLOW_PARAMS}
