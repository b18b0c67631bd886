"""Settings of the DAG's stages (download, labels, head): frozen, validated, dict round-trips."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from schemas.errors import ConfigError

HEAD_TARGETS = ("mos", "distribution")

T = TypeVar("T")
S = TypeVar("S", bound="Settings")


def require(condition: bool, name: str, message: str) -> None:
    """Raise ConfigError("NAME: MESSAGE") unless condition holds."""
    if not condition:
        raise ConfigError(f"{name}: {message}")


def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def build_settings(cls: Callable[..., T], data: Mapping[str, Any] | None, name: str) -> T:
    """cls(**data) that names unknown keys instead of raising TypeError."""
    data = dict(data or {})
    known = {field.name for field in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    require(not unknown, name, f"unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**data)


class Settings:
    """to_dict/from_dict of the nested settings dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields (tuples as lists)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any] | None, name: str = "settings") -> S:
        """Build from a dict; unknown keys and bad values raise ConfigError naming them."""
        return build_settings(cls, data, name)


@dataclass(frozen=True)
class DownloadSettings(Settings):
    """How `pipelines.download` fetches, and how many failed items the DAG tolerates."""

    workers: int = 16
    retries: int = 3
    timeout: float = 20.0
    backoff: float = 0.5
    max_failed_fraction: float = 0.05

    def __post_init__(self) -> None:
        require(is_int(self.workers) and self.workers >= 1, "download.workers", "must be >= 1")
        require(is_int(self.retries) and self.retries >= 0, "download.retries", "must be >= 0")
        for name in ("timeout", "backoff"):
            value = getattr(self, name)
            require(is_number(value) and value > 0, f"download.{name}", "must be > 0")
        fraction = self.max_failed_fraction
        require(
            is_number(fraction) and 0 <= fraction <= 1,
            "download.max_failed_fraction",
            "must be in [0, 1]",
        )


@dataclass(frozen=True)
class LabelSettings(Settings):
    """Parameters of `pipelines.labels`: seeded splits (used when no official split exists)
    and, for AVA, the share of malformed AVA.txt lines a run tolerates (above it the stage
    fails; None = the CLI's default, 0.01)."""

    seed: int = 0
    test_fraction: float = 0.1
    val_fraction: float = 0.1
    max_malformed_share: float | None = None

    def __post_init__(self) -> None:
        require(is_int(self.seed), "labels.seed", "must be an integer")
        for name in ("test_fraction", "val_fraction", "max_malformed_share"):
            value = getattr(self, name)
            if value is None and name == "max_malformed_share":
                continue
            require(is_number(value) and 0 <= value < 1, f"labels.{name}", "must be in [0, 1)")


@dataclass(frozen=True)
class HeadSettings(Settings):
    """Training settings shared by the heads (each view trains the head of the same name)."""

    epochs_per_stage: int = 20
    patience: int = 5
    batch_size: int | None = None
    learning_rates: tuple[float, ...] = ()
    target: str = "mos"
    label_noise: float = 0.0
    seed: int = 0
    retrain: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "learning_rates", tuple(self.learning_rates or ()))
        for name in ("epochs_per_stage", "patience"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, f"head.{name}", "must be an integer >= 1")
        batch = self.batch_size
        require(batch is None or (is_int(batch) and batch >= 1), "head.batch_size", "must be >= 1")
        require(
            all(is_number(rate) and rate > 0 for rate in self.learning_rates),
            "head.learning_rates",
            "must be positive numbers",
        )
        require(self.target in HEAD_TARGETS, "head.target", f"choose one of {HEAD_TARGETS}")
        noise = self.label_noise
        require(is_number(noise) and noise >= 0, "head.label_noise", "must be >= 0")
        require(is_int(self.seed), "head.seed", "must be an integer")
        require(isinstance(self.retrain, bool), "head.retrain", "must be true or false")

    def argv(self) -> list[str]:
        """Flags of `jobs.train` for these settings.

        Returns:
            The argv fragment (without --store/--view/--labels/--head/--out).
        """
        argv = [
            *("--epochs-per-stage", str(self.epochs_per_stage)),
            *("--patience", str(self.patience)),
            *("--target", self.target),
            *("--label-noise", repr(float(self.label_noise))),
            *("--seed", str(self.seed)),
        ]
        if self.batch_size is not None:
            argv += ["--batch-size", str(self.batch_size)]
        if self.learning_rates:
            argv += ["--learning-rates", ",".join(repr(float(r)) for r in self.learning_rates)]
        return argv
