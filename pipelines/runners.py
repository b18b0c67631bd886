"""Short runner names mapped to Beam runners, plus the options and environment each one needs."""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError

LOGGER = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
GPU_DOCKERFILE = "docker/gpu/Dockerfile"
DEFAULT_DASK_WORKERS = 2  # processes of the LocalCluster started when no --dask-address is given
# registry/path[:port]/name followed by a tag or a digest: an image reference that can be pulled.
IMAGE_REFERENCE = re.compile(
    r"[a-z0-9][a-z0-9._-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)*(:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})"
)


@dataclass(frozen=True)
class RunnerSettings:
    """Runner-related CLI settings (Beam flags not listed here pass through untouched)."""

    runner: str = "direct"
    dask_address: str | None = None
    dask_workers: int | None = None  # None: DEFAULT_DASK_WORKERS (only without dask_address)
    project: str | None = None
    region: str | None = None
    temp_location: str | None = None
    staging_location: str | None = None
    machine_type: str | None = None
    max_workers: int | None = None
    sdk_container_image: str | None = None
    worker_accelerator: str | None = None
    requirements_file: str | None = None

    def __post_init__(self) -> None:
        if self.runner not in RUNNERS:
            raise ConfigError(f"--runner {self.runner!r}: choose one of {', '.join(RUNNERS)}")
        if self.dask_workers is not None and self.dask_workers < 1:
            raise ConfigError(f"--dask-workers must be >= 1, got {self.dask_workers}")
        if self.dask_workers is not None and self.dask_address is not None:
            raise ConfigError(
                "--dask-workers not allowed with --dask-address: the scheduler's cluster has "
                "its own workers (omit --dask-workers, or omit --dask-address for a LocalCluster)"
            )
        if self.worker_accelerator is not None:
            accelerator_type, _, count = self.worker_accelerator.partition(":")
            if not accelerator_type or not count.isdigit() or int(count) < 1:
                raise ConfigError(
                    f"--worker-accelerator {self.worker_accelerator!r}: expected TYPE:COUNT, "
                    "e.g. nvidia-tesla-t4:1"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunnerSettings:
        """Inverse of to_dict."""
        return cls(**data)


def _dask_runner() -> Any:
    from apache_beam.runners.dask.dask_runner import DaskRunner

    return DaskRunner()


def _dask_options(settings: RunnerSettings) -> list[str]:
    # One shard per dask.Bag partition, so shards spread over workers instead of one partition.
    return ["--dask_partition_size=1"]


def _dataflow_options(settings: RunnerSettings) -> list[str]:
    required = {
        "--project": settings.project,
        "--region": settings.region,
        "--temp-location": settings.temp_location,
    }
    missing = [flag for flag, value in required.items() if not value]
    if missing:
        raise ConfigError(f"--runner dataflow needs {', '.join(missing)}")
    if not str(settings.temp_location).startswith("gs://"):
        raise ConfigError(
            f"--temp-location {settings.temp_location!r}: Dataflow needs a gs:// path"
        )
    options = [
        f"--project={settings.project}",
        f"--region={settings.region}",
        f"--temp_location={settings.temp_location}",
        f"--staging_location={settings.staging_location or str(settings.temp_location).rstrip('/') + '/staging'}",
    ]
    options += _package_options(settings)
    optional = {
        "--worker_machine_type": settings.machine_type,
        "--max_num_workers": settings.max_workers,
        "--sdk_container_image": settings.sdk_container_image,
    }
    options += [f"{flag}={value}" for flag, value in optional.items() if value is not None]
    if settings.worker_accelerator:
        accelerator_type, _, count = settings.worker_accelerator.partition(":")
        options.append(
            "--dataflow_service_options=worker_accelerator="
            f"type:{accelerator_type};count:{count};install-nvidia-driver"
        )
    return options


def _package_options(settings: RunnerSettings) -> list[str]:
    """How workers get this package: the container has it installed (docker/gpu), else a
    requirements file, else setup.py is shipped. Never setup.py into a container: its
    install_requires would pull tensorflow-cpu over the container's CUDA tensorflow."""
    options = []
    if settings.requirements_file:
        options.append(f"--requirements_file={settings.requirements_file}")
    if not settings.sdk_container_image and not settings.requirements_file:
        options.append(f"--setup_file={PROJECT_ROOT / 'setup.py'}")
    return options


def _portable_options(settings: RunnerSettings) -> list[str]:
    """Flink, Spark and portable: the container becomes the DOCKER environment's image."""
    options = []
    if settings.sdk_container_image:
        options += [
            "--environment_type=DOCKER",
            f"--environment_option=docker_container_image={settings.sdk_container_image}",
            f"--sdk_container_image={settings.sdk_container_image}",
        ]
    if settings.requirements_file:
        options.append(f"--requirements_file={settings.requirements_file}")
    return options


def _no_options(settings: RunnerSettings) -> list[str]:
    return []


@dataclass(frozen=True)
class RunnerEntry:
    """How to build one runner.

    Attributes:
        beam_name: Beam's runner name, used when no factory is given.
        factory: builds a runner instance (runners Beam does not resolve by name).
        options: Beam flags derived from RunnerSettings.
        remote_workers: workers cannot see this machine's files (paths must be URLs).
        accepts: RunnerSettings fields this runner uses; any other one set is refused, so no
            user flag is silently dropped.
    """

    beam_name: str
    factory: Callable[[], Any] | None = None
    options: Callable[[RunnerSettings], list[str]] = _no_options
    remote_workers: bool = False
    accepts: frozenset[str] = frozenset()

    def build(self) -> Any:
        """A runner instance or name accepted by beam.Pipeline."""
        return self.factory() if self.factory is not None else self.beam_name


_DATAFLOW_FLAGS = frozenset(
    {
        "project",
        "region",
        "temp_location",
        "staging_location",
        "machine_type",
        "max_workers",
        "sdk_container_image",
        "worker_accelerator",
        "requirements_file",
    }
)
_PORTABLE_FLAGS = frozenset({"sdk_container_image", "requirements_file"})


def _portable(beam_name: str) -> RunnerEntry:
    return RunnerEntry(
        beam_name, options=_portable_options, remote_workers=True, accepts=_PORTABLE_FLAGS
    )


RUNNERS: dict[str, RunnerEntry] = {
    "direct": RunnerEntry("DirectRunner"),
    "dask": RunnerEntry(
        "DaskRunner",
        factory=_dask_runner,
        options=_dask_options,
        accepts=frozenset({"dask_address", "dask_workers"}),
    ),
    "dataflow": RunnerEntry(
        "DataflowRunner", options=_dataflow_options, remote_workers=True, accepts=_DATAFLOW_FLAGS
    ),
    "flink": _portable("FlinkRunner"),
    "spark": _portable("SparkRunner"),
    "portable": _portable("PortableRunner"),
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


def check_paths_reachable(settings: RunnerSettings, **paths: str) -> None:
    """Remote workers need URLs (gs://, s3://), not this machine's paths.

    Raises:
        ConfigError: a local path given to a runner whose workers run elsewhere.
    """
    if not runner_entry(settings.runner).remote_workers:
        return
    local = [
        f"--{name.replace('_', '-')} {value}" for name, value in paths.items() if "://" not in value
    ]
    if local:
        raise ConfigError(
            f"--runner {settings.runner} runs workers elsewhere; use URLs for {', '.join(local)}"
        )


def runner_options(settings: RunnerSettings) -> list[str]:
    """Beam flags for the runner, without starting anything.

    Raises:
        ConfigError: a required runner flag is missing or malformed.
    """
    entry = runner_entry(settings.runner)
    defaults = RunnerSettings()
    unused = [
        "--" + field.name.replace("_", "-")
        for field in fields(RunnerSettings)
        if field.name != "runner"
        and field.name not in entry.accepts
        and getattr(settings, field.name) != getattr(defaults, field.name)
    ]
    if unused:
        raise ConfigError(
            f"{', '.join(unused)} not used by --runner {settings.runner}; remove "
            f"{'it' if len(unused) == 1 else 'them'} or choose a runner that uses "
            f"{'it' if len(unused) == 1 else 'them'}"
        )
    options = entry.options(settings)
    if settings.runner == "dask" and settings.dask_address:
        options.append(f"--dask_client_address={settings.dask_address}")
    return options


@contextlib.contextmanager
def runner_environment(settings: RunnerSettings) -> Iterator[list[str]]:
    """Yield the Beam flags for the runner, starting a local Dask cluster when none is given."""
    options = runner_options(settings)
    if settings.runner != "dask" or settings.dask_address:
        yield options
        return
    from distributed import LocalCluster

    workers = settings.dask_workers or DEFAULT_DASK_WORKERS
    with LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        LOGGER.info(
            "started a local Dask cluster: %d worker processes at %s",
            workers,
            cluster.scheduler_address,
        )
        try:
            yield [*options, f"--dask_client_address={cluster.scheduler_address}"]
        finally:
            _close_clients_of(cluster.scheduler_address)


def _close_clients_of(address: str) -> None:
    """Close the client Beam's DaskRunner opened (it never does), before its cluster goes away,
    so it does not spend 30 s trying to reconnect to a scheduler that was shut down on purpose."""
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:  # no client was created
        return
    if client.scheduler is not None and client.scheduler.address == address:
        client.close()


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """The runner flags shared by the pipelines."""
    group = parser.add_argument_group("runner")
    group.add_argument(
        "--runner", default="direct", choices=sorted(RUNNERS), help="Beam runner (default direct)"
    )
    # One or the other: a scheduler brings its own workers, so --dask-workers would be dropped.
    # Both default to None, so argparse sees any given value (even 2) and exits 2 naming both.
    dask = group.add_mutually_exclusive_group()
    dask.add_argument(
        "--dask-address", help="dask scheduler address; default: start a LocalCluster"
    )
    dask.add_argument(
        "--dask-workers",
        type=int,
        default=None,
        help=f"LocalCluster worker processes (default {DEFAULT_DASK_WORKERS}; not with "
        "--dask-address)",
    )
    group.add_argument("--project", help="Dataflow: GCP project")
    group.add_argument("--region", help="Dataflow: region, e.g. europe-west4")
    group.add_argument("--temp-location", help="Dataflow: gs:// temp location")
    group.add_argument(
        "--staging-location", help="Dataflow: gs:// staging location (default TEMP/staging)"
    )
    group.add_argument("--machine-type", help="Dataflow: worker machine type, e.g. n1-standard-8")
    group.add_argument("--max-workers", type=int, help="Dataflow: maximum number of workers")
    group.add_argument(
        "--sdk-container-image",
        help="Dataflow/Flink/Spark/portable: worker container image with this package installed "
        f"(needed with GPUs: build {GPU_DOCKERFILE})",
    )
    group.add_argument(
        "--worker-accelerator",
        help="Dataflow: GPUs per worker as TYPE:COUNT, e.g. nvidia-tesla-t4:1",
    )
    group.add_argument(
        "--requirements-file",
        help="Dataflow/Flink/Spark/portable: requirements.txt installed on workers "
        "(instead of shipping setup.py)",
    )


def settings_from_args(args: argparse.Namespace) -> RunnerSettings:
    """RunnerSettings from parsed arguments."""
    return RunnerSettings(
        **{name: getattr(args, name) for name in RunnerSettings.__dataclass_fields__}
    )
