"""BASELINE (not our pipeline): the seed project's extraction, as extract_mlsp.ipynb runs it.

What it mirrors, from subpic/ava-mlsp extract_mlsp.ipynb with subpic/kutils (model_helper.py
ModelHelper.save_activations / predict, generators.py DataGeneratorDisk, generic.py H5Helper):

- one model per view (model_inceptionresnet_multigap for narrow, _pooled for wide), each view
  extracted in its own full pass over the images;
- per variant (orig, then each crop/flip), a new generator and a new pass: the image ids are
  taken in chunks of up to 1,024 (`batch_size = 1024` in the notebook), and each chunk is one
  `predict_generator` call over a Sequence of batch size 1 (`gen_params batch_size = 1`,
  no shuffle, workers=1, no multiprocessing), whose __getitem__ reads the image from disk and
  applies the variant's crop/flip and the InceptionResNetV2 preprocessing (x / 127.5 - 1) to a
  float32 [1, H, W, 3] array; so every image is read and decoded again for every variant;
- the chunk's activations are cast to float16 and written, one HDF5 dataset per image, into
  group `/<variant>/` of one file opened once per chunk (H5Helper.write_data).

Differences, stated: Keras 3 has no predict_generator, so `model.predict` over a
keras.utils.PyDataset (workers=1, no multiprocessing) stands in; Keras 3 traces the model once
per distinct input shape, where Keras 2 on TF1 ran a static graph. Images are decoded with PIL
(kutils used keras' load_img, also PIL). Crops and flips use this project's variant definitions.
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

CHUNK_IDS = 1024  # extract_mlsp.ipynb: ids are saved 1,024 at a time


def build_seed_model(weights_id: str, pooling: PoolingSpec) -> Any:
    """A Keras model image -> pooled MLSP features, like model_inceptionresnet_multigap/pooled."""
    import keras

    backbone = build_backbone()
    load_weights_into(backbone, parse_weights_id(weights_id))
    outputs = [layer.output for layer in tap_layers(backbone)]
    pooled = keras.layers.Lambda(lambda taps: pool_taps(taps, pooling))(outputs)
    return keras.Model(backbone.input, pooled)


def _image_sequence(paths: Sequence[Path], variant: str) -> Any:
    """DataGeneratorDisk(batch_size=1, shuffle=False, process_fn=preprocess . variant)."""
    import keras

    class ImageSequence(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)

        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, index: int) -> np.ndarray:
            with Image.open(paths[index]) as image:  # read again for every variant
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
            crop = np.ascontiguousarray(apply_variant(pixels, variant)).astype(np.float32)
            return (crop / 127.5 - 1.0)[None]

    return ImageSequence()


def extract_seed_style(
    model: Any,
    image_paths: Sequence[Path],
    variants: Sequence[str],
    out_file: Path,
    chunk_ids: int = CHUNK_IDS,
) -> None:
    """Per variant, per chunk of ids: one predict over a batch-1 Sequence, then one write each."""
    for variant in variants:
        for start in range(0, len(image_paths), chunk_ids):
            chunk = list(image_paths[start : start + chunk_ids])
            activations = model.predict(_image_sequence(chunk, variant), verbose=0)
            activations = np.asarray(activations).astype(np.float16)
            with h5py.File(out_file, "a") as handle:
                group = handle.require_group(variant)
                for path, values in zip(chunk, activations, strict=True):
                    group.create_dataset(os.path.basename(path), data=values)
