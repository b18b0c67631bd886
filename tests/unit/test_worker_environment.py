"""Every runner flag reaches the runner's PipelineOptions or is refused; GPU workers need a GPU image."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import ClassVar

import apache_beam
import distributed
import pytest

from features.model import devices
from pipelines import extract
from pipelines.runners import (
    DEFAULT_DASK_WORKERS,
    RUNNERS,
    RunnerSettings,
    runner_environment,
    runner_options,
)
from pipelines.worker_env import parsed_options, worker_environment
from schemas.errors import ConfigError, DeviceUnavailableError
from tests.helpers import gpu_image
from tests.helpers.extract_cli import runner_argv

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "europe-docker.pkg.dev/p/r/mlsp-gpu:2024-06-01"
DATAFLOW = {"project": "p", "region": "europe-west4", "temp_location": "gs://b/tmp"}
# settings field -> (value, check on the parsed PipelineOptions dict)
FLAG_CHECKS = {
    "dataflow": {
        "project": ("p2", lambda o: o["project"] == "p2"),
        "region": ("us-central1", lambda o: o["region"] == "us-central1"),
        "temp_location": ("gs://c/t", lambda o: o["temp_location"] == "gs://c/t"),
        "staging_location": ("gs://c/s", lambda o: o["staging_location"] == "gs://c/s"),
        "machine_type": ("g2-standard-8", lambda o: o["machine_type"] == "g2-standard-8"),
        "max_workers": (7, lambda o: o["max_num_workers"] == 7),
        "sdk_container_image": (IMAGE, lambda o: o["sdk_container_image"] == IMAGE),
        "worker_accelerator": (
            "nvidia-l4:2",
            lambda o: (
                "worker_accelerator=type:nvidia-l4;count:2;install-nvidia-driver"
                in o["dataflow_service_options"]
            ),
        ),
        "requirements_file": ("req.txt", lambda o: o["requirements_file"] == "req.txt"),
    },
    "dask": {
        # Beam's DaskOptions parses --dask_client_address into the option "address"
        "dask_address": ("tcp://h:8786", lambda o: o["address"] == "tcp://h:8786")
    },
    **{
        name: {
            "sdk_container_image": (
                IMAGE,
                lambda o: (
                    o["environment_type"] == "DOCKER"
                    and f"docker_container_image={IMAGE}" in o["environment_options"]
                    and o["sdk_container_image"] == IMAGE
                ),
            ),
            "requirements_file": ("req.txt", lambda o: o["requirements_file"] == "req.txt"),
        }
        for name in ("flink", "spark", "portable")
    },
}
ALL_FLAGS = sorted(
    {field for checks in FLAG_CHECKS.values() for field in checks} | {"dask_workers"}
)


def _settings(runner: str, **extra: object) -> RunnerSettings:
    base = dict(DATAFLOW) if runner == "dataflow" else {}
    return RunnerSettings(runner=runner, **{**base, **extra})  # type: ignore[arg-type]


class _FakeLocalCluster:
    """Stands in for distributed.LocalCluster: records the worker count it was started with."""

    sizes: ClassVar[list[int]] = []
    scheduler_address = "tcp://127.0.0.1:1"

    def __init__(self, n_workers: int, **kwargs: object) -> None:
        self.sizes.append(n_workers)

    def __enter__(self) -> _FakeLocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _local_cluster_size(settings: RunnerSettings, monkeypatch: pytest.MonkeyPatch) -> int:
    """Workers of the LocalCluster runner_environment starts, and that its client is sent to."""
    _FakeLocalCluster.sizes = []
    monkeypatch.setattr(distributed, "LocalCluster", _FakeLocalCluster)
    with runner_environment(settings) as options:
        assert f"--dask_client_address={_FakeLocalCluster.scheduler_address}" in options
    (size,) = _FakeLocalCluster.sizes
    return size


@pytest.mark.parametrize("runner", sorted(RUNNERS))
@pytest.mark.parametrize("field", ALL_FLAGS)
def test_each_flag_arrives_or_is_refused(
    runner: str, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = FLAG_CHECKS.get(runner, {})
    examples = {**FLAG_CHECKS["dataflow"], **FLAG_CHECKS["dask"]}
    value: object = 3 if field == "dask_workers" else examples[field][0]
    settings = _settings(runner, **{field: value})
    if field in checks:
        assert checks[field][1](parsed_options(settings, []))
    elif field in RUNNERS[runner].accepts:  # no Beam option: it sizes the local cluster
        assert (runner, field) == ("dask", "dask_workers")
        assert _local_cluster_size(settings, monkeypatch) == value
    else:
        flag = "--" + field.replace("_", "-")
        with pytest.raises(ConfigError, match=f"{flag} not used by --runner {runner}"):
            runner_options(settings)


def test_without_dask_workers_the_local_cluster_has_the_default_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _local_cluster_size(_settings("dask"), monkeypatch) == DEFAULT_DASK_WORKERS


@pytest.mark.parametrize("workers", ["2", "3"])  # 2, the LocalCluster default, is refused too
def test_dask_workers_with_a_dask_address_exits_2_naming_both(
    workers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--manifest", "m", "--store", "s", "--view", "irnv2_mlsp_narrow", "--runner", "dask"]
    with pytest.raises(SystemExit) as exit_info:
        extract.run([*argv, "--dask-address", "tcp://h:8786", "--dask-workers", workers])
    assert exit_info.value.code == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert "--dask-workers" in error and "--dask-address" in error
    with pytest.raises(ConfigError, match="--dask-workers not allowed with --dask-address"):
        RunnerSettings(runner="dask", dask_address="tcp://h:8786", dask_workers=int(workers))


def test_accelerator_needs_a_gpu_container_and_forces_gpu() -> None:
    with pytest.raises(ConfigError, match=r"CPU-only.*--sdk-container-image"):
        worker_environment(_settings("dataflow", worker_accelerator="nvidia-l4:1"), [], "auto")
    raw = ["--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1"]
    with pytest.raises(ConfigError, match="CPU-only"):
        worker_environment(_settings("dataflow"), raw, "auto")
    environment = worker_environment(_settings("dataflow", sdk_container_image=IMAGE), raw, "auto")
    assert environment.device == "gpu" and environment.container_image == IMAGE
    assert environment.setup_file is None  # never setup.py (tensorflow-cpu) into the GPU image
    with pytest.raises(ConfigError, match="--device cpu with an accelerator"):
        worker_environment(_settings("dataflow", sdk_container_image=IMAGE), raw, "cpu")


def test_without_accelerator_the_device_is_untouched_and_setup_py_ships() -> None:
    environment = worker_environment(_settings("dataflow"), [], "auto")
    assert environment.device == "auto" and environment.accelerator is None
    assert environment.setup_file == str(ROOT / "setup.py")


@pytest.mark.parametrize(
    ("settings", "beam_args", "message"),
    [
        ({"sdk_container_image": "mlsp-gpu"}, [], "not a pullable image reference"),
        ({"sdk_container_image": "Bad Image:1"}, [], "not a pullable image reference"),
        ({}, [f"--sdk_container_image={IMAGE}"], "setup.py together"),
    ],
)
def test_bad_container_images_are_refused(settings, beam_args, message) -> None:
    with pytest.raises(ConfigError, match=message):
        worker_environment(_settings("dataflow", **settings), beam_args, "auto")


def test_container_with_another_environment_type_is_refused() -> None:
    settings = _settings("flink", sdk_container_image=IMAGE)
    with pytest.raises(ConfigError, match="--environment_type=LOOPBACK"):
        worker_environment(settings, ["--environment_type=LOOPBACK"], "auto")


@pytest.mark.parametrize("runner", ["dataflow", "flink", "spark"])
def test_dry_run_prints_the_worker_environment(runner: str, capsys) -> None:
    accelerator = {"worker_accelerator": "nvidia-l4:1"} if runner == "dataflow" else {}
    argv = runner_argv(
        runner, sdk_container_image=IMAGE, requirements_file="req.txt", **accelerator
    )
    assert extract.run(argv) == 0
    out = capsys.readouterr().out
    assert f"container_image = {IMAGE}" in out and "requirements_file = req.txt" in out
    assert "setup_file = -" in out
    assert f"sdk_container_image = {IMAGE}" in out
    assert ("device = gpu" if runner == "dataflow" else "device = auto") in out


def test_accelerator_without_image_exits_2_before_any_work(tmp_path, capsys) -> None:
    argv = runner_argv("dataflow", worker_accelerator="nvidia-l4:1", dry_run=False)
    code = extract.run(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: accelerator requested")


def test_gpu_where_tensorflow_sees_no_gpu_fails_before_any_work(
    tmp_path, sample_manifest, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(devices, "_gpus", lambda: [])  # a worker without a GPU, on any host
    store = tmp_path / "store"
    argv = [
        "--manifest",
        str(sample_manifest),
        "--store",
        str(store),
        "--view",
        "irnv2_mlsp_narrow",
        "--weights",
        "random:0",
        "--device",
        "gpu",
    ]
    assert extract.run(argv) == 1
    assert "TensorFlow sees no GPU" in capsys.readouterr().err
    assert not store.exists()


def _where_tensorflow_places_work() -> str:
    """TensorFlow's own answer, not features.model.devices': the device an eager op ran on,
    which default placement makes the first visible logical GPU, else CPU:0."""
    import tensorflow as tf

    ran_on = (tf.constant([1.0, 2.0]) * 2.0).device.split("device:")[-1]
    gpus = tf.config.list_logical_devices("GPU")
    listed = gpus[0].name if gpus else tf.config.list_logical_devices("CPU")[0].name
    assert listed.split("device:")[-1] == ran_on
    return ran_on


def test_placement_is_reported_and_npu_without_npu_placement_is_refused(monkeypatch) -> None:
    expected = _where_tensorflow_places_work()  # GPU:0 on a GPU host, CPU:0 elsewhere
    assert devices.placed_device() == expected
    assert devices.device_kind(expected) == ("gpu" if expected.startswith("GPU") else "cpu")
    assert devices.device_kind("GPU:1") == "gpu" and devices.device_kind("CPU:0") == "cpu"
    package, module = types.ModuleType("npu_bridge"), types.ModuleType("npu_bridge.npu_init")
    monkeypatch.setitem(sys.modules, "npu_bridge", package)
    monkeypatch.setitem(sys.modules, "npu_bridge.npu_init", module)
    with pytest.raises(DeviceUnavailableError, match=f"placed work on {expected};"):
        devices.configure_device("npu")


def test_gpu_image_requirements_match_the_package_and_the_launcher() -> None:
    required = gpu_image.requirement_lines(
        gpu_image.setup_cfg()["options"]["install_requires"].splitlines()
    )
    pinned = gpu_image.image_pins()
    assert set(required) - {"tensorflow-cpu", "tensorflow"} <= set(pinned)
    assert "tensorflow-cpu" not in pinned and "[and-cuda]" in pinned["tensorflow"]
    assert gpu_image.pinned_version(pinned["apache-beam"]) == apache_beam.__version__
    dockerfile = (ROOT / "docker/gpu/Dockerfile").read_text()
    assert f"ARG BEAM_VERSION={apache_beam.__version__}" in dockerfile
    assert "--no-deps" in dockerfile


def test_gpu_image_has_every_fsspec_backend_the_readme_documents() -> None:
    backends = gpu_image.documented_fsspec_backends()  # from the README's s3://, gs:// ...
    assert backends, "the README documents no store URL that needs an fsspec backend"
    pinned = gpu_image.image_pins()
    missing = set(backends) - set(pinned)
    assert not missing, f"the GPU image lacks {missing}"
    extras = gpu_image.readme_extras()  # the README's pip install '.[s3]' / '.[gcs]' ...
    for backend in backends:
        wanted = [req for reqs in extras.values() for req in reqs if req.name == backend]
        assert wanted, f"the README names no extra that installs {backend}"
        version = gpu_image.pinned_version(pinned[backend])
        assert all(req.specifier.contains(version) for req in wanted), (backend, version)
    assert set(backends.values()) <= gpu_image.dockerfile_imports()  # the build imports them
