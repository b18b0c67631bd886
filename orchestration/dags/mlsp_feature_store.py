"""Airflow 3 DAG: download -> labels -> extract/train/evaluate per view -> recalibrate -> summary."""

from __future__ import annotations

import importlib.util
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.sdk import DAG, Param, TriggerRule, task

if importlib.util.find_spec("orchestration") is None:  # dags folder of an uninstalled checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from orchestration.config import VIEWS
from orchestration.params import param_specs

DAG_ID = "mlsp_feature_store"
BEAM_PYTHON = os.environ.get("MLSP_BEAM_PYTHON", sys.executable)


def _extract_py_file() -> str:
    """extract_entry.py of the importable package: this file may be a copy in any dags folder."""
    spec = importlib.util.find_spec("orchestration.extract_entry")
    if spec is None or spec.origin is None:
        raise ImportError("orchestration.extract_entry not found: install this package")
    return spec.origin


EXTRACT_PY_FILE = _extract_py_file()
NETWORK_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}


def _config(config: dict[str, Any]) -> Any:
    from orchestration.config import PipelineConfig

    return PipelineConfig.from_dict(config)


@task(multiple_outputs=True)
def configure(**context: Any) -> dict[str, Any]:
    """Validate the params; return the config and each view's Beam pipeline options."""
    from orchestration import tasks

    return tasks.configure(dict(context["params"]))


@task(**NETWORK_RETRIES)
def download(config: dict[str, Any]) -> dict[str, Any]:
    """Fetch or resume the dataset (DATA_ROOT/downloads.parquet makes it resumable)."""
    from orchestration import tasks

    return tasks.download(_config(config))


@task
def labels(config: dict[str, Any]) -> dict[str, Any]:
    """Build DATA_ROOT/labels.parquet."""
    from orchestration import tasks

    return tasks.labels(_config(config))


@task.branch
def choose_views(config: dict[str, Any]) -> list[str]:
    """Follow the extract tasks of the requested views; the others are skipped."""
    return [f"extract_{view}" for view in config["views"]]


@task
def train(config: dict[str, Any], view: str) -> dict[str, Any]:
    """Train the view's head (skipped when a complete run exists and head.retrain is off)."""
    from orchestration import tasks

    return tasks.train(_config(config), view)


@task
def evaluate(config: dict[str, Any], view: str) -> dict[str, Any]:
    """Evaluate the view's run; metrics.json goes to XCom."""
    from orchestration import tasks

    return tasks.evaluate(_config(config), view)


@task.branch(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
def choose_recalibration(config: dict[str, Any]) -> str:
    """Recalibrate only when a reference run (or its predictions) is given."""
    return (
        "recalibrate" if config["reference_run"] or config["reference_predictions"] else "summary"
    )


@task
def recalibrate(config: dict[str, Any]) -> dict[str, Any]:
    """Fit the labels to the reference model's predictions."""
    from orchestration import tasks

    return tasks.recalibrate(_config(config))


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
def summary(
    config: dict[str, Any],
    evaluations: dict[str, dict[str, Any] | None],
    recalibration: dict[str, Any] | None,
) -> dict[str, Any]:
    """Push key metrics per view to XCom and log the artifact paths."""
    from airflow.sdk import get_current_context

    from orchestration import tasks

    result = tasks.summarize(_config(config), evaluations, recalibration)
    ti = get_current_context()["ti"]
    for view, entry in result["views"].items():
        ti.xcom_push(key=f"metrics_{view}", value=entry["metrics"])
    return result


def _extract(view: str, options: Any) -> BeamRunPythonPipelineOperator:
    """One view's extraction; runner and options come from the configure task."""
    return BeamRunPythonPipelineOperator(
        task_id=f"extract_{view}",
        py_file=EXTRACT_PY_FILE,
        py_interpreter=BEAM_PYTHON,
        runner="{{ ti.xcom_pull(task_ids='configure', key='beam_runner') }}",
        pipeline_options=options,
        dataflow_config={
            "job_name": f"mlsp-extract-{view}",
            "gcp_conn_id": "{{ params.gcp_conn_id }}",
            "project_id": "{{ params.gcp_project or '' }}",
            "location": "{{ params.gcp_region or '' }}",
        },
        **NETWORK_RETRIES,
    )


with DAG(
    dag_id=DAG_ID,
    description=__doc__,
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={name: Param(spec.pop("default"), **spec) for name, spec in param_specs().items()},
    tags=["mlsp", "feature-store"],
    doc_md=__doc__,
) as mlsp_dag:
    setup: Any = configure()  # multiple_outputs: setup["key"] is that key's XCom
    config_arg = setup["config"]
    ready = labels(config_arg)
    download(config_arg) >> ready >> (branch := choose_views(config_arg))
    evaluations: dict[str, Any] = {}
    for name in VIEWS:
        extract = _extract(name, setup[f"extract_{name}"])
        trained = train.override(task_id=f"train_{name}")(config_arg, name)
        evaluations[name] = evaluate.override(task_id=f"evaluate_{name}")(config_arg, name)
        branch >> extract >> trained >> evaluations[name]
    choice = choose_recalibration(config_arg)
    list(evaluations.values()) >> choice
    recalibrated: Any = recalibrate(config_arg)
    choice >> recalibrated
    done = summary(config_arg, evaluations, recalibrated)
    choice >> done
