"""Fit y' = clip(k*y + b, lo, hi) so new labels agree with a reference model, with bootstrap CIs."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from schemas.config_fields import reject_unknown_fields
from schemas.errors import ConfigError, RecalibrationError

LOGGER = logging.getLogger(__name__)
MAP_CHOICES = ("pooled", "group")


@dataclass(frozen=True)
class LinearMap:
    """y' = clip(k * y + b, lo, hi)."""

    k: float
    b: float
    lo: float
    hi: float

    def __post_init__(self) -> None:
        values = (self.k, self.b, self.lo, self.hi)
        if not all(math.isfinite(value) for value in values):
            raise ConfigError(f"calibration map: non-finite value in {values}")
        if not self.lo < self.hi:
            raise ConfigError(f"calibration map: range lo={self.lo} must be below hi={self.hi}")

    def apply(self, y: np.ndarray) -> np.ndarray:
        """Mapped labels."""
        return np.clip(self.k * np.asarray(y, dtype=np.float64) + self.b, self.lo, self.hi)

    def to_dict(self) -> dict[str, float]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinearMap:
        """Inverse of to_dict.

        Raises:
            ConfigError: a missing, unknown or invalid value.
        """
        if set(data) != {"k", "b", "lo", "hi"}:
            raise ConfigError(f"calibration map: expected keys k, b, lo, hi, got {sorted(data)}")
        return cls(**{key: float(value) for key, value in data.items()})


@dataclass(frozen=True)
class RecalibrationConfig:
    """Fit parameters.

    Attributes:
        lo / hi: the label range the mapped labels are clipped to.
        n_bootstrap: bootstrap resamples for the confidence intervals.
        confidence: two-sided level of the intervals.
        seed: bootstrap seed.
        min_rows: fewer overlapping rows (per group too) are refused.
    """

    lo: float = 1.0
    hi: float = 5.0
    n_bootstrap: int = 200
    confidence: float = 0.95
    seed: int = 0
    min_rows: int = 10

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ConfigError(f"--range: need finite lo < hi, got {self.lo},{self.hi}")
        if self.n_bootstrap < 10:
            raise ConfigError(f"--bootstrap: need at least 10 resamples, got {self.n_bootstrap}")
        if not 0.5 <= self.confidence < 1.0:
            raise ConfigError(f"--confidence: must be in [0.5, 1), got {self.confidence}")
        if self.min_rows < 3:
            raise ConfigError(f"--min-rows: must be >= 3, got {self.min_rows}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecalibrationConfig:
        """Inverse of to_dict.

        Raises:
            ConfigError: an unknown field or an invalid value.
        """
        reject_unknown_fields(cls, data, "recalibration config")
        return cls(**data)


@dataclass(frozen=True)
class FitResult:
    """One fitted map with its intervals and before/after agreement."""

    n: int
    map: LinearMap
    k_interval: tuple[float, float]
    b_interval: tuple[float, float]
    mse_before: float
    mse_after: float
    plcc_before: float
    plcc_after: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        data = asdict(self)
        data["k_interval"], data["b_interval"] = list(self.k_interval), list(self.b_interval)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitResult:
        """Inverse of to_dict."""
        values = dict(data)
        values["map"] = LinearMap.from_dict(values["map"])
        values["k_interval"] = tuple(values["k_interval"])
        values["b_interval"] = tuple(values["b_interval"])
        return cls(**values)


def check_fit_inputs(y: np.ndarray, p: np.ndarray, min_rows: int, name: str) -> None:
    """Refuse inputs a line cannot be fitted to.

    Raises:
        RecalibrationError: too few rows, non-finite values, or a constant y or p.
    """
    if len(y) < min_rows:
        raise RecalibrationError(f"{name}: {len(y)} overlapping rows, need at least {min_rows}")
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        raise RecalibrationError(f"{name}: labels or predictions contain NaN or infinity")
    if np.ptp(y) == 0:
        raise RecalibrationError(f"{name}: the labels are constant ({y[0]}); k is not identifiable")
    if np.ptp(p) == 0:
        raise RecalibrationError(f"{name}: the predictions are constant ({p[0]})")


def closed_form(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Ordinary least squares of p on y without clipping: (k, b)."""
    y_centred = y - y.mean()
    k = float(y_centred @ (p - p.mean()) / (y_centred @ y_centred))
    return k, float(p.mean() - k * y.mean())


def fit_map(y: np.ndarray, p: np.ndarray, lo: float, hi: float) -> LinearMap:
    """Minimise mean((clip(k*y+b, lo, hi) - p)^2), starting from the closed-form fit.

    Returns:
        The refined map (the closed form when refinement does not lower the error).
    """
    start = closed_form(y, p)

    def residuals(theta: np.ndarray) -> np.ndarray:
        return np.clip(theta[0] * y + theta[1], lo, hi) - p  # type: ignore[no-any-return]

    def jacobian(theta: np.ndarray) -> np.ndarray:
        inside = ((theta[0] * y + theta[1]) > lo) & ((theta[0] * y + theta[1]) < hi)
        return np.column_stack([y * inside, inside.astype(np.float64)])

    solution = least_squares(residuals, np.asarray(start), jac=jacobian, method="trf")
    best = (
        solution.x
        if solution.cost <= 0.5 * float(residuals(np.asarray(start)) @ residuals(np.asarray(start)))
        else start
    )
    return LinearMap(float(best[0]), float(best[1]), lo, hi)


def plcc(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def bootstrap_intervals(
    y: np.ndarray, p: np.ndarray, config: RecalibrationConfig
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile bootstrap intervals of k and b (rows resampled with replacement)."""
    rng = np.random.default_rng(config.seed)
    draws = []
    for _ in range(config.n_bootstrap):
        index = rng.integers(0, len(y), len(y))
        if np.ptp(y[index]) == 0:
            continue
        fitted = fit_map(y[index], p[index], config.lo, config.hi)
        draws.append((fitted.k, fitted.b))
    if len(draws) < config.n_bootstrap // 2:
        raise RecalibrationError("bootstrap: too many resamples had constant labels")
    values = np.asarray(draws)
    tail = (1.0 - config.confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail], axis=0)
    return (float(low[0]), float(high[0])), (float(low[1]), float(high[1]))


def fit(y: np.ndarray, p: np.ndarray, config: RecalibrationConfig, name: str) -> FitResult:
    """Check, fit, bootstrap and score one group.

    Raises:
        RecalibrationError: the inputs fail check_fit_inputs.
    """
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    check_fit_inputs(y, p, config.min_rows, name)
    fitted = fit_map(y, p, config.lo, config.hi)
    k_interval, b_interval = bootstrap_intervals(y, p, config)
    mapped = fitted.apply(y)
    clipped = float(
        np.mean((fitted.k * y + fitted.b < config.lo) | (fitted.k * y + fitted.b > config.hi))
    )
    return FitResult(
        n=len(y),
        map=fitted,
        k_interval=k_interval,
        b_interval=b_interval,
        mse_before=float(np.mean((y - p) ** 2)),
        mse_after=float(np.mean((mapped - p) ** 2)),
        plcc_before=plcc(y, p),
        plcc_after=plcc(mapped, p),
        extra={"closed_form": list(closed_form(y, p)), "clipped_fraction": clipped},
    )
