"""Argv of every CLI the DAG calls, from a PipelineConfig via pipelines.stage_argv (no Airflow)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from orchestration.config import METRIC_SETS, VIEWS, PipelineConfig, join, short_view
from pipelines import stage_argv
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
    return stage_argv.download_argv(
        config.dataset,
        config.data_root,
        config.source,
        label_list=config.label_list or None,
        split_files=config.split_files,
        sha256=config.sha256 or None,
        workers=settings.workers,
        retries=settings.retries,
        timeout=float(settings.timeout),
        backoff=float(settings.backoff),
        retry_failed=retry_failed,
    )


def labels_argv(config: PipelineConfig) -> list[str]:
    """Argv of `pipelines.labels` (raw label files and manifest from the download).

    Returns:
        The argv list.
    """
    settings = config.labels
    return stage_argv.labels_argv(
        config.dataset,
        join(config.data_root, "raw"),
        config.manifest_path,
        config.labels_path,
        seed=settings.seed,
        test_fraction=float(settings.test_fraction),
        val_fraction=float(settings.val_fraction),
        max_malformed_share=settings.max_malformed_share,
    )


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
    options = stage_argv.extract_options(
        config.manifest_path,
        config.store_root,
        [VIEWS[short_view(view)]],
        config.weights,
        shard_size=config.shard_size,
        max_side=config.max_side,
        compression=config.compression,
        variants=None if config.variants == "orig" else config.variants,
        fail_on_errors=config.fail_on_errors,
    )
    options.update(config.runner_options or {})
    return options


def train_argv(config: PipelineConfig, view: str) -> list[str]:
    """Argv of `jobs.train` for one view (its spec's head: narrow for flat, wide for grid views).

    Returns:
        The argv list; --overwrite when head.retrain is set.
    """
    short = short_view(view)
    return stage_argv.train_argv(
        config.store_root,
        VIEWS[short],
        config.labels_path,
        PREDEFINED_VIEWS[VIEWS[short]].head,
        config.run_dir(short),
        settings=config.head.argv(),
        quiet=True,
        overwrite=config.head.retrain,
    )


def evaluate_argv(config: PipelineConfig, view: str) -> list[str]:
    """Argv of `jobs.evaluate` for one view's run (outputs in RUNS_ROOT/VIEW/eval_SPLIT).

    Returns:
        The argv list.
    """
    return stage_argv.evaluate_argv(
        config.run_dir(view),
        config.evaluate_split,
        metrics=METRIC_SETS[config.dataset],
        out=config.eval_dir(view),
    )


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
