"""What the workers of a run will be: container, packages, accelerator and device, checked up front."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pipelines.runners import GPU_DOCKERFILE, IMAGE_REFERENCE, RunnerSettings, runner_options
from schemas.errors import ConfigError

ACCELERATOR_OPTION = "worker_accelerator"


@dataclass(frozen=True)
class WorkerEnvironment:
    """The worker environment a submission asks for, as the runner's PipelineOptions hold it.

    Attributes:
        runner: short runner name.
        accelerator: the worker_accelerator service option, or None.
        container_image: worker container image, or None (the runner's default image).
        requirements_file: requirements installed on workers, or None.
        setup_file: setup.py shipped to workers, or None.
        device: the --device workers will use (gpu whenever an accelerator is requested).
    """

    runner: str
    accelerator: str | None
    container_image: str | None
    requirements_file: str | None
    setup_file: str | None
    device: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form (run summaries, dry runs)."""
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable lines for --dry-run."""
        return [
            f"  {key} = {value if value is not None else '-'}"
            for key, value in asdict(self).items()
        ]


def parsed_options(settings: RunnerSettings, beam_args: Sequence[str]) -> dict[str, Any]:
    """Every option the runner will receive (ours, then the user's Beam flags), as Beam parses them.

    Raises:
        ConfigError: a runner flag is missing, malformed or not used by the runner.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    if settings.runner == "dask":
        # DaskOptions (--dask_client_address, ...) exist only once the runner module is imported;
        # without it whether they parse depends on what the process imported before.
        import apache_beam.runners.dask.dask_runner  # noqa: F401

    options = PipelineOptions([*runner_options(settings), *beam_args])
    return dict(options.get_all_options(retain_unknown_options=True))


def _accelerator(options: dict[str, Any]) -> str | None:
    service = options.get("dataflow_service_options") or []
    found = [value for value in service if str(value).startswith(ACCELERATOR_OPTION)]
    return str(found[-1]) if found else None


def _container(options: dict[str, Any]) -> str | None:
    environment = [
        str(value).split("=", 1)[1]
        for value in options.get("environment_options") or []
        if str(value).startswith("docker_container_image=")
    ]
    image = options.get("sdk_container_image") or options.get("worker_harness_container_image")
    if environment:
        return environment[-1]
    return str(image) if image else None


def _check_container(image: str | None, settings: RunnerSettings, options: dict[str, Any]) -> None:
    if image is not None and not IMAGE_REFERENCE.fullmatch(image):
        raise ConfigError(
            f"--sdk-container-image {image!r}: not a pullable image reference; expected "
            "REGISTRY/PATH/NAME:TAG or ...@sha256:DIGEST (build it from " + GPU_DOCKERFILE + ")"
        )
    if settings.sdk_container_image and options.get("environment_type") not in (None, "DOCKER"):
        raise ConfigError(
            f"--sdk-container-image needs --environment_type=DOCKER, but "
            f"--environment_type={options['environment_type']} was given; drop one of them"
        )
    if image is not None and options.get("setup_file"):
        raise ConfigError(
            "a worker container and setup.py together would reinstall this package with "
            "tensorflow-cpu over the container's tensorflow; pass the image with "
            "--sdk-container-image (not Beam's --sdk_container_image) so setup.py is not shipped"
        )


def _worker_device(accelerator: str | None, image: str | None, device: str) -> str:
    if accelerator is None:
        return device
    if image is None:
        raise ConfigError(
            f"accelerator requested ({accelerator}) but the workers would be CPU-only: setup.py "
            "or a requirements file installs tensorflow-cpu and the default Beam image has no "
            f"CUDA. Build the GPU worker image ({GPU_DOCKERFILE}, see README) and pass "
            "--sdk-container-image IMAGE"
        )
    if device not in ("auto", "gpu"):
        raise ConfigError(
            f"--device {device} with an accelerator ({accelerator}): the GPU would sit idle; "
            "use --device gpu (the default with an accelerator) or drop the accelerator"
        )
    return "gpu"  # fails loudly on a worker that has no usable GPU, never falls back to CPU


def worker_environment(
    settings: RunnerSettings, beam_args: Sequence[str], device: str
) -> WorkerEnvironment:
    """Check the workers a submission asks for before anything runs.

    Args:
        settings: the runner flags.
        beam_args: Beam flags passed through untouched.
        device: the --device the user asked for.

    Returns:
        The environment, with the device workers will use.

    Raises:
        ConfigError: an accelerator without a GPU-capable container, a malformed or missing
            container image, conflicting environment flags, or a device that cannot use the
            accelerator.
    """
    options = parsed_options(settings, beam_args)
    accelerator = _accelerator(options)
    image = _container(options)
    _check_container(image, settings, options)
    return WorkerEnvironment(
        runner=settings.runner,
        accelerator=accelerator,
        container_image=image,
        requirements_file=options.get("requirements_file"),
        setup_file=options.get("setup_file"),
        device=_worker_device(accelerator, image, device),
    )
