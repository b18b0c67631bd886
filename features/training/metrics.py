"""Evaluation metrics (SRCC, PLCC, KRCC, RMSE, MAE, binary accuracy, EMD) selected by registry.

scipy.stats is imported inside the correlation functions: at module level it cost about 0.9 s
of every job's start-up, --help included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from schemas.errors import ConfigError

AVA_THRESHOLD = 5.0  # the reference's AVA split: MOS <= 5 is the low class

MetricFunction = Callable[[np.ndarray, np.ndarray, float], float]


def _pair(truth: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ in length")
    return truth, prediction


def srcc(truth: np.ndarray, prediction: np.ndarray, threshold: float = AVA_THRESHOLD) -> float:
    """Spearman rank correlation."""
    from scipy import stats

    truth, prediction = _pair(truth, prediction)
    return float(stats.spearmanr(truth, prediction).statistic)


def plcc(truth: np.ndarray, prediction: np.ndarray, threshold: float = AVA_THRESHOLD) -> float:
    """Pearson linear correlation."""
    from scipy import stats

    truth, prediction = _pair(truth, prediction)
    return float(stats.pearsonr(truth, prediction).statistic)


def krcc(truth: np.ndarray, prediction: np.ndarray, threshold: float = AVA_THRESHOLD) -> float:
    """Kendall rank correlation (tau-b)."""
    from scipy import stats

    truth, prediction = _pair(truth, prediction)
    return float(stats.kendalltau(truth, prediction).statistic)


def rmse(truth: np.ndarray, prediction: np.ndarray, threshold: float = AVA_THRESHOLD) -> float:
    """Root mean squared error."""
    truth, prediction = _pair(truth, prediction)
    return float(np.sqrt(np.mean((truth - prediction) ** 2)))


def mae(truth: np.ndarray, prediction: np.ndarray, threshold: float = AVA_THRESHOLD) -> float:
    """Mean absolute error."""
    truth, prediction = _pair(truth, prediction)
    return float(np.mean(np.abs(truth - prediction)))


def binary_accuracy(
    truth: np.ndarray, prediction: np.ndarray, threshold: float = AVA_THRESHOLD
) -> float:
    """Share of items on the same side of the threshold (value <= threshold is the low class)."""
    truth, prediction = _pair(truth, prediction)
    return float(np.mean((truth <= threshold) == (prediction <= threshold)))


METRICS: dict[str, MetricFunction] = {
    "srcc": srcc,
    "plcc": plcc,
    "krcc": krcc,
    "rmse": rmse,
    "mae": mae,
    "accuracy": binary_accuracy,
    "pc": plcc,
}

# Which metrics a dataset family reports (the MLSP paper for AVA; MAE/RMSE/PC for SCUT-FBP5500).
METRIC_SETS: dict[str, tuple[str, ...]] = {
    "ava": ("srcc", "plcc", "krcc", "rmse", "mae", "accuracy"),
    "scut": ("mae", "rmse", "pc"),
    "all": ("srcc", "plcc", "krcc", "rmse", "mae", "accuracy"),
}


@dataclass(frozen=True)
class MetricReport:
    """Metric values over n items.

    Attributes:
        values: metric name -> value (NaN where undefined, e.g. a constant prediction).
        count: number of (truth, prediction) pairs.
        threshold: the accuracy threshold used.
    """

    values: Mapping[str, float]
    count: int
    threshold: float

    def to_dict(self) -> dict[str, object]:
        """JSON form (NaN becomes None)."""
        values = {name: (None if np.isnan(v) else v) for name, v in self.values.items()}
        return {"metrics": values, "count": self.count, "threshold": self.threshold}


def compute_metrics(
    truth: np.ndarray,
    prediction: np.ndarray,
    names: Sequence[str] = METRIC_SETS["ava"],
    threshold: float = AVA_THRESHOLD,
) -> MetricReport:
    """Evaluate the named metrics on aligned truth and prediction vectors.

    Args:
        truth: ground-truth scores.
        prediction: predicted scores, same length.
        names: metric names from METRICS.
        threshold: class threshold of the binary accuracy.

    Returns:
        A MetricReport.

    Raises:
        ConfigError: an unknown metric name, or fewer than two items.
    """
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    truth, prediction = _pair(truth, prediction)
    if truth.size < 2:
        raise ConfigError(f"at least two items are needed for metrics, got {truth.size}")
    values = {name: METRICS[name](truth, prediction, threshold) for name in names}
    return MetricReport(values, int(truth.size), threshold)


def mos_from_distribution(distribution: np.ndarray) -> np.ndarray:
    """Expected score sum(i * p_i) of [N, bins] distributions over scores 1..bins."""
    distribution = np.asarray(distribution, dtype=np.float64)
    scores = np.arange(1, distribution.shape[-1] + 1, dtype=np.float64)
    return distribution @ scores / distribution.sum(axis=-1)


def earth_movers_distance(
    truth: np.ndarray, prediction: np.ndarray, power: float = 2.0
) -> np.ndarray:
    """NIMA's EMD per item: (mean over bins of |CDF_t - CDF_p|^r)^(1/r) for [N, bins] inputs."""
    cdf_truth = np.cumsum(np.asarray(truth, dtype=np.float64), axis=-1)
    cdf_prediction = np.cumsum(np.asarray(prediction, dtype=np.float64), axis=-1)
    distance = np.mean(np.abs(cdf_truth - cdf_prediction) ** power, axis=-1)
    return np.asarray(distance ** (1.0 / power))
