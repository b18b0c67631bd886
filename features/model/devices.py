"""Select the compute device (auto, cpu, gpu, npu) for TensorFlow, failing loudly, never silently."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from schemas.errors import ConfigError, DeviceUnavailableError

LOGGER = logging.getLogger(__name__)
# Default pixel cap of one forward batch per device kind. CPU: one AVA-sized image (500x375 =
# 187,500 px) per forward measured fastest on 2 cores (1.55 images/s vs 1.41 for ~10-image
# batches). GPU/NPU: 16 AVA images; not measured here (no accelerator): raise it on the worker
# type until images/s stops improving or memory runs out (benchmarks.extract_throughput).
BATCH_PIXELS_BY_KIND: dict[str, int] = {"cpu": 250_000, "gpu": 3_000_000, "npu": 3_000_000}
_PROBE: list[Any] = []


def _gpus() -> list[object]:
    import tensorflow as tf

    return list(tf.config.list_physical_devices("GPU"))


def _enable_memory_growth(gpus: list[object]) -> None:
    import tensorflow as tf

    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process (model built earlier)
            LOGGER.debug("memory growth already fixed for %s", gpu)


def placed_device() -> str:
    """Where TensorFlow's placer puts a compiled function's work, as its output tensor reports it.

    The model's function is placed by the same default (soft) placement, so this is the device
    that runs the forward pass, e.g. 'GPU:0', 'CPU:0' or 'NPU:0'.
    """
    import tensorflow as tf

    if not _PROBE:
        _PROBE.append(tf.function(lambda x: tf.reduce_sum(x * 2.0)))
    output = _PROBE[0](tf.ones([2, 2]))
    return str(output.device).split("device:")[-1] or "unknown"


def device_kind(placed: str) -> str:
    """'gpu', 'npu' or 'cpu' from a placed device name like 'GPU:0'."""
    name = placed.upper()
    return "gpu" if name.startswith("GPU") else "npu" if name.startswith("NPU") else "cpu"


def _use_cpu() -> str:
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        if _gpus() and tf.config.get_visible_devices("GPU"):
            raise DeviceUnavailableError(
                "--device cpu: TensorFlow already initialised the GPU in this process"
            ) from None
    return "cpu"


def _use_gpu() -> str:
    gpus = _gpus()
    if not gpus:
        raise DeviceUnavailableError(
            "--device gpu: TensorFlow sees no GPU on this worker (a CPU-only tensorflow, or no "
            "NVIDIA driver: run the worker in docker/gpu's container, or use --device cpu)"
        )
    _enable_memory_growth(gpus)
    placed = placed_device()
    if device_kind(placed) != "gpu":
        raise DeviceUnavailableError(f"--device gpu: TensorFlow placed work on {placed}, not a GPU")
    return f"gpu ({len(gpus)}: {', '.join(getattr(gpu, 'name', str(gpu)) for gpu in gpus)})"


def _use_auto() -> str:
    return _use_gpu() if _gpus() else "cpu (no GPU visible)"


def _use_npu() -> str:
    try:
        npu_bridge = importlib.import_module("npu_bridge.npu_init")
    except ImportError:
        raise DeviceUnavailableError(
            "--device npu: Huawei Ascend's TensorFlow adapter (npu_bridge) is not importable on this "
            "worker; install the CANN toolkit and TF adapter, or choose --device cpu|gpu"
        ) from None
    placed = placed_device()
    if device_kind(placed) != "npu":  # never record npu for work the CPU did
        raise DeviceUnavailableError(
            f"--device npu: the Ascend adapter loaded ({getattr(npu_bridge, '__file__', '?')}) "
            f"but TensorFlow placed work on {placed}; refusing to run on the wrong device"
        )
    return f"npu ({placed})"


DEVICES: dict[str, Callable[[], str]] = {
    "auto": _use_auto,
    "cpu": _use_cpu,
    "gpu": _use_gpu,
    "npu": _use_npu,
}


def configure_device(device: str) -> str:
    """Make TensorFlow use the requested device and return a description for logs and lineage.

    Raises:
        ConfigError: unknown device name.
        DeviceUnavailableError: the device is not present on this worker.
    """
    try:
        select = DEVICES[device]
    except KeyError:
        raise ConfigError(f"--device {device!r}: choose one of {', '.join(DEVICES)}") from None
    description = select()
    LOGGER.info("compute device: %s", description)
    return description
