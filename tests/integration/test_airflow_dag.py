"""The Airflow DAG: parses fast without TensorFlow, has the listed tasks, runs end to end, resumes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The `airflow` extra, which `make test` installs: missing, these imports fail; nothing skips.
import airflow
import airflow.providers.apache.beam  # noqa: F401
import pytest

from benchmarks.fault_server import FaultServer
from orchestration.config import VIEWS
from tests.helpers import airflow_db
from tests.helpers.served_sample import served_sample as sample_server

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "orchestration" / "dags"
DAG_ID = "mlsp_feature_store"
PARSE_BUDGET_SECONDS = 5.0
HEAVY_MODULES = ("tensorflow", "keras", "apache_beam", "pyarrow")
EXPECTED_UPSTREAM = {
    "configure": set(),
    "download": {"configure"},
    "labels": {"configure", "download"},
    "choose_views": {"configure", "labels"},
    **{f"extract_{view}": {"configure", "choose_views"} for view in VIEWS},
    **{f"train_{view}": {"configure", f"extract_{view}"} for view in VIEWS},
    **{f"evaluate_{view}": {"configure", f"train_{view}"} for view in VIEWS},
    "choose_recalibration": {"configure", *(f"evaluate_{view}" for view in VIEWS)},
    "recalibrate": {"configure", "choose_recalibration"},
    "summary": {
        "configure",
        "choose_recalibration",
        "recalibrate",
        *(f"evaluate_{view}" for view in VIEWS),
    },
}

PARSE_SCRIPT = """
import json, sys, time
started = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
imported = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
parsed = time.perf_counter()
dag = bag.dags.get("mlsp_feature_store")
print("RESULT " + json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} if dag else {},
    "retries": {t.task_id: [t.retries, float(t.retry_exponential_backoff)] for t in dag.tasks}
        if dag else {},
    "params": sorted(dag.params) if dag else [],
    "parse_seconds": parsed - imported,
    "airflow_import_seconds": imported - started,
    "heavy": [m for m in sys.argv[2:] if m in sys.modules],
}))
"""

RUN_SCRIPT = """
import json, sys
from sqlalchemy import text
from airflow import settings
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=sys.argv[1]).dags["mlsp_feature_store"]
run = dag.test(run_conf=json.loads(sys.argv[2]))
with settings.Session() as session:
    rows = session.execute(
        text("select task_id, state from task_instance where dag_id = :d and run_id = :r"),
        {"d": run.dag_id, "r": run.run_id},
    ).all()
    xcom = session.execute(
        text("select key, value from xcom where dag_id = :d and run_id = :r "
             "and task_id = 'summary'"),
        {"d": run.dag_id, "r": run.run_id},
    ).all()
print("RESULT " + json.dumps({
    "state": str(run.state),
    "states": {task_id: str(state) for task_id, state in rows},
    "summary": {key: value if not isinstance(value, (str, bytes)) else json.loads(value)
                for key, value in xcom},
}))
"""


def _result(completed: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, (
        f"no result (rc {completed.returncode}):\n{completed.stdout[-4000:]}\n{completed.stderr[-8000:]}"
    )
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def airflow_env(
    tmp_path_factory: pytest.TempPathFactory, airflow_db_template: Path
) -> dict[str, str]:
    """A temp AIRFLOW_HOME holding a copy of the session's migrated SQLite metadata DB."""
    home = tmp_path_factory.mktemp("airflow_home")
    database = airflow_db.copy_db(airflow_db_template, home)
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{database}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TQDM_DISABLE": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }


@pytest.fixture(scope="module")
def parsed(airflow_env: dict[str, str]) -> dict[str, Any]:
    """Parse the dags folder in a fresh interpreter (a clean sys.modules)."""
    completed = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(DAGS), *HEAVY_MODULES],
        env=airflow_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return _result(completed)


def test_dag_imports_without_errors(parsed: dict[str, Any]) -> None:
    assert parsed["errors"] == {}
    assert parsed["upstream"], "the DAG was not found"
    for name in ("dataset", "source", "views", "weights", "runner", "head", "reference_run"):
        assert name in parsed["params"]


def test_task_ids_and_dependencies(parsed: dict[str, Any]) -> None:
    upstream = {task: set(ups) for task, ups in parsed["upstream"].items()}
    assert upstream == EXPECTED_UPSTREAM


def test_network_tasks_retry_with_backoff(parsed: dict[str, Any]) -> None:
    for task_id in ("download", "extract_narrow", "extract_wide"):
        retries, backoff = parsed["retries"][task_id]
        assert retries >= 2 and backoff > 1, task_id


def test_parsing_is_fast_and_imports_no_tensorflow(parsed: dict[str, Any]) -> None:
    print(
        f"DAG file parse {parsed['parse_seconds']:.2f}s "
        f"(+ Airflow import {parsed['airflow_import_seconds']:.2f}s)"
    )
    assert parsed["parse_seconds"] < PARSE_BUDGET_SECONDS
    assert parsed["heavy"] == []


@pytest.fixture(scope="module")
def served_sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultServer, Path]]:
    """12 small generated JPEGs served by a 127.0.0.1 HTTP server (one transient 500)."""
    with sample_server(tmp_path_factory.mktemp("dag_sample"), first_image_failures=1) as served:
        yield served


def _dag_test(env: dict[str, str], conf: dict[str, Any]) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RUN_SCRIPT), str(DAGS), json.dumps(conf)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    result = _result(completed)
    if result["state"] != "success":  # put the task errors into the assertion message
        output = completed.stdout.splitlines() + completed.stderr.splitlines()
        result["errors"] = [line for line in output if "error" in line.lower()][-30:]
    return result


def _markers(store: Path) -> dict[str, str]:
    return {
        str(p.relative_to(store)): p.read_text() for p in sorted(store.glob("*/commits/*.json"))
    }


def _latest_run(store: Path, view: str) -> dict[str, Any]:
    runs = [json.loads(p.read_text()) for p in (store / view / "runs").glob("*.json")]
    return max(runs, key=lambda run: run["run_id"])


def _sample_conf(server: FaultServer, sample: Path, data: Path) -> dict[str, Any]:
    """Tiny run: 12 images over HTTP, narrow view only, random weights, one short epoch."""
    return {
        "dataset": "ava",
        "source": server.base_url + "/{image_id}.jpg",
        "label_list": str(sample / "AVA.txt"),
        "data_root": str(data),
        "views": ["narrow"],
        "weights": "random:0",
        "runner": "direct",
        "shard_size": 8,
        "max_side": 160,
        "download": {"workers": 2, "backoff": 0.05, "timeout": 10.0},
        "labels": {"test_fraction": 0.25, "val_fraction": 0.2},
        "head": {"epochs_per_stage": 1, "patience": 1, "batch_size": 4, "learning_rates": [1e-3]},
    }


def _assert_first_run(first: dict[str, Any], data: Path) -> None:
    assert first["state"] == "success", first
    skipped = {"recalibrate"} | {
        f"{step}_{view}"
        for view in VIEWS
        if view != "narrow"
        for step in ("extract", "train", "evaluate")
    }
    for task_id, state in first["states"].items():
        assert state == ("skipped" if task_id in skipped else "success"), (task_id, first)
    from features.store.view import FeatureView

    view = FeatureView(str(data / "store"), "irnv2_mlsp_narrow")
    assert len(view.committed()) == len(view.shards()) == 2  # verified markers; 12 rows / 8
    history = _latest_run(data / "store", "irnv2_mlsp_narrow")
    assert history["shards_committed_this_run"] == 2
    assert history["images_forwarded_this_run"] == 12
    _assert_finite(json.loads((data / "runs/narrow/eval_test/metrics.json").read_text()))
    summary = first["summary"]
    pushed = summary["metrics_narrow"]
    assert pushed and all(math.isfinite(value) for value in pushed.values())
    assert summary["return_value"]["views"]["narrow"]["store"]["shards_committed"] == 2


@pytest.mark.slow
def test_end_to_end_then_resume_then_recalibrate(
    airflow_env: dict[str, str], served_sample: tuple[FaultServer, Path], tmp_path: Path
) -> None:
    server, sample = served_sample
    data = tmp_path / "data"
    conf = _sample_conf(server, sample, data)
    first = _dag_test(airflow_env, conf)
    _assert_first_run(first, data)
    assert server.hits, "the download did not go through the HTTP server"
    markers = _markers(data / "store")
    history = _latest_run(data / "store", "irnv2_mlsp_narrow")
    trained_at = (data / "runs/narrow/run.json").stat().st_mtime_ns

    second = _dag_test(airflow_env, conf)  # same conf: resumes, extracts nothing
    assert second["state"] == "success", second
    assert second["states"] == first["states"]
    assert _markers(data / "store") == markers
    again = _latest_run(data / "store", "irnv2_mlsp_narrow")
    assert again["run_id"] != history["run_id"]
    assert again["shards_committed_this_run"] == 0 and again["images_forwarded_this_run"] == 0
    assert (data / "runs/narrow/run.json").stat().st_mtime_ns == trained_at

    # The recalibrate branch: the run just trained serves as the reference model.
    third = _dag_test(airflow_env, {**conf, "reference_run": str(data / "runs/narrow")})
    assert third["state"] == "success", third
    assert third["states"]["recalibrate"] == "success"
    assert third["summary"]["return_value"]["recalibrated"] is True
    assert json.loads((data / "recalibration/calibration.json").read_text())
    assert _markers(data / "store") == markers


def _assert_finite(metrics: Any, path: str = "metrics") -> None:
    numbers = 0
    stack = [(path, metrics)]
    while stack:
        name, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{name}.{key}", item) for key, item in value.items()]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            assert math.isfinite(value), name
            numbers += 1
    assert numbers > 0
