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

_KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"
_RANDOM_PATTERN = re.compile(r"^random:(\d+)$")


@dataclass(frozen=True)
class ImagenetWeights:
    """The notop ImageNet file keras.applications downloads for a backbone (same name and md5)."""

    file: str
    folder: str
    md5: str

    @property
    def url(self) -> str:
        """Download URL."""
        return f"{_KERAS_APPLICATIONS}{self.folder}/{self.file}"


IMAGENET_WEIGHTS: dict[str, ImagenetWeights] = {
    "inception_resnet_v2": ImagenetWeights(
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "inception_resnet_v2",
        "d19885ff4a710c122648d3b5c3b684e4",
    ),
    "inception_v3": ImagenetWeights(
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "inception_v3",
        "bcbd6486424b2319ff4ef7d526e38f63",
    ),
    "mobilenet_v3_large": ImagenetWeights(
        "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        "mobilenet_v3",
        "07fb09a5933dd0c8eaafa16978110389",
    ),
    "mobilenet_v3_small": ImagenetWeights(
        "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "mobilenet_v3",
        "d3e8ec802a04aa4fc771ee12a9a9b836",
    ),
}
IMAGENET_FILE = IMAGENET_WEIGHTS["inception_resnet_v2"].file


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


def imagenet_weights_path(download: bool = True, backbone: str = "inception_resnet_v2") -> Path:
    """Path of a backbone's cached ImageNet notop weights, downloading them through Keras if allowed.

    Args:
        download: try keras.utils.get_file when the file is not cached.
        backbone: registry name of the backbone.

    Raises:
        WeightsUnavailableError: no ImageNet file exists for the backbone, or it is not cached
            and cannot be downloaded (offline machine).
    """
    if backbone not in IMAGENET_WEIGHTS:
        raise WeightsUnavailableError(f"no Keras ImageNet weights exist for {backbone}")
    weights = IMAGENET_WEIGHTS[backbone]
    cached = keras_models_dir() / weights.file
    if cached.is_file():
        return cached
    hint = (
        f"ImageNet weights for {backbone} are not cached and could not be downloaded. "
        f"Copy {weights.file} to {cached} (or set KERAS_HOME), pass --weights PATH to a weights "
        f"file, or use --weights random:SEED for an explicitly random network."
    )
    if not download:
        raise WeightsUnavailableError(hint)
    try:
        import keras

        fetched = keras.utils.get_file(
            weights.file, weights.url, cache_subdir="models", file_hash=weights.md5
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
        if kind in ("kernel", "depthwise_kernel"):
            # A depthwise kernel [kh, kw, C, multiplier] sees kh * kw inputs per output.
            fan_in = int(np.prod(shape[:-1] if kind == "kernel" else shape[:2]))
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


def _variable_kinds(model: Any) -> list[tuple[str, tuple[int, ...]]]:
    """(kind, shape) of every weight; Keras names depthwise kernels 'kernel' too, so tell them."""
    import keras

    depthwise = {
        layer.kernel.path
        for layer in model.layers
        if isinstance(layer, keras.layers.DepthwiseConv2D)
    }
    return [
        (
            "depthwise_kernel" if variable.path in depthwise else variable.path.split("/")[-1],
            tuple(variable.shape),
        )
        for variable in model.weights
    ]


def _load_file(model: Any, path: Path, backbone: str) -> None:
    """model.load_weights after checking every layer's shapes (Keras 3 only warns on a misfit)."""
    from features.model.weights_check import first_mismatch

    try:
        mismatch = first_mismatch(model, path)
        if mismatch is None:
            model.load_weights(str(path))
    except Exception as error:  # h5py/Keras raise ValueError/OSError/KeyError for bad files
        raise WeightsUnavailableError(f"cannot load weights from {path}: {error}") from error
    if mismatch is not None:
        raise WeightsUnavailableError(
            f"weights file {path} does not fit {backbone}: first mismatched layer: {mismatch}"
        )


def load_weights_into(
    model: Any, source: WeightsSource, backbone: str = "inception_resnet_v2"
) -> str:
    """Load weights into a Keras backbone and return the sha256 of what was loaded.

    Args:
        model: the backbone, as its registry entry builds it.
        source: parsed weights id.
        backbone: registry name (decides the ImageNet file and names the model in errors).

    Raises:
        WeightsUnavailableError: the file is missing, unreadable or does not fit the model.
    """
    if source.kind == "random":
        assert source.seed is not None
        shapes = _variable_kinds(model)
        arrays = random_weight_arrays(shapes, source.seed)
        for variable, array in zip(model.weights, arrays, strict=True):
            variable.assign(array)
        LOGGER.warning(
            "backbone uses RANDOM weights (%s): features are not ImageNet features",
            source.weights_id,
        )
        return arrays_sha256(arrays)
    path = imagenet_weights_path(backbone=backbone) if source.kind == "imagenet" else source.path
    assert path is not None
    _load_file(model, path, backbone)
    LOGGER.info("backbone weights loaded from %s", path)
    return file_sha256(path)
