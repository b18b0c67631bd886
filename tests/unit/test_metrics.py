"""Evaluation metrics against scipy.stats and hand computations on fixed arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from features.training.metrics import (
    METRIC_SETS,
    binary_accuracy,
    compute_metrics,
    earth_movers_distance,
    mos_from_distribution,
)
from schemas.errors import ConfigError

TRUTH = np.array([3.2, 4.9, 5.0, 5.1, 6.7, 4.4, 7.9, 2.5, 5.5, 6.0])
PREDICTION = np.array([3.9, 5.2, 4.8, 5.0, 6.1, 4.9, 6.8, 3.6, 5.0, 5.0])


def test_metrics_equal_scipy_and_numpy() -> None:
    report = compute_metrics(TRUTH, PREDICTION)
    values = report.values
    assert values["srcc"] == pytest.approx(stats.spearmanr(TRUTH, PREDICTION)[0], abs=1e-12)
    assert values["plcc"] == pytest.approx(stats.pearsonr(TRUTH, PREDICTION)[0], abs=1e-12)
    assert values["krcc"] == pytest.approx(stats.kendalltau(TRUTH, PREDICTION)[0], abs=1e-12)
    assert values["rmse"] == pytest.approx(np.sqrt(np.mean((TRUTH - PREDICTION) ** 2)))
    assert values["mae"] == pytest.approx(np.mean(np.abs(TRUTH - PREDICTION)))
    assert report.count == 10
    assert set(values) == set(METRIC_SETS["ava"])


def test_accuracy_treats_five_as_the_low_class_on_both_sides() -> None:
    # truth low: 3.2 4.9 5.0 4.4 2.5; prediction low: 3.9 4.8 5.0 4.9 3.6 5.0 5.0
    # disagreements: 5.1->5.0 (high vs low), 5.5->5.0, 6.0->5.0, 4.9->5.2 (low vs high)
    assert binary_accuracy(TRUTH, PREDICTION) == pytest.approx(6 / 10)
    assert binary_accuracy(TRUTH, PREDICTION, threshold=4.0) == pytest.approx(1.0)


def test_scut_set_reports_pc_as_plcc() -> None:
    report = compute_metrics(TRUTH, PREDICTION, METRIC_SETS["scut"])
    assert report.values["pc"] == pytest.approx(stats.pearsonr(TRUTH, PREDICTION)[0])
    assert set(report.values) == {"mae", "rmse", "pc"}


def test_constant_prediction_gives_nan_that_serialises_as_null() -> None:
    with pytest.warns(stats.ConstantInputWarning):
        report = compute_metrics(TRUTH, np.full(10, 5.0), ["srcc", "mae"])
    assert np.isnan(report.values["srcc"])
    assert json.loads(json.dumps(report.to_dict()))["metrics"]["srcc"] is None


def test_bad_requests_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown metric"):
        compute_metrics(TRUTH, PREDICTION, ["nope"])
    with pytest.raises(ConfigError, match="two items"):
        compute_metrics(TRUTH[:1], PREDICTION[:1])


def test_mos_and_emd_of_distributions() -> None:
    uniform = np.full((1, 10), 0.1)
    peak = np.zeros((1, 10))
    peak[0, 9] = 1.0
    assert mos_from_distribution(uniform)[0] == pytest.approx(5.5)
    assert mos_from_distribution(peak)[0] == pytest.approx(10.0)
    # CDF differences 0.1, 0.2, ..., 0.9, 0 -> sqrt(mean(k^2 / 100))
    expected = np.sqrt(np.sum((np.arange(1, 10) / 10.0) ** 2) / 10)
    assert earth_movers_distance(uniform, peak)[0] == pytest.approx(expected)
    assert earth_movers_distance(peak, peak)[0] == 0.0
