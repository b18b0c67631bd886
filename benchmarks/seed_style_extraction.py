"""BASELINE (not our pipeline): the seed project's extraction style, for side-by-side benchmarks.

It mirrors ava-mlsp's extract_mlsp.py: images are read and augmented one at a time, each
variant goes through its own `model.predict(x[None])` call (batch size 1), and every image and
variant becomes its own HDF5 dataset (`/<variant>/<image name>`), float16, in one file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from features.extraction.variants import apply_variant
from features.model.mlsp import build_backbone, pool_taps, tap_layers
from features.model.weights import load_weights_into, parse_weights_id
from schemas.view_spec import PoolingSpec


def build_seed_model(weights_id: str, pooling: PoolingSpec) -> Any:
    """A Keras model image -> pooled MLSP features, like model_inceptionresnet_multigap/pooled."""
    import keras

    backbone = build_backbone()
    load_weights_into(backbone, parse_weights_id(weights_id))
    outputs = [layer.output for layer in tap_layers(backbone)]
    pooled = keras.layers.Lambda(lambda taps: pool_taps(taps, pooling))(outputs)
    return keras.Model(backbone.input, pooled)


def extract_seed_style(
    model: Any, image_paths: Sequence[Path], variants: Sequence[str], out_file: Path
) -> None:
    """One predict call per image and variant; one dataset per image and variant."""
    with h5py.File(out_file, "w") as handle:
        for path in image_paths:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
            for variant in variants:
                crop = np.ascontiguousarray(apply_variant(pixels, variant)).astype(np.float32)
                features = model.predict((crop / 127.5 - 1.0)[None], verbose=0)[0]
                group = handle.require_group(variant)
                group.create_dataset(os.path.basename(path), data=features.astype(np.float16))
