"""Recalibration: recovering a known (k, b) with and without clipping, refusals, and the job CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.labels.calibration import Calibration, apply_calibration, fit_calibration
from features.labels.recalibration import (
    LinearMap,
    RecalibrationConfig,
    closed_form,
    fit,
    fit_map,
)
from jobs.recalibrate import run
from pipelines.sample_datasets import SHIFT_B, SHIFT_K, write_shifted_variant
from schemas.errors import ConfigError, RecalibrationError
from schemas.labels import LABELS_SCHEMA, RECALIBRATED_LABELS_SCHEMA


def _synthetic(k: float, b: float, n: int, noise: float, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y = rng.uniform(1.0, 5.0, n)
    return y, np.clip(k * y + b, 1.0, 5.0) + rng.normal(0.0, noise, n)


def _analytic_widths(
    y: np.ndarray, p: np.ndarray, k: float, b: float, confidence: float = 0.95
) -> tuple[float, float]:
    """Normal-theory widths of the (k, b) intervals: OLS standard errors on the unclipped rows.

    Independent of the bootstrap: sigma from the residuals of the true map, SE(k) =
    sigma / sqrt(Sxx), SE(b) = sigma * sqrt(1/n + mean^2 / Sxx); width = 2 z SE. Clipped rows
    carry no information about (k, b), so they are left out (the clipped case's approximation).
    """
    from scipy.stats import norm

    inside = (k * y + b > 1.0) & (k * y + b < 5.0)
    y_in, residual = y[inside], (p - (k * y + b))[inside]
    sigma, sxx = residual.std(ddof=2), float(((y_in - y_in.mean()) ** 2).sum())
    z = norm.ppf(0.5 + confidence / 2)
    se_k = sigma / np.sqrt(sxx)
    se_b = sigma * np.sqrt(1 / len(y_in) + y_in.mean() ** 2 / sxx)
    return 2 * z * se_k, 2 * z * se_b


def _assert_widths_near(
    k_interval: tuple[float, float] | list[float],
    b_interval: tuple[float, float] | list[float],
    expected: tuple[float, float],
) -> None:
    """Bootstrap widths within a factor 2 of the analytic ones (100 resamples wobble ~10%)."""
    for interval, analytic in zip((k_interval, b_interval), expected, strict=True):
        width = interval[1] - interval[0]
        assert 0.5 * analytic < width < 2.0 * analytic, (interval, width, analytic)


def test_closed_form_matches_hand_computation() -> None:
    # y = 1,2,3 and p = 2,4,7: slope = sum((y-2)(p-13/3)) / sum((y-2)^2) = (7/3+8/3)/2 = 5/2.
    k, b = closed_form(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0]))
    assert k == pytest.approx(2.5)
    assert b == pytest.approx(13 / 3 - 2.5 * 2)


def test_recovers_unclipped_map_within_interval() -> None:
    y, p = _synthetic(0.82, -0.04, 400, 0.1, seed=1)
    result = fit(y, p, RecalibrationConfig(n_bootstrap=100, seed=2), "pooled")
    assert result.k_interval[0] <= 0.82 <= result.k_interval[1]
    assert result.b_interval[0] <= -0.04 <= result.b_interval[1]
    _assert_widths_near(result.k_interval, result.b_interval, _analytic_widths(y, p, 0.82, -0.04))
    assert result.mse_after < result.mse_before
    assert result.mse_after == pytest.approx(0.01, rel=0.25)  # the noise variance


def test_recovers_map_when_clipping_is_active() -> None:
    # k*y+b spans [0.4, 5.6]: about 15% of rows are clipped at each end.
    y, p = _synthetic(1.3, -0.9, 600, 0.08, seed=3)
    result = fit(y, p, RecalibrationConfig(n_bootstrap=100, seed=4), "pooled")
    assert result.extra["clipped_fraction"] > 0.2
    assert result.k_interval[0] <= 1.3 <= result.k_interval[1]
    assert result.b_interval[0] <= -0.9 <= result.b_interval[1]
    _assert_widths_near(result.k_interval, result.b_interval, _analytic_widths(y, p, 1.3, -0.9))
    naive_k, _ = closed_form(y, p)
    assert abs(result.map.k - 1.3) < abs(naive_k - 1.3)  # clipping biases the closed form


@settings(max_examples=25, deadline=None)
@given(st.floats(0.5, 1.5), st.floats(-0.5, 0.5))
def test_noise_free_fit_is_exact(k: float, b: float) -> None:
    y = np.linspace(1.0, 5.0, 41)
    fitted = fit_map(y, np.clip(k * y + b, 1.0, 5.0), 1.0, 5.0)
    assert np.allclose(fitted.apply(y), np.clip(k * y + b, 1.0, 5.0), atol=1e-6)


def test_refusals_have_clear_messages() -> None:
    config = RecalibrationConfig(min_rows=10)
    with pytest.raises(RecalibrationError, match="5 overlapping rows, need at least 10"):
        fit(np.arange(5.0), np.arange(5.0), config, "pooled")
    with pytest.raises(RecalibrationError, match="labels are constant"):
        fit(np.full(20, 3.0), np.arange(20.0), config, "pooled")
    with pytest.raises(ConfigError, match="--range"):
        RecalibrationConfig(lo=5, hi=1)


def test_map_and_calibration_round_trip() -> None:
    y, p = _synthetic(0.9, 0.1, 60, 0.1, seed=5)
    joined = pd.DataFrame({"mos": y, "prediction": p, "subset": ["A", "B"] * 30,
                           "label_version": "lv-x"})
    calibration = fit_calibration(joined, RecalibrationConfig(n_bootstrap=20), "mos", "subset",
                                  "group")
    again = Calibration.from_dict(json.loads(calibration.to_json()))
    assert again == calibration
    assert LinearMap.from_dict({"k": 1, "b": 0, "lo": 1, "hi": 5}).apply(np.array([7.0])) == 5.0


def _labels_table(ids: list[str], mos: list[float]) -> pa.Table:
    count = len(ids)
    columns = {name: [None] * count for name in LABELS_SCHEMA.names}
    columns.update(dataset=["folder"] * count, image_id=ids, mos=mos, split=["train"] * count,
                   label_version=["lv-in"] * count)
    return pa.table(columns, schema=LABELS_SCHEMA)


def test_apply_keeps_original_and_changes_version() -> None:
    table = _labels_table(["a", "b", "c"], [1.0, 3.0, 5.0])
    pooled = fit(*_synthetic(0.5, 1.0, 50, 0.01, seed=6), RecalibrationConfig(n_bootstrap=10),
                 "pooled")
    calibration = Calibration(RecalibrationConfig(n_bootstrap=10), pooled)
    result, fallback = apply_calibration(table, calibration)
    assert result.schema == RECALIBRATED_LABELS_SCHEMA and fallback == 0
    assert result.column("mos").to_pylist() == [1.0, 3.0, 5.0]
    expected = np.clip(pooled.map.k * np.array([1.0, 3.0, 5.0]) + pooled.map.b, 1, 5)
    assert np.allclose(result.column("mos_recalibrated").to_numpy(), expected)
    assert result.column("label_version")[0].as_py() not in ("lv-in", None)


def test_job_recovers_shifted_sample_and_applies(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    write_shifted_variant(tmp_path, n=150, seed=0)
    rows = [line.split(",") for line in (tmp_path / "labels.csv").read_text().split()[1:]]
    ids, scores = [row[0] for row in rows], [float(row[1]) for row in rows]
    pq.write_table(_labels_table(ids, scores), tmp_path / "labels.parquet")
    out = tmp_path / "out"
    code = run(["--labels", str(tmp_path / "labels.parquet"), "--predictions",
                str(tmp_path / "predictions.parquet"), "--range", "1,5", "--out", str(out),
                "--bootstrap", "50"])
    assert code == 0
    saved = json.loads((out / "calibration.json").read_text())
    k_lo, k_hi = saved["pooled"]["k_interval"]
    b_lo, b_hi = saved["pooled"]["b_interval"]
    assert k_lo <= SHIFT_K <= k_hi and b_lo <= SHIFT_B <= b_hi
    predictions = pq.read_table(tmp_path / "predictions.parquet").to_pandas()
    p = predictions.set_index("image_id").loc[ids, "prediction"].to_numpy(np.float64)
    expected = _analytic_widths(np.array(scores), p, SHIFT_K, SHIFT_B)
    _assert_widths_near((k_lo, k_hi), (b_lo, b_hi), expected)
    assert (out / "recalibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fitted = pq.read_table(out / "labels_recalibrated.parquet")
    applied_dir = tmp_path / "applied"
    assert run(["--labels", str(tmp_path / "labels.parquet"), "--apply",
                str(out / "calibration.json"), "--out", str(applied_dir)]) == 0
    applied = pq.read_table(applied_dir / "labels_recalibrated.parquet")
    assert applied.equals(fitted)
    assert "MSE" in capsys.readouterr().out


def test_job_refuses_disjoint_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq.write_table(_labels_table(["a", "b"], [1.0, 2.0]), tmp_path / "l.parquet")
    pq.write_table(pa.table({"image_id": ["x"], "prediction": [1.0]}), tmp_path / "p.parquet")
    assert run(["--labels", str(tmp_path / "l.parquet"), "--predictions",
                str(tmp_path / "p.parquet"), "--out", str(tmp_path / "o")]) == 1
    assert "share no image ids" in capsys.readouterr().err


def test_apply_with_fitting_flags_is_exit_2_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--labels", "l.parquet", "--apply", "c.json", "--range", "1,5", "--boot", "9"]
    with pytest.raises(SystemExit) as exit_info:
        run([*argv, "--seed=3", "--by", "subset"])  # abbreviations and --flag=value count too
    assert exit_info.value.code == 2
    assert "--range, --by, --bootstrap, --seed only affect fitting" in capsys.readouterr().err
    assert not (tmp_path / "recalibration").exists()


def test_job_bad_range_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(["--labels", "l.parquet", "--range", "5,1"])
    assert exit_info.value.code == 2
    assert "--range" in capsys.readouterr().err


def test_failed_calibration_write_leaves_nothing_and_rerun_is_exact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from features import files

    write_shifted_variant(tmp_path, n=60, seed=1)
    rows = [line.split(",") for line in (tmp_path / "labels.csv").read_text().split()[1:]]
    pq.write_table(_labels_table([r[0] for r in rows], [float(r[1]) for r in rows]),
                   tmp_path / "labels.parquet")
    argv = ["--labels", str(tmp_path / "labels.parquet"), "--predictions",
            str(tmp_path / "predictions.parquet"), "--bootstrap", "20"]
    assert run([*argv, "--out", str(tmp_path / "ref")]) == 0
    real_replace, failed = os.replace, []

    def flaky(source: object, target: object) -> None:
        if str(target).endswith("calibration.json") and not failed:
            failed.append(target)
            raise OSError("injected")
        real_replace(source, target)  # type: ignore[arg-type]

    monkeypatch.setattr(files.os, "replace", flaky)
    with pytest.raises(OSError, match="injected"):
        run([*argv, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "calibration.json").exists()
    assert run([*argv, "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "calibration.json").read_text() == \
        (tmp_path / "ref" / "calibration.json").read_text()
