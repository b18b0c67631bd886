"""BASELINE (reference layout): one HDF5 dataset per image, read by a Python batch generator.

This mimics ava-mlsp / kutils: features saved as one dataset per image id in an HDF5 file,
and a Keras-style generator that shuffles ids each epoch and reads them one by one into
batches. It exists only to be compared against in benchmarks.train_input.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import h5py
import numpy as np


def write_reference_file(path: str, image_ids: Sequence[str], features: np.ndarray) -> None:
    """One dataset per image (features [variants, *shape]), as the reference stores them."""
    with h5py.File(path, "w") as handle:
        for image_id, values in zip(image_ids, features, strict=True):
            handle.create_dataset(image_id, data=values)


def reference_batches(
    path: str, image_ids: Sequence[str], targets: np.ndarray, batch_size: int, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One shuffled epoch: per batch, read each image's dataset, pick a random variant, stack."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(image_ids))
    with h5py.File(path, "r") as handle:
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            samples = []
            for position in chosen:
                values = handle[image_ids[position]][()]
                samples.append(values[rng.integers(0, values.shape[0])])
            yield np.stack(samples).astype(np.float32), targets[chosen]
