"""What each DAG task does, as plain functions of a PipelineConfig (testable without Airflow)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import math
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from features.download.secrets import redact_text
from orchestration import argv as argvs
from orchestration.config import VIEWS, PipelineConfig, join, short_view
from orchestration.params import config_params
from schemas.errors import ConfigError, OrchestrationError

LOGGER = logging.getLogger(__name__)
EXIT_MEANINGS: dict[int, str] = {
    1: "job error",
    2: "bad argument",
    3: "rows failed (--fail-on-errors)",
}
KEY_METRICS = ("srcc", "plcc", "krcc", "rmse", "mae", "accuracy", "pc")
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
CALIBRATION_FILE = "calibration.json"


def module_available(module: str) -> bool:
    """Whether a module can be imported (without importing it).

    Args:
        module: dotted module name.

    Returns:
        True when the module is found.
    """
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def require_modules(modules: Sequence[str]) -> None:
    """Fail early, naming the entry points that are not installed.

    Raises:
        OrchestrationError: some module cannot be found.
    """
    missing = [module for module in modules if not module_available(module)]
    if missing:
        raise OrchestrationError(f"entry point(s) not available: {', '.join(missing)}")


def run_step(module: str, argv: Sequence[str]) -> None:
    """Call `module.run(argv)` in this process, as `python -m module argv` would.

    Args:
        module: a CLI module with run(argv) -> int.
        argv: its arguments.

    Raises:
        OrchestrationError: the CLI returned a non-zero exit code.
    """
    command = redact_text(f"python -m {module} {shlex.join(argv)}")  # a --source may hold secrets
    LOGGER.info("running %s", command)
    code = importlib.import_module(module).run(list(argv))
    if code != 0:
        meaning = EXIT_MEANINGS.get(code, "unexpected exit code")
        raise OrchestrationError(f"{command} exited {code} ({meaning}); its log says why")


def _read_json(path: str) -> dict[str, Any]:
    from features import files

    if not files.exists(path):
        raise OrchestrationError(f"{path} is missing after its step succeeded")
    return json.loads(files.read_bytes(path))


def configure(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate DAG params; check the entry points the run needs.

    Args:
        params: the DAG run's params (defaults merged with --conf; Dataflow keys ignored).

    Returns:
        {"config": the config dict, "beam_runner": Beam's runner name,
        "extract_<view>": the Beam operator's pipeline options for each known view}.

    Raises:
        ConfigError: an invalid param (the message names it).
        OrchestrationError: a needed job module is not installed.
    """
    config = PipelineConfig.from_dict(config_params(params))
    needed = ["jobs.train", "jobs.evaluate"]
    if config.reference_run and not config.reference_predictions:
        needed.append("jobs.predict")
    if config.recalibrate:
        needed.append("jobs.recalibrate")
    require_modules(needed)
    if config.variants != "orig":
        from pipelines.extract import build_parser

        if "--variants" not in build_parser()._option_string_actions:
            raise ConfigError("variants: this version of pipelines.extract has no --variants")
    result: dict[str, Any] = {"config": config.to_dict(), "beam_runner": config.beam_runner}
    for view in VIEWS:
        result[f"extract_{view}"] = argvs.extract_options(config, view)
    LOGGER.info("configuration: %s", redact_text(json.dumps(result["config"], sort_keys=True)))
    return result


def download_counts(config: PipelineConfig) -> dict[str, int]:
    """Items and failures on record in DATA_ROOT/downloads.parquet.

    Returns:
        {"items": n, "ok": n, "failed": n}.
    """
    import pyarrow.parquet as pq

    from schemas.labels import SUCCESS_STATUSES

    statuses = pq.read_table(config.downloads_path, columns=["status"]).column("status")
    good = {str(status) for status in SUCCESS_STATUSES}
    ok = sum(1 for status in statuses.to_pylist() if status in good)
    return {"items": len(statuses), "ok": ok, "failed": len(statuses) - ok}


def download(config: PipelineConfig) -> dict[str, Any]:
    """Fetch (or resume) the dataset, then retry the items that failed once more.

    Returns:
        Paths of the manifest and status table, with item counts.

    Raises:
        OrchestrationError: the download failed, or more than download.max_failed_fraction
            of the items failed (Airflow retries the task with backoff; it resumes).
    """
    run_step("pipelines.download", argvs.download_argv(config))
    counts = download_counts(config)
    if counts["failed"]:
        LOGGER.warning("%d item(s) failed; retrying them once", counts["failed"])
        run_step("pipelines.download", argvs.download_argv(config, retry_failed=True))
        counts = download_counts(config)
    limit = config.download.max_failed_fraction
    if counts["items"] == 0 or counts["failed"] > limit * counts["items"]:
        raise OrchestrationError(
            f"download: {counts['failed']} of {counts['items']} item(s) failed (limit "
            f"{limit:.0%}); see {config.downloads_path}"
        )
    return {"manifest": config.manifest_path, "downloads": config.downloads_path, **counts}


def labels(config: PipelineConfig) -> dict[str, Any]:
    """Build DATA_ROOT/labels.parquet from the downloaded raw label files.

    Returns:
        The labels path and its row count.
    """
    import pyarrow.parquet as pq

    run_step("pipelines.labels", argvs.labels_argv(config))
    return {"labels": config.labels_path, "rows": pq.read_metadata(config.labels_path).num_rows}


def train(config: PipelineConfig, view: str) -> dict[str, Any]:
    """Train the view's head unless a complete run (run.json) exists and retrain is off.

    Returns:
        {"run": run folder, "trained": whether this call trained}.
    """
    from features import files

    run_dir = config.run_dir(view)
    if not config.head.retrain and files.exists(join(run_dir, RUN_FILE)):
        LOGGER.info(
            "%s is a complete run: not retraining (set head.retrain to train again)", run_dir
        )
        return {"run": run_dir, "trained": False}
    run_step("jobs.train", argvs.train_argv(config, view))
    return {"run": run_dir, "trained": True}


def evaluate(config: PipelineConfig, view: str) -> dict[str, Any]:
    """Evaluate the view's run (rewrites metrics.json and predictions.parquet).

    Returns:
        {"run": run folder, "eval_dir": outputs folder, "metrics": metrics.json content}.
    """
    eval_dir = config.eval_dir(view)
    run_step("jobs.evaluate", argvs.evaluate_argv(config, view))
    metrics = _read_json(join(eval_dir, METRICS_FILE))
    return {"run": config.run_dir(view), "eval_dir": eval_dir, "metrics": metrics}


def recalibrate(config: PipelineConfig) -> dict[str, Any]:
    """Fit the labels to the reference model's predictions (predicted once, then reused).

    Returns:
        {"dir": output folder, "predictions": reference predictions, "calibration": fit}.
    """
    from features import files

    predictions = argvs.reference_predictions_path(config)
    if config.reference_predictions:
        LOGGER.info("using the given reference predictions %s", predictions)
    elif files.exists(predictions):
        LOGGER.info("reusing %s (delete it to predict again)", predictions)
    else:
        run_step("jobs.predict", argvs.predict_argv(config))
    run_step("jobs.recalibrate", argvs.recalibrate_argv(config))
    calibration = _read_json(join(config.recalibration_dir, CALIBRATION_FILE))
    return {"dir": config.recalibration_dir, "predictions": predictions, "calibration": calibration}


def _is_key_metric(name: str, value: Any) -> bool:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return numeric and (name.lower() in KEY_METRICS or name.lower().startswith("accuracy"))


def key_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a metrics dict whose name is a key metric ('test.srcc' -> value).

    Args:
        metrics: metrics.json content (nested dicts allowed).
        prefix: dotted path of `metrics` (recursion).

    Returns:
        Flat {dotted name: value}.
    """
    found: dict[str, float] = {}
    for name, value in metrics.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping):
            found.update(key_metrics(value, f"{path}."))
        elif _is_key_metric(name, value):
            found[path] = float(value)
    return found


def store_summary(config: PipelineConfig, view: str) -> dict[str, Any]:
    """Committed shards of a view and what its latest extraction run did.

    Returns:
        features.store.view_status of the view.
    """
    from features.store import view_status

    return view_status(config.store_root, VIEWS[short_view(view)])


def _view_summary(
    config: PipelineConfig, view: str, evaluation: Mapping[str, Any]
) -> dict[str, Any]:
    metrics = key_metrics(evaluation["metrics"])
    bad = sorted(name for name, value in metrics.items() if not math.isfinite(value))
    if bad:
        LOGGER.warning("%s: non-finite metrics %s", view, bad)
    return {
        "metrics": metrics,
        "run": evaluation["run"],
        "eval_dir": evaluation["eval_dir"],
        "store": store_summary(config, view),
    }


def summarize(
    config: PipelineConfig,
    evaluations: Mapping[str, Mapping[str, Any] | None],
    recalibration: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Key metrics, store state and artifact paths of the run; logs the paths.

    Args:
        config: the run configuration.
        evaluations: evaluate() results by short view name (None = view skipped).
        recalibration: recalibrate() result, or None when skipped.

    Returns:
        A JSON-ready summary.
    """
    views = {
        view: _view_summary(config, view, evaluation)
        for view, evaluation in evaluations.items()
        if evaluation is not None
    }
    artifacts = {
        "manifest": config.manifest_path,
        "downloads": config.downloads_path,
        "labels": config.labels_path,
        "store": config.store_root,
        **{f"run_{view}": entry["run"] for view, entry in views.items()},
        **{f"eval_{view}": entry["eval_dir"] for view, entry in views.items()},
    }
    if recalibration is not None:
        artifacts["recalibration"] = recalibration["dir"]
    for name, path in artifacts.items():
        LOGGER.info("artifact %-14s %s", name, path)
    return {"views": views, "artifacts": artifacts, "recalibrated": recalibration is not None}
