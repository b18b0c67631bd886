"""Argv of every CLI the DAG calls, and the Beam operator's pipeline options (pure, no Airflow)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from orchestration.config import METRIC_SETS, VIEWS, PipelineConfig, join, short_view
from pipelines.runners import RUNNERS
from schemas.errors import ConfigError
from schemas.view_spec import PREDEFINED_VIEWS


def download_argv(config: PipelineConfig, retry_failed: bool = False) -> list[str]:
    """Argv of `pipelines.download` (resumes from DATA_ROOT/downloads.parquet).

    Args:
        config: the run configuration.
        retry_failed: only re-fetch the items whose previous status is a failure.

    Returns:
        The argv list.
    """
    settings = config.download
    argv = [
        *("--dataset", config.dataset, "--dest", config.data_root, "--source", config.source),
        *("--workers", str(settings.workers), "--retries", str(settings.retries)),
        *("--timeout", repr(float(settings.timeout)), "--backoff", repr(float(settings.backoff))),
    ]
    if config.label_list:
        argv += ["--list", config.label_list]
    for split_file in config.split_files:
        argv += ["--split-file", split_file]
    if config.sha256:
        argv += ["--sha256", config.sha256]
    return [*argv, "--retry-failed"] if retry_failed else argv


def labels_argv(config: PipelineConfig) -> list[str]:
    """Argv of `pipelines.labels` (raw label files and manifest from the download).

    Returns:
        The argv list.
    """
    settings = config.labels
    return [
        *("--dataset", config.dataset, "--raw", join(config.data_root, "raw")),
        *("--manifest", config.manifest_path, "--out", config.labels_path),
        *("--seed", str(settings.seed), "--test-fraction", repr(float(settings.test_fraction))),
        *("--val-fraction", repr(float(settings.val_fraction))),
    ]


def extract_options(config: PipelineConfig, view: str) -> dict[str, Any]:
    """Pipeline options of the Beam operator that fills one view (flag name -> value).

    The operator turns {"shard-size": 64, "view": ["v"], "fail-on-errors": True} into
    --shard-size=64 --view=v --fail-on-errors; runner_options pass through to Beam.

    Args:
        config: the run configuration.
        view: short view name.

    Returns:
        The options dict (without the runner, which the operator adds).
    """
    options: dict[str, Any] = {
        "manifest": config.manifest_path,
        "store": config.store_root,
        "view": [VIEWS[short_view(view)]],
        "weights": config.weights,
    }
    optional = {
        "shard-size": config.shard_size,
        "max-side": config.max_side,
        "compression": config.compression,
    }
    options.update({key: value for key, value in optional.items() if value is not None})
    if config.variants != "orig":
        options["variants"] = config.variants
    if config.fail_on_errors:
        options["fail-on-errors"] = True
    options.update(config.runner_options or {})
    return options


def train_argv(config: PipelineConfig, view: str) -> list[str]:
    """Argv of `jobs.train` for one view (its spec's head: narrow for flat, wide for grid views).

    Returns:
        The argv list; --overwrite when head.retrain is set.
    """
    short = short_view(view)
    argv = [
        *("--store", config.store_root, "--view", VIEWS[short], "--labels", config.labels_path),
        *("--head", PREDEFINED_VIEWS[VIEWS[short]].head, "--out", config.run_dir(short), "--quiet"),
        *config.head.argv(),
    ]
    return [*argv, "--overwrite"] if config.head.retrain else argv


def evaluate_argv(config: PipelineConfig, view: str) -> list[str]:
    """Argv of `jobs.evaluate` for one view's run (outputs in RUNS_ROOT/VIEW/eval_SPLIT).

    Returns:
        The argv list.
    """
    return [
        *("--run", config.run_dir(view), "--split", config.evaluate_split),
        *("--metrics", METRIC_SETS[config.dataset], "--out", config.eval_dir(view)),
    ]


def reference_predictions_path(config: PipelineConfig) -> str:
    """Predictions of the reference model: the given file, or one predicted into DATA_ROOT.

    The predicted file's name hashes the reference run, so another reference predicts anew.

    Returns:
        A Parquet path with image_id, prediction.
    """
    if config.reference_predictions:
        return config.reference_predictions
    digest = hashlib.sha256(config.reference_run.encode()).hexdigest()[:12]
    return join(config.recalibration_dir, f"reference_predictions-{digest}.parquet")


def predict_argv(config: PipelineConfig) -> list[str]:
    """Argv of `jobs.predict`: the reference model scores this dataset's images.

    Returns:
        The argv list.
    """
    return [
        *("--run", config.reference_run, "--images", config.manifest_path),
        *("--out", reference_predictions_path(config)),
    ]


def recalibrate_argv(config: PipelineConfig) -> list[str]:
    """Argv of `jobs.recalibrate` (labels fitted to the reference model's predictions).

    Returns:
        The argv list.

    Raises:
        ConfigError: no score range is known for the dataset.
    """
    score_range = config.score_range
    if score_range is None:
        raise ConfigError(f"recalibration_range: needed for {config.dataset}")
    lo, hi = score_range
    return [
        *("--labels", config.labels_path, "--predictions", reference_predictions_path(config)),
        *("--range", f"{lo!r},{hi!r}", "--out", config.recalibration_dir),
    ]


def cli_runner_argv(argv: Sequence[str]) -> list[str]:
    """Map Beam runner names in argv to the extract CLI's (--runner=DataflowRunner -> dataflow).

    The Beam operator always passes --runner=<Beam name>; the CLI takes short names.

    Args:
        argv: arguments as the operator passes them.

    Returns:
        The arguments with --runner translated; short names are left as they are.
    """
    by_beam_name = {entry.beam_name.lower(): name for name, entry in RUNNERS.items()}
    out: list[str] = []
    for arg in argv:
        if arg.startswith("--runner="):
            value = arg.split("=", 1)[1]
            arg = f"--runner={by_beam_name.get(value.lower(), value)}"
        out.append(arg)
    return out
