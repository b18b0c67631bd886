"""Runner option building, device selection and the writer lease."""

from __future__ import annotations

import datetime
import json

import pytest

from features.model.devices import configure_device
from features.store.lease import ViewLease
from pipelines.runners import RunnerSettings, check_paths_reachable, runner_options
from schemas.errors import ConfigError, DeviceUnavailableError, StoreError


def test_dataflow_options_include_staging_setup_and_gpus() -> None:
    settings = RunnerSettings(
        runner="dataflow",
        project="p",
        region="europe-west4",
        temp_location="gs://b/tmp",
        machine_type="n1-standard-8",
        max_workers=20,
        worker_accelerator="nvidia-tesla-t4:1",
    )
    options = runner_options(settings)
    assert "--project=p" in options and "--region=europe-west4" in options
    assert "--staging_location=gs://b/tmp/staging" in options
    assert any(
        option.startswith("--setup_file=") and option.endswith("setup.py") for option in options
    )
    assert "--worker_machine_type=n1-standard-8" in options and "--max_num_workers=20" in options
    assert (
        "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1;"
        "install-nvidia-driver"
    ) in options


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"runner": "dataflow", "region": "r", "temp_location": "gs://b"}, "--project"),
        (
            {"runner": "dataflow", "project": "p", "region": "r", "temp_location": "/tmp"},
            "--temp-location",
        ),
        ({"runner": "dataflow", "worker_accelerator": "t4"}, "--worker-accelerator"),
        ({"runner": "mainframe"}, "--runner"),
    ],
)
def test_bad_runner_settings_are_named(settings, named) -> None:
    with pytest.raises(ConfigError, match=named):
        runner_options(RunnerSettings(**settings))


def test_remote_workers_need_urls() -> None:
    settings = RunnerSettings(runner="dataflow")
    with pytest.raises(ConfigError, match=r"--manifest /data/m\.parquet"):
        check_paths_reachable(settings, manifest="/data/m.parquet", store="gs://b/store")
    check_paths_reachable(RunnerSettings(runner="dask"), manifest="/data/m.parquet")


def test_dask_gets_one_shard_per_partition() -> None:
    assert "--dask_partition_size=1" in runner_options(RunnerSettings(runner="dask"))
    options = runner_options(RunnerSettings(runner="dask", dask_address="tcp://127.0.0.1:8786"))
    assert "--dask_client_address=tcp://127.0.0.1:8786" in options


def test_devices_fail_loudly_without_fallback() -> None:
    import tensorflow as tf

    # What TensorFlow reports on this host (listing them also starts its runtime).
    gpus = [gpu.name for gpu in tf.config.list_logical_devices("GPU")]
    if gpus:  # a GPU host: the GPUs are in use, so they can no longer be hidden
        with pytest.raises(DeviceUnavailableError, match="already initialised the GPU"):
            configure_device("cpu")
        assert configure_device("auto") == configure_device("gpu")
        physical = tf.config.list_physical_devices("GPU")
        assert configure_device("gpu").startswith(f"gpu ({len(physical)}: ")
    else:
        assert configure_device("cpu") == "cpu"
        assert configure_device("auto") == "cpu (no GPU visible)"
        with pytest.raises(DeviceUnavailableError, match="no GPU"):
            configure_device("gpu")
    with pytest.raises(DeviceUnavailableError, match="npu_bridge"):
        configure_device("npu")
    with pytest.raises(ConfigError, match="--device 'tpu'"):
        configure_device("tpu")


def test_second_writer_gets_a_clear_error(tmp_path) -> None:
    first = ViewLease(str(tmp_path), "run-A")
    first.acquire()
    try:
        with pytest.raises(StoreError, match="being written by run run-A"):
            ViewLease(str(tmp_path), "run-B").acquire()
    finally:
        first.release()
    assert not (tmp_path / "lease.json").exists()
    second = ViewLease(str(tmp_path), "run-B")
    second.acquire()
    second.release()


def test_expired_lease_is_taken_over(tmp_path) -> None:
    expired = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    (tmp_path / "lease.json").write_text(
        json.dumps({"owner": "dead-run", "host": "h", "pid": 1, "expires_at": expired.isoformat()})
    )
    lease = ViewLease(str(tmp_path), "new-run")
    lease.acquire()
    assert json.loads((tmp_path / "lease.json").read_text())["owner"] == "new-run"
    lease.release()
