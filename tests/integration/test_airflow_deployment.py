"""The DAG on a running Airflow 3: scheduler, dag-processor and api-server as separate processes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # an Airflow dependency
import pytest

from benchmarks.fault_server import FaultServer
from orchestration.config import VIEWS
from tests.helpers import airflow_db
from tests.helpers.served_sample import served_sample as sample_server

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "orchestration" / "dags"
DAG_ID = "mlsp_feature_store"
COMPONENTS = ("scheduler", "dag-processor", "api-server")
# The cheapest backbone (MobileNetV3-Small, random weights): the IRNv2 views the DAG test runs
# take several times longer to build, extract and train on, and the DAG is the same.
VIEW = "mnv3s_mlsp_narrow"
READY_TIMEOUT = 300.0  # the api-server took 123 s to answer on a 2-core host at load 8
HEALTH = "/api/v2/monitor/health"
RUN_TIMEOUT = 900.0
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: no proxy
# A cluster policy, Airflow's own hook for a deployment's task defaults: the network tasks'
# 30 s retry delay (DAG default) becomes 1 s here, so the retry costs seconds, not minutes.
LOCAL_SETTINGS = '''"""Test deployment's cluster policy: retries wait 1 s."""
from datetime import timedelta


def task_policy(task):
    if task.retries:
        task.retry_delay = timedelta(seconds=1)
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(home: Path, port: int) -> dict[str, str]:
    """Every component's environment: one home, one SQLite DB, one JWT secret, 127.0.0.1 only."""
    base = f"http://127.0.0.1:{port}"
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / airflow_db.DB_NAME}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        # A task's calls to the api-server wait 30 s, not 5, on a host busy with other tests.
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "300",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TQDM_DISABLE": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


@dataclass
class Deployment:
    """The running components and a REST client of the api-server."""

    home: Path
    base_url: str
    password: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    token: str = ""

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """JSON request to the api-server (bearer token once logged in)."""
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data, headers, method=method)
        with OPENER.open(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def login(self) -> None:
        """Simple auth manager: POST /auth/token with the user's password."""
        body = {"username": "admin", "password": self.password}
        self.token = self.request("POST", "/auth/token", body)["access_token"]

    def logs(self, tail: int = 3000) -> str:
        """The last lines of each component's log and of every task attempt's log."""
        files = [self.home / f"{name}.log" for name in COMPONENTS]
        files += sorted((self.home / "logs").rglob("attempt=*.log"))
        return "\n".join(
            f"==> {path} <==\n{path.read_text(errors='replace')[-tail:]}"
            for path in files
            if path.is_file()
        )

    def check_alive(self) -> None:
        """Fail at once (with the logs) when a component has exited."""
        dead = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        assert not dead, f"component(s) exited {dead}\n{self.logs()}"


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM each component and all its descendants (task runners, Beam); SIGKILL after 2 s."""
    victims: list[psutil.Process] = []
    for process in processes.values():
        try:
            parent = psutil.Process(process.pid)
            victims += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.terminate()
    # The scheduler, dag-processor and api-server take over 5 s to exit on a busy host; nothing
    # of this temp deployment needs a clean shutdown, so they get 2 s.
    _, alive = psutil.wait_procs(victims, timeout=2)
    for victim in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    psutil.wait_procs(alive, timeout=10)
    for process in processes.values():
        process.wait(timeout=10)


def _wait(what: str, deployment: Deployment, ready: Any, timeout: float) -> float:
    """Poll ready() (exceptions count as not ready) until true; the seconds it took."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        deployment.check_alive()
        try:
            if ready():
                return time.perf_counter() - started
        except (OSError, KeyError, TypeError, ValueError):  # not up yet, or not ready
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f}s\n{deployment.logs()}")


def _healthy(deployment: Deployment) -> bool:
    health = deployment.request("GET", HEALTH)
    return all(health[part]["status"] == "healthy" for part in ("scheduler", "dag_processor"))


def _dag_parsed(deployment: Deployment) -> bool:
    if not deployment.token:
        deployment.login()
    errors = deployment.request("GET", "/api/v2/importErrors")["import_errors"]
    assert errors == [], errors
    try:
        return deployment.request("GET", f"/api/v2/dags/{DAG_ID}")["dag_id"] == DAG_ID
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, airflow_db_template: Path
) -> Iterator[Deployment]:
    """A copy of the migrated SQLite DB, the three components started together; all killed after."""
    home = tmp_path_factory.mktemp("airflow_deployment")
    port = _free_port()
    env = _environment(home, port)
    password = secrets.token_urlsafe(12)
    (home / "passwords.json").write_text(json.dumps({"admin": password}))
    # A copy of the DAG file in a dags folder of its own, as a deployment would have it.
    (home / "dags").mkdir()
    shutil.copy2(DAGS / f"{DAG_ID}.py", home / "dags")
    (home / "config").mkdir()
    (home / "config" / "airflow_local_settings.py").write_text(LOCAL_SETTINGS)
    airflow_db.copy_db(airflow_db_template, home)
    deployment = Deployment(home, f"http://127.0.0.1:{port}", password)
    try:
        for name in COMPONENTS:  # together: each spends seconds importing Airflow
            deployment.processes[name] = _start(name, env, home)
        _ready(deployment)
        yield deployment
    finally:
        started = time.perf_counter()
        _stop(deployment.processes)
        print(f"deployment stopped in {time.perf_counter() - started:.1f}s")


def _start(name: str, env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
    with (home / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "airflow", name],
            env=env,
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _ready(deployment: Deployment) -> None:
    """Wait for the api-server, its execution API, the scheduler and dag-processor, the DAG."""
    timings = {
        "api-server": _wait(
            "api-server", deployment, lambda: deployment.request("GET", HEALTH), READY_TIMEOUT
        ),
        # The first request to /execution builds its versioned routes (Cadwyn) and blocks the
        # api-server for 10-50 s on a busy host: here, not in a task's first call (5 s timeout).
        "execution API": _wait(
            "execution API",
            deployment,
            lambda: deployment.request("GET", "/execution/health", timeout=READY_TIMEOUT),
            READY_TIMEOUT,
        ),
        "scheduler and dag-processor": _wait(
            "health", deployment, lambda: _healthy(deployment), READY_TIMEOUT
        ),
        "DAG parsed": _wait(
            "DAG parsed", deployment, lambda: _dag_parsed(deployment), READY_TIMEOUT
        ),
    }
    print("deployment ready: " + ", ".join(f"{k} +{v:.1f}s" for k, v in timings.items()))


@pytest.fixture(scope="module")
def served_sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultServer, Path]]:
    """The DAG test's 12 generated JPEGs over HTTP; the first fails twice (500) then serves."""
    with sample_server(
        tmp_path_factory.mktemp("deployment_sample"), first_image_failures=2
    ) as served:
        yield served


def _conf(server: FaultServer, sample: Path, data: Path) -> dict[str, Any]:
    """The DAG test's tiny run, with no download retries: the first image fails try 1."""
    return {
        "dataset": "ava",
        "source": server.base_url + "/{image_id}.jpg",
        "label_list": str(sample / "AVA.txt"),
        "data_root": str(data),
        "views": [VIEW],
        "weights": "random:0",
        "runner": "direct",
        "shard_size": 8,
        "max_side": 160,
        "download": {"workers": 2, "retries": 0, "backoff": 0.05, "timeout": 10.0},
        "labels": {"test_fraction": 0.25, "val_fraction": 0.2},
        "head": {"epochs_per_stage": 1, "patience": 1, "batch_size": 4, "learning_rates": [1e-3]},
    }


def _run_to_end(deployment: Deployment, conf: dict[str, Any]) -> dict[str, Any]:
    """Unpause, trigger with conf, wait for a final state; the dag run's JSON."""
    deployment.request("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    run = deployment.request(
        "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf}
    )
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}"
    final: dict[str, Any] = {}

    def done() -> bool:
        final.update(deployment.request("GET", path))
        return final["state"] in ("success", "failed")

    seconds = _wait("the DAG run", deployment, done, RUN_TIMEOUT)
    print(f"DAG run {final['state']} after {seconds:.1f}s")
    return final


def _task_instances(deployment: Deployment, run_id: str) -> dict[str, dict[str, Any]]:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"
    return {ti["task_id"]: ti for ti in deployment.request("GET", path)["task_instances"]}


def _xcom(deployment: Deployment, run_id: str, task_id: str, key: str) -> Any:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
    value = deployment.request("GET", path)["value"]
    return json.loads(value) if isinstance(value, str) else value


def _sample_ids(sample: Path) -> list[str]:
    return sorted(line.split()[1] for line in (sample / "AVA.txt").read_text().splitlines())


def _assert_store(data: Path, sample: Path) -> None:
    """Both shards committed and verified; the view's rows are the sample's images, all ok."""
    import pyarrow.parquet as pq

    from features.store import FeatureStore, verify_view

    store = FeatureStore(str(data / "store"))
    view = store.view(VIEWS[VIEW])
    assert len(view.committed()) == len(view.shards()) == 2  # 12 rows / shard_size 8
    assert verify_view(view).ok
    rows = store.index(VIEWS[VIEW]).to_pylist()
    assert sorted(row["image_id"] for row in rows) == _sample_ids(sample)
    assert {row["status"] for row in rows} == {"ok"}
    labels = pq.read_table(data / "labels.parquet", columns=["image_id", "split"]).to_pylist()
    assert sorted(row["image_id"] for row in labels) == _sample_ids(sample)
    assert {row["split"] for row in labels} >= {"train", "test"}


def _assert_metrics(data: Path, summary: dict[str, Any], metrics: dict[str, float]) -> None:
    """The evaluation wrote finite metrics; summary's XComs carry them and the store state."""
    assert (data / "runs" / VIEW / "run.json").is_file()
    written = json.loads((data / "runs" / VIEW / "eval_test/metrics.json").read_text())
    assert written
    assert metrics and all(math.isfinite(value) for value in metrics.values())
    view = summary["views"][VIEW]
    assert view["metrics"] == metrics
    assert view["store"]["shards_committed"] == 2
    assert summary["artifacts"]["store"] == str(data / "store")
    assert summary["recalibrated"] is False


def _assert_download_retried(
    deployment: Deployment, run_id: str, server: FaultServer, sample: Path
) -> None:
    """Try 1 failed (1 of 12 items > 5 %); the scheduler ran try 2, which resumed from
    downloads.parquet and fetched only the failed image; no other task ran twice."""
    instances = _task_instances(deployment, run_id)
    assert instances["download"]["try_number"] == 2
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/download/tries"
    tries = deployment.request("GET", path)["task_instances"]
    states = [t["state"] for t in sorted(tries, key=lambda t: t["try_number"])]
    assert states == ["failed", "success"]
    first = sorted((sample / "images").iterdir())[0].name
    assert server.hits[first] == 3  # two 500s (try 1 and its retry of failures), one success
    assert all(hits == 1 for name, hits in server.hits.items() if name != first)
    others = [ti for task, ti in instances.items() if task != "download"]
    assert all(ti["try_number"] == 1 for ti in others if ti["state"] == "success")


@pytest.mark.slow
def test_triggered_run_succeeds_with_a_scheduler_retry(
    deployment: Deployment, served_sample: tuple[FaultServer, Path], tmp_path: Path
) -> None:
    server, sample = served_sample
    data = tmp_path / "data"
    run = _run_to_end(deployment, _conf(server, sample, data))
    instances = _task_instances(deployment, run["dag_run_id"])
    states = {task: ti["state"] for task, ti in instances.items()}
    assert run["state"] == "success", (states, deployment.logs())
    skipped = {"recalibrate"} | {
        f"{step}_{view}"
        for view in VIEWS
        if view != VIEW
        for step in ("extract", "train", "evaluate")
    }
    assert states == {task: "skipped" if task in skipped else "success" for task in states}
    _assert_download_retried(deployment, run["dag_run_id"], server, sample)
    _assert_store(data, sample)
    summary = _xcom(deployment, run["dag_run_id"], "summary", "return_value")
    metrics = _xcom(deployment, run["dag_run_id"], "summary", f"metrics_{VIEW}")
    _assert_metrics(data, summary, metrics)
