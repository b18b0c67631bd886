"""BASELINE (reference layout and reader): ava-mlsp's HDF5 features read by kutils' generator.

What it mirrors, from subpic/ava-mlsp train_mlsp_narrow(_aug).ipynb and subpic/kutils
(generators.py DataGeneratorHDF5, generic.py H5Helper, model_helper.py ModelHelper.train):

- layout: one HDF5 file, one float16 dataset per image and variant, `/<variant>/<image_id>`
  (save_activations(..., groups=[...], save_as_type=np.float16));
- reader: a keras.utils.Sequence whose __getitem__(i) opens the file, reads the batch's
  datasets one by one into a stacked array (H5Helper._read_datasets) from one randomly chosen
  variant group per batch (the `group_names` meta-groups of train_mlsp_narrow_aug), and returns
  (features, targets); the index order is shuffled once per epoch (on_epoch_end);
- feeding: fit_generator(..., use_multiprocessing=True, workers=3, max_queue_size=128), i.e.
  Keras' OrderedEnqueuer: per epoch a fresh pool of 3 forked processes, up to 128 batches
  requested ahead, batches pickled back to the trainer and yielded in order.

Delivered dtype: float16 by default, as stored. kutils' DataGeneratorHDF5 (at dd39437) casts
each batch to float32 before returning it; the benchmark leaves that cast out (dtype=float32
puts it back), so the reference is measured at its most favourable and ratios against it are
not inflated by a conversion our pipeline does not do. It exists only to be compared against
in benchmarks.train_input.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import h5py
import numpy as np

REFERENCE_WORKERS = 3  # train_mlsp_narrow.ipynb: multiproc=True, workers=3
REFERENCE_QUEUE = 128  # max_queue_size=128

# The Sequence's state in each worker, set by the pool initializer (Keras: _SHARED_SEQUENCES).
_WORKER_STATE: dict[str, Any] = {}


def write_reference_file(path: str, image_ids: Sequence[str], features: np.ndarray) -> None:
    """One float16 dataset per image and variant, `/<variant>/<image_id>`, as the reference."""
    with h5py.File(path, "w") as handle:
        for variant in range(features.shape[1]):
            group = handle.create_group(str(variant))
            for image_id, values in zip(image_ids, features[:, variant], strict=True):
                group.create_dataset(image_id, data=values.astype(np.float16))


def _init_worker(state: dict[str, Any]) -> None:
    _WORKER_STATE.clear()
    _WORKER_STATE.update(state)


def _get_batch(index: int) -> tuple[np.ndarray, np.ndarray]:
    """DataGeneratorHDF5.__getitem__: open the file, read each dataset of the batch, stack."""
    state = _WORKER_STATE
    chosen = state["order"][index * state["batch_size"] : (index + 1) * state["batch_size"]]
    names = [state["image_ids"][position] for position in chosen]
    with h5py.File(state["path"], "r") as handle:
        group = handle[state["groups"][index]]
        first = group[names[0]][...]
        data = np.empty((len(names), *first.shape), dtype=first.dtype)
        data[0] = first
        for slot, name in enumerate(names[1:], start=1):
            data[slot] = group[name][...]
    return data.astype(state["dtype"], copy=False), state["targets"][chosen]


def reference_batches(
    path: str,
    image_ids: Sequence[str],
    targets: np.ndarray,
    batch_size: int,
    seed: int = 0,
    *,
    workers: int = REFERENCE_WORKERS,
    max_queue_size: int = REFERENCE_QUEUE,
    dtype: Any = np.float16,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One shuffled epoch through the reference reader, batches in order (see the docstring).

    Args:
        path: file written by write_reference_file.
        image_ids, targets: the rows and their targets.
        batch_size: samples per batch (the last batch may be smaller).
        seed: shuffle and variant-choice seed.
        workers, max_queue_size: the enqueuer's processes and batches requested ahead.
        dtype: delivered dtype (float16 as stored; float32 reproduces kutils' cast).

    Returns:
        An iterator of (features [batch, *shape], targets [batch]).
    """
    rng = np.random.default_rng(seed)
    with h5py.File(path, "r") as handle:
        variant_groups = sorted(handle.keys())
    batches = -(-len(image_ids) // batch_size)
    state = {
        "path": path,
        "image_ids": list(image_ids),
        "targets": np.asarray(targets),
        "batch_size": batch_size,
        "order": rng.permutation(len(image_ids)),
        "groups": [variant_groups[i] for i in rng.integers(0, len(variant_groups), batches)],
        "dtype": np.dtype(dtype),
    }
    # Keras' OrderedEnqueuer forks a new pool per epoch and keeps max_queue_size requests open.
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_init_worker, initargs=(state,)) as pool:
        pending: deque[Any] = deque()
        next_index = 0
        while next_index < batches or pending:
            while next_index < batches and len(pending) < max_queue_size:
                pending.append(pool.apply_async(_get_batch, (next_index,)))
                next_index += 1
            yield pending.popleft().get()
