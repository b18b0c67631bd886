"""Every file the head jobs write: a failed publish leaves nothing, and the retry is exact."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import files
from features.training.evaluation import Evaluation
from features.training.metrics import compute_metrics
from features.training.run_outputs import (
    curves_png,
    load_keras_model,
    save_keras_model,
    write_history_csv,
    write_json,
)

HISTORY = [
    {
        "epoch": 0,
        "stage": 1,
        "learning_rate": 1e-3,
        "loss": 2.0,
        "plcc": 0.1,
        "val_loss": 3.0,
        "val_plcc": 0.2,
        "best_of_stage": True,
    },
    {
        "epoch": 1,
        "stage": 2,
        "learning_rate": 1e-4,
        "loss": 1.5,
        "plcc": 0.3,
        "val_loss": 2.5,
        "val_plcc": float("nan"),
        "best_of_stage": False,
    },
]


@pytest.fixture
def fail_first_replace(monkeypatch) -> list[str]:
    """os.replace raises once (the publish step of every atomic write), then works."""
    real_replace = os.replace
    failures: list[str] = []

    def flaky(source, target):
        if not failures:
            failures.append(str(target))
            raise OSError("disk full (injected)")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", flaky)
    return failures


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".") or "tmp" in p.name]


def test_json_and_history_csv(tmp_path, fail_first_replace) -> None:
    target = str(tmp_path / "run.json")
    with pytest.raises(OSError, match="injected"):
        write_json(target, {"b": 1, "nan": float("nan")})
    assert not os.path.exists(target) and no_temp_files(tmp_path)
    write_json(target, {"b": 1, "nan": float("nan")})
    assert json.loads(Path(target).read_text()) == {"b": 1, "nan": None}
    write_history_csv(str(tmp_path / "history.csv"), HISTORY)
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0] == "epoch,stage,learning_rate,loss,plcc,val_loss,val_plcc,best_of_stage"
    assert lines[2].startswith("1,2,0.0001,1.5,0.3,2.5,,False")


def test_curves_png(tmp_path, fail_first_replace) -> None:
    image = curves_png(HISTORY, "t")
    target = str(tmp_path / "curves.png")
    with pytest.raises(OSError):
        files.atomic_write_bytes(target, image)
    files.atomic_write_bytes(target, image)
    assert Path(target).read_bytes() == image and image[:4] == b"\x89PNG"


def test_keras_model(tmp_path, fail_first_replace) -> None:
    from features.training.heads import build_head

    model = build_head("narrow", (8,), "mos")
    target = str(tmp_path / "model.keras")
    with pytest.raises(OSError, match="injected"):
        save_keras_model(model, target)
    assert not os.path.exists(target) and no_temp_files(tmp_path)
    save_keras_model(model, target)
    loaded = load_keras_model(target)
    for saved, original in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, original)


def test_evaluation_outputs(tmp_path, fail_first_replace) -> None:
    from jobs.evaluate import write_evaluation

    truth = np.array([3.0, 5.5, 6.0, 4.0])
    prediction = np.array([3.5, 5.0, 6.5, 4.2])
    evaluation = Evaluation(
        np.array(["a", "b", "c", "d"], dtype=object),
        truth,
        prediction,
        ("orig",),
        compute_metrics(truth, prediction),
        {},
    )
    context = {"split": "test", "tta": False}
    with pytest.raises(OSError):
        write_evaluation(str(tmp_path), evaluation, context)
    write_evaluation(str(tmp_path), evaluation, context)
    table = pq.read_table(tmp_path / "predictions.parquet")
    assert table.equals(pa.table({"image_id": ["a", "b", "c", "d"], "prediction": prediction}))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["metrics"]["srcc"] == pytest.approx(evaluation.report.values["srcc"])
    assert (tmp_path / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    assert no_temp_files(tmp_path)


def test_prediction_table(tmp_path, fail_first_replace) -> None:
    from features.training.prediction import PREDICTIONS_SCHEMA

    table = pa.table(
        {
            "image_id": ["x", "y"],
            "prediction": [5.0, None],
            "status": ["ok", "decode_error"],
            "error": [None, "y: bad"],
        },
        schema=PREDICTIONS_SCHEMA,
    )
    target = str(tmp_path / "preds.parquet")
    with pytest.raises(OSError):
        files.atomic_write_parquet(target, table)
    files.atomic_write_parquet(target, table)
    assert pq.read_table(target).equals(table)
