"""Short runner names mapped to Beam runners, plus the options each one needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schemas.errors import ConfigError


def _dask_runner() -> Any:
    from apache_beam.runners.dask.dask_runner import DaskRunner

    return DaskRunner()


@dataclass(frozen=True)
class RunnerEntry:
    """How to build one runner.

    Attributes:
        beam_name: Beam's runner name, used when no factory is given.
        factory: builds a runner instance (runners Beam does not resolve by name).
        remote: whether workers run outside this process (no local progress from memory).
    """

    beam_name: str
    factory: Callable[[], Any] | None = None
    remote: bool = True

    def build(self) -> Any:
        """A runner instance or name accepted by beam.Pipeline."""
        return self.factory() if self.factory is not None else self.beam_name


RUNNERS: dict[str, RunnerEntry] = {
    "direct": RunnerEntry("DirectRunner", remote=False),
    "dask": RunnerEntry("DaskRunner", factory=_dask_runner),
    "dataflow": RunnerEntry("DataflowRunner"),
    "flink": RunnerEntry("FlinkRunner"),
    "spark": RunnerEntry("SparkRunner"),
    "portable": RunnerEntry("PortableRunner"),
}


def runner_entry(name: str) -> RunnerEntry:
    """Registry lookup.

    Raises:
        ConfigError: unknown runner name.
    """
    try:
        return RUNNERS[name]
    except KeyError:
        raise ConfigError(f"--runner {name!r}: choose one of {', '.join(RUNNERS)}") from None
