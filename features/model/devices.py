"""Select the compute device (auto, cpu, gpu, npu) for TensorFlow, failing loudly, never silently."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from schemas.errors import ConfigError, DeviceUnavailableError

LOGGER = logging.getLogger(__name__)


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
            "--device gpu: TensorFlow sees no GPU on this worker "
            "(install the 'gpu' extra and NVIDIA drivers, or use --device cpu)"
        )
    _enable_memory_growth(gpus)
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
    LOGGER.info("Ascend NPU adapter loaded from %s", getattr(npu_bridge, "__file__", "npu_bridge"))
    return "npu"


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
