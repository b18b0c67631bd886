"""Resolve a weights id ('imagenet', a file path, 'random:SEED') and load it into the backbone."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import ConfigError, WeightsUnavailableError

LOGGER = logging.getLogger(__name__)

IMAGENET_FILE = "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/inception_resnet_v2/"
    + IMAGENET_FILE
)
IMAGENET_MD5 = "d19885ff4a710c122648d3b5c3b684e4"
_RANDOM_PATTERN = re.compile(r"^random:(\d+)$")


@dataclass(frozen=True)
class WeightsSource:
    """A parsed weights id.

    Attributes:
        weights_id: the id as the user gave it (recorded in lineage).
        kind: 'imagenet', 'file' or 'random'.
        path: weights file for 'file' (and 'imagenet' once resolved).
        seed: seed for 'random'.
    """

    weights_id: str
    kind: str
    path: Path | None = None
    seed: int | None = None


def keras_models_dir() -> Path:
    """Directory Keras caches application weights in (honours KERAS_HOME)."""
    keras_home = os.environ.get("KERAS_HOME", str(Path.home() / ".keras"))
    return Path(keras_home) / "models"


def parse_weights_id(weights_id: str) -> WeightsSource:
    """Parse a weights id.

    Raises:
        ConfigError: the id is neither 'imagenet', 'random:SEED' nor an existing file.
    """
    if weights_id == "imagenet":
        return WeightsSource(weights_id, "imagenet")
    match = _RANDOM_PATTERN.match(weights_id)
    if match:
        return WeightsSource(weights_id, "random", seed=int(match.group(1)))
    if weights_id.startswith("random"):
        raise ConfigError(f"--weights {weights_id!r}: random weights are written 'random:SEED'")
    path = Path(weights_id).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"--weights {weights_id!r}: not 'imagenet', not 'random:SEED' and no such file"
        )
    if not path.name.endswith(".h5"):
        raise ConfigError(f"--weights {weights_id!r}: expected a Keras .h5 / .weights.h5 file")
    return WeightsSource(weights_id, "file", path=path.resolve())


def imagenet_weights_path(download: bool = True) -> Path:
    """Path of the cached ImageNet notop weights, downloading them through Keras if allowed.

    Raises:
        WeightsUnavailableError: not cached and cannot be downloaded (offline machine).
    """
    cached = keras_models_dir() / IMAGENET_FILE
    if cached.is_file():
        return cached
    hint = (
        f"ImageNet weights for InceptionResNetV2 are not cached and could not be downloaded. "
        f"Copy {IMAGENET_FILE} to {cached} (or set KERAS_HOME), pass --weights PATH to a weights "
        f"file, or use --weights random:SEED for an explicitly random network."
    )
    if not download:
        raise WeightsUnavailableError(hint)
    try:
        import keras

        fetched = keras.utils.get_file(
            IMAGENET_FILE, IMAGENET_URL, cache_subdir="models", file_hash=IMAGENET_MD5
        )
    except Exception as error:  # network errors come in many types; all mean the same here
        raise WeightsUnavailableError(f"{hint} (download failed: {error})") from error
    return Path(fetched)


def file_sha256(path: Path) -> str:
    """Streaming sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def random_weight_arrays(shapes: list[tuple[str, tuple[int, ...]]], seed: int) -> list[np.ndarray]:
    """Deterministic weights for the given (variable kind, shape) list, independent of Keras' RNG.

    Kernels are He-normal so activations keep a unit scale through the ReLU stack (and stay far
    inside float16 range); batch-norm statistics are identity; biases are zero.
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for kind, shape in shapes:
        if kind == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            arrays.append((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32))
        elif kind in ("gamma", "moving_variance"):
            arrays.append(np.ones(shape, np.float32))
        else:
            arrays.append(np.zeros(shape, np.float32))
    return arrays


def arrays_sha256(arrays: list[np.ndarray]) -> str:
    """Digest of weight arrays in order (shape and float32 bytes)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def load_weights_into(model: Any, source: WeightsSource) -> str:
    """Load weights into a Keras backbone and return the sha256 of what was loaded.

    Raises:
        WeightsUnavailableError: the file is missing, unreadable or does not fit the model.
    """
    if source.kind == "random":
        assert source.seed is not None
        shapes = [
            (variable.path.split("/")[-1], tuple(variable.shape)) for variable in model.weights
        ]
        arrays = random_weight_arrays(shapes, source.seed)
        for variable, array in zip(model.weights, arrays, strict=True):
            variable.assign(array)
        LOGGER.warning(
            "backbone uses RANDOM weights (%s): features are not ImageNet features",
            source.weights_id,
        )
        return arrays_sha256(arrays)
    path = imagenet_weights_path() if source.kind == "imagenet" else source.path
    assert path is not None
    try:
        model.load_weights(str(path))
    except Exception as error:  # Keras raises ValueError/OSError/KeyError for bad files
        raise WeightsUnavailableError(f"cannot load weights from {path}: {error}") from error
    LOGGER.info("backbone weights loaded from %s", path)
    return file_sha256(path)
