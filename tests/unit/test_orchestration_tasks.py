"""Orchestration task functions with fake CLIs: exit codes, resume/skip rules, summaries."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestration import tasks
from orchestration.config import PipelineConfig
from schemas.errors import ConfigError, OrchestrationError


def make(tmp_path: Path, **overrides: Any) -> PipelineConfig:
    base = {
        "dataset": "ava",
        "source": "/src",
        "label_list": "/AVA.txt",
        "data_root": str(tmp_path),
    }
    return PipelineConfig.from_dict({**base, **overrides})


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """Replace run_step: record calls; a test sets `effects[module]` to act or fail."""
    calls: list[tuple[str, list[str]]] = []

    def run_step(module: str, argv: list[str]) -> None:
        calls.append((module, list(argv)))
        effect = EFFECTS.get(module)
        if effect is not None:
            effect(argv)

    monkeypatch.setattr(tasks, "run_step", run_step)
    EFFECTS.clear()
    return calls


EFFECTS: dict[str, Any] = {}


def test_run_step_raises_with_the_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("fake_cli_module")
    module.run = lambda argv: 3 if "--bad" in argv else 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_cli_module", module)
    tasks.run_step("fake_cli_module", ["--ok"])
    with pytest.raises(OrchestrationError, match=r"exited 3 \(rows failed"):
        tasks.run_step("fake_cli_module", ["--bad", "x y"])


def test_require_modules_names_the_missing_ones() -> None:
    tasks.require_modules(["json"])
    with pytest.raises(OrchestrationError, match=r"no_such_pkg\.job"):
        tasks.require_modules(["json", "no_such_pkg.job"])


def _status_writer(path: Path, statuses: list[list[str]]) -> Any:
    def write(argv: list[str]) -> None:
        pq.write_table(pa.table({"status": statuses.pop(0)}), path)

    return write


def test_download_retries_failures_once_then_checks_the_limit(
    tmp_path: Path, fake_cli: list[tuple[str, list[str]]]
) -> None:
    config = make(tmp_path, download={"max_failed_fraction": 0.25})
    writes = [["ok", "ok", "ok", "http_error"], ["ok", "ok", "ok", "present"]]
    EFFECTS["pipelines.download"] = _status_writer(tmp_path / "downloads.parquet", writes)
    result = tasks.download(config)
    assert result["failed"] == 0 and result["items"] == 4
    assert [argv[-1] == "--retry-failed" for _, argv in fake_cli] == [False, True]


def test_download_fails_over_the_limit(
    tmp_path: Path, fake_cli: list[tuple[str, list[str]]]
) -> None:
    config = make(tmp_path, download={"max_failed_fraction": 0.25})
    writes = [["ok", "http_error", "timeout", "ok"], ["ok", "http_error", "timeout", "ok"]]
    EFFECTS["pipelines.download"] = _status_writer(tmp_path / "downloads.parquet", writes)
    with pytest.raises(OrchestrationError, match="2 of 4"):
        tasks.download(config)


def test_train_skips_a_complete_run_unless_retrain(
    tmp_path: Path, fake_cli: list[tuple[str, list[str]]]
) -> None:
    config = make(tmp_path, views=["narrow"])
    assert tasks.train(config, "narrow")["trained"] is True
    run_dir = Path(config.run_dir("narrow"))
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    assert tasks.train(config, "narrow") == {"run": str(run_dir), "trained": False}
    retrain = make(tmp_path, views=["narrow"], head={"retrain": True})
    assert tasks.train(retrain, "narrow")["trained"] is True
    assert [module for module, _ in fake_cli] == ["jobs.train", "jobs.train"]
    assert "--overwrite" in fake_cli[-1][1]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_evaluate_returns_metrics(tmp_path: Path, fake_cli: list[tuple[str, list[str]]]) -> None:
    config = make(tmp_path)
    metrics = {"test": {"srcc": 0.5, "plcc": 0.4, "n": 4}}
    EFFECTS["jobs.evaluate"] = lambda argv: _write_json(
        Path(argv[argv.index("--out") + 1]) / "metrics.json", metrics
    )
    result = tasks.evaluate(config, "wide")
    assert result["metrics"] == metrics and result["run"] == config.run_dir("wide")
    assert result["eval_dir"] == f"{config.run_dir('wide')}/eval_test"


def test_evaluate_without_metrics_file_fails(
    tmp_path: Path, fake_cli: list[tuple[str, list[str]]]
) -> None:
    with pytest.raises(OrchestrationError, match=r"metrics\.json is missing"):
        tasks.evaluate(make(tmp_path), "narrow")


def test_recalibrate_predicts_once_then_reuses(
    tmp_path: Path, fake_cli: list[tuple[str, list[str]]]
) -> None:
    config = make(tmp_path, reference_run=str(tmp_path / "ref"))
    EFFECTS["jobs.predict"] = lambda argv: _write_json(Path(argv[argv.index("--out") + 1]), {})
    EFFECTS["jobs.recalibrate"] = lambda argv: _write_json(
        Path(argv[argv.index("--out") + 1]) / "calibration.json", {"pooled": {"k": 1.0}}
    )
    first = tasks.recalibrate(config)
    tasks.recalibrate(config)
    assert first["calibration"] == {"pooled": {"k": 1.0}}
    modules = [module for module, _ in fake_cli]
    assert modules == ["jobs.predict", "jobs.recalibrate", "jobs.recalibrate"]
    assert fake_cli[1][1][fake_cli[1][1].index("--range") + 1] == "1.0,10.0"


def test_key_metrics_flattens_and_filters() -> None:
    metrics = {"srcc": 0.7, "n": 10, "test": {"PLCC": 0.6, "accuracy@5": 0.8, "ok": True}}
    assert tasks.key_metrics(metrics) == {"srcc": 0.7, "test.PLCC": 0.6, "test.accuracy@5": 0.8}


def test_summarize_collects_metrics_and_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "store_summary", lambda config, view: {"shards_committed": 1})
    config = make(tmp_path, views=["narrow"])
    evaluation = {
        "run": config.run_dir("narrow"),
        "eval_dir": config.eval_dir("narrow"),
        "metrics": {"srcc": 0.5, "rmse": float("nan")},
    }
    result = tasks.summarize(config, {"narrow": evaluation, "wide": None}, None)
    assert set(result["views"]) == {"narrow"}
    assert result["views"]["narrow"]["store"] == {"shards_committed": 1}
    assert result["artifacts"]["run_narrow"] == config.run_dir("narrow")
    assert result["recalibrated"] is False


def test_configure_validates_and_drops_dataflow_params(tmp_path: Path) -> None:
    params = {
        "dataset": "ava",
        "source": "/src",
        "label_list": "/AVA.txt",
        "data_root": str(tmp_path),
        "views": ["narrow"],
        "gcp_project": "p",
        "gcp_region": "europe-west4",
        "gcp_conn_id": "google_cloud_default",
    }
    if not tasks.module_available("jobs.evaluate"):
        with pytest.raises(OrchestrationError, match=r"jobs\.evaluate"):
            tasks.configure(params)
        return
    result = tasks.configure(params)
    assert result["beam_runner"] == "DirectRunner"
    assert result["extract_narrow"]["view"] == ["irnv2_mlsp_narrow"]
    with pytest.raises(ConfigError, match="weights"):
        tasks.configure({**params, "weights": ""})
