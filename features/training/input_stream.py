"""Streaming tf.data input from a feature view: block shuffle, shuffle buffer, random variants."""

from __future__ import annotations

import logging
import mmap
import sys
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from features.store import (
    FeatureView,
    ScatterRequest,
    decode_threads,
    key_runs,
    read_feature_rows,
)
from features.training.labels import TrainingLabels
from schemas.config_fields import reject_unknown_fields
from schemas.errors import ConfigError
from schemas.status import RowStatus

LOGGER = logging.getLogger(__name__)
VARIANT_MODES = ("random", "fixed")
Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # features, targets, positions
PREFETCH_BATCHES = 2  # batches tf.data cuts ahead of the consumer (each is a view: no memory)


@dataclass(frozen=True)
class InputConfig:
    """How samples are delivered.

    Attributes:
        batch_size: samples per batch.
        shuffle: block-shuffle plus buffer-shuffle (training) or row order (evaluation).
        seed: seed of the block order, within-block order, variants and label noise.
        shuffle_buffer: shuffle-buffer capacity in samples (capped by shuffle_buffer_mb).
        shuffle_buffer_mb: memory cap of the shuffle buffer.
        blocks_per_read: store shards (chunk-aligned row blocks) read as one block.
        variant_mode: 'random' (one variant per sample per epoch) or 'fixed'.
        variant: variant index used when variant_mode is 'fixed'.
        label_noise: standard deviation of Gaussian noise added to scalar targets.
        read_threads: threads reading blocks, at least (the reader uses one per core when
            that is more; raise it for object stores, whose reads wait on the network).
    """

    batch_size: int = 256
    shuffle: bool = True
    seed: int = 0
    shuffle_buffer: int = 4096
    shuffle_buffer_mb: int = 256
    blocks_per_read: int = 1
    variant_mode: str = "random"
    variant: int = 0
    label_noise: float = 0.0
    read_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("batch_size", "shuffle_buffer", "shuffle_buffer_mb", "blocks_per_read"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.read_threads < 1:
            raise ConfigError("--read-threads must be >= 1")
        if self.variant_mode not in VARIANT_MODES:
            raise ConfigError(f"variant_mode {self.variant_mode!r} not in {VARIANT_MODES}")
        if self.variant < 0:
            raise ConfigError("--variant must be >= 0")
        if not self.label_noise >= 0.0:
            raise ConfigError(f"--label-noise must be >= 0, got {self.label_noise}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputConfig:
        """Inverse of to_dict.

        Raises:
            ConfigError: unknown fields or invalid values.
        """
        reject_unknown_fields(cls, data, "input config")
        return cls(**dict(data))


@dataclass(frozen=True)
class RowSelection:
    """Store rows usable for one split, sorted by row, with their targets.

    Attributes:
        rows: [n] store rows, ascending.
        image_ids: [n] image ids.
        targets: [n, units] float32 targets.
        skipped: reason -> count of rows of this split left out (status, missing label...).
    """

    rows: np.ndarray
    image_ids: np.ndarray
    targets: np.ndarray
    skipped: Mapping[str, int]

    def __len__(self) -> int:
        return len(self.rows)


def _targets(labels: TrainingLabels, label_column: str) -> np.ndarray:
    if label_column == "distribution":
        return labels.distributions.astype(np.float32)
    return labels.scores.astype(np.float32).reshape(-1, 1)


def select_rows(
    index: pa.Table, labels: TrainingLabels, split: str | None, label_column: str = "mos"
) -> RowSelection:
    """Join a view's committed index with labels: rows with status ok and a finite target.

    Args:
        index: the view's committed index (image_id, row, status).
        labels: training labels.
        split: keep labels of this split only (None keeps every split).
        label_column: 'mos' (scores) or 'distribution'.

    Returns:
        The selection, with counts of what was skipped and why.
    """
    targets = _targets(labels, label_column)
    in_split = np.ones(len(labels), bool) if split is None else labels.splits == split
    wanted = {str(labels.image_ids[i]): i for i in np.flatnonzero(in_split)}
    skipped: Counter[str] = Counter()
    keep_rows, keep_ids, keep_positions = [], [], []
    for image_id, row, status in zip(
        index.column("image_id").to_pylist(),
        index.column("row").to_pylist(),
        index.column("status").to_pylist(),
        strict=True,
    ):
        position = wanted.pop(image_id, None)
        if position is None:
            continue
        if status != RowStatus.OK:
            skipped[f"status_{status}"] += 1
        elif not np.all(np.isfinite(targets[position])):
            skipped["no_target"] += 1
        else:
            keep_rows.append(row)
            keep_ids.append(image_id)
            keep_positions.append(position)
    skipped["not_in_store"] += len(wanted)
    order = np.argsort(np.asarray(keep_rows, dtype=np.int64), kind="stable")
    return RowSelection(
        rows=np.asarray(keep_rows, dtype=np.int64)[order],
        image_ids=np.asarray(keep_ids, dtype=object)[order],
        targets=targets[np.asarray(keep_positions, dtype=np.int64)[order]],
        skipped={reason: count for reason, count in sorted(skipped.items()) if count},
    )


def plan_blocks(rows: np.ndarray, block_rows: int) -> list[np.ndarray]:
    """Positions of rows grouped into runs of one chunk-aligned block (row // block_rows).

    Rows of one block must be adjacent (sorted rows, or an epoch's block-ordered rows).
    """
    return [np.arange(run.start, run.stop) for _, run in key_runs(rows // block_rows)]


@dataclass(frozen=True)
class Window:
    """One shuffle window: samples read in place into the slots of the batches they will be in.

    Attributes:
        features: [n, *shape] (storage dtype), 64-byte aligned, filled by the read tasks.
        targets: [n, units] targets, placed at plan time.
        positions: [n] selection positions, placed at plan time.
        reads: pending read tasks.
    """

    features: np.ndarray
    targets: np.ndarray
    positions: np.ndarray
    reads: list[Future[None]]

    def filled(self) -> Window:
        """The window once every read task is done (re-raising the first error)."""
        for future in self.reads:
            future.result()
        return self

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Consecutive slices of batch_size samples (views, no copies)."""
        for start in range(0, len(self.positions), batch_size):
            stop = start + batch_size
            yield self.features[start:stop], self.targets[start:stop], self.positions[start:stop]


class BlockReader:
    """Reads a selection window by window, choosing variants; the generator behind the dataset.

    An epoch permutes the chunk-aligned blocks and cuts the resulting sample sequence into
    windows of a whole number of batches (about the shuffle buffer's size), then permutes each
    window's samples. That permutation decides, before any byte is read, which slot of which
    batch a sample lands in, so every sample is read (and decoded) straight into its batch.
    Batches are slices of the window's buffer, handed to TensorFlow without a copy; the next
    window is read while this one's batches are consumed. A block cut by a window edge is
    read in two parts (whole inner chunks, at most one decoded twice).
    """

    def __init__(self, view: FeatureView, selection: RowSelection, config: InputConfig) -> None:
        self.view = view
        self.selection = selection
        self.config = config
        self.variants = len(view.spec.variants)
        if config.variant >= self.variants:
            raise ConfigError(
                f"--variant {config.variant}: view {view.name!r} has {self.variants} variant(s)"
            )
        self.block_rows = view.shard_rows * config.blocks_per_read
        self.blocks = plan_blocks(selection.rows, self.block_rows)
        self.epoch = 0
        self.read_threads = max(config.read_threads, decode_threads())
        self.buffers = BufferPool()
        self.array = view.array  # one backend object: it caches its parsed shard format
        # Kept across epochs: each read thread keeps its own read buffers (row_scatter).
        self.pool = ThreadPoolExecutor(self.read_threads, "block-read")

    def window_size(self) -> int:
        """Samples mixed together, a multiple of the batch size: about the shuffle buffer (at
        least one batch) when shuffling, else one batch."""
        size = self.config.batch_size
        if not self.config.shuffle:
            return size
        spec = self.view.spec
        sample_bytes = int(np.prod(spec.feature_shape)) * np.dtype(spec.storage_dtype).itemsize
        return max(size, shuffle_capacity(self.config, sample_bytes) // size * size)

    def _epoch_order(self, rng: np.random.Generator) -> np.ndarray:
        """Selection positions in epoch order: blocks in shuffled order, rows sorted in each."""
        if not self.blocks:
            return np.empty(0, np.int64)
        count = len(self.blocks)
        order = rng.permutation(count) if self.config.shuffle else np.arange(count)
        return np.concatenate([self.blocks[index] for index in order])

    def _variants(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Variant index per sample: uniform per epoch, or the fixed one."""
        if self.config.variant_mode == "random" and self.variants > 1:
            return rng.integers(0, self.variants, size=count)
        return np.full(count, self.config.variant, dtype=np.int64)

    def _plan_window(
        self, positions: np.ndarray, rng: np.random.Generator, pool: ThreadPoolExecutor
    ) -> Window:
        """Draw the window's permutation, variants and noise, then submit its reads (one per
        block piece).

        Every random draw happens here, in the consumer's thread and in a fixed order, so an
        epoch is reproducible whatever the timing of the read threads.
        """
        spec, selection, total = self.view.spec, self.selection, len(positions)
        slots = rng.permutation(total) if self.config.shuffle else np.arange(total)
        variants = self._variants(total, rng)
        targets = selection.targets[positions]
        if self.config.label_noise > 0:
            targets = targets + rng.normal(0.0, self.config.label_noise, targets.shape)
        window = Window(
            self.buffers.empty((total, *spec.feature_shape), np.dtype(spec.storage_dtype)),
            np.empty((total, selection.targets.shape[1]), np.float32),
            np.empty(total, np.int64),
            [],
        )
        window.targets[slots] = targets
        window.positions[slots] = positions
        rows = selection.rows[positions]
        for _, piece in key_runs(rows // self.block_rows):
            request = ScatterRequest(rows[piece], variants[piece], slots[piece])
            window.reads.append(pool.submit(self.array.scatter_rows, request, window.features))
        return window

    def epoch_windows(self, epoch: int) -> Iterator[Window]:
        """One epoch as filled windows, the next one read while this one is consumed."""
        rng = np.random.default_rng([self.config.seed, epoch])
        order, size = self._epoch_order(rng), self.window_size()
        pending: deque[Window] = deque()
        for start in range(0, len(order), size):
            pending.append(self._plan_window(order[start : start + size], rng, self.pool))
            if len(pending) > 1:
                yield pending.popleft().filled()
        while pending:
            yield pending.popleft().filled()

    def epoch_batches(self, epoch: int) -> Iterator[Batch]:
        """One epoch as batches (views of the windows); only the last may be short."""
        for window in self.epoch_windows(epoch):
            yield from window.batches(self.config.batch_size)

    def __call__(self) -> Iterator[Batch]:
        """The next epoch's windows as (features, targets, positions) arrays: tf.data calls
        this once per iteration and cuts the windows into batches itself (make_dataset)."""
        epoch, self.epoch = self.epoch, self.epoch + 1
        for window in self.epoch_windows(epoch):
            yield window.features, window.targets, window.positions


class BufferPool:
    """Recycles the large window buffers once nothing references them any more.

    A window's batches are views of its buffer, and TensorFlow keeps a reference to each
    batch it wraps, so a buffer is free again exactly when its reference count is back to the
    pool's own. Buffers are anonymous memory maps that the pool keeps, rather than malloc
    blocks: glibc hands buffers this large, allocated from TensorFlow's threads, straight back
    to the kernel on free, and every page of the next one faults and is zeroed again
    (measured at a third of the pipeline's time).
    """

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self.mappings: list[mmap.mmap] = []

    def _free(self, index: int) -> bool:
        return sys.getrefcount(self.mappings[index]) == 2  # the pool's list and this call

    def empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """An uninitialised 64-byte aligned array, on a recycled buffer when one is free."""
        nbytes = int(np.prod(shape)) * dtype.itemsize + 64
        for index in range(len(self.mappings)):
            if len(self.mappings[index]) >= nbytes and self._free(index):
                return _aligned_view(np.frombuffer(self.mappings[index], np.uint8), shape, dtype)
        if len(self.mappings) >= self.keep:  # all in use: a plain, unkept allocation
            return aligned_empty(shape, dtype)
        mapping = mmap.mmap(-1, nbytes)
        if hasattr(mmap, "MADV_HUGEPAGE"):  # fewer, larger page faults where THP allows
            mapping.madvise(mmap.MADV_HUGEPAGE)
        self.mappings.append(mapping)
        return _aligned_view(np.frombuffer(mapping, np.uint8), shape, dtype)


def _aligned_view(
    raw: np.ndarray, shape: tuple[int, ...], dtype: np.dtype[Any], alignment: int = 64
) -> np.ndarray:
    nbytes = int(np.prod(shape)) * dtype.itemsize
    offset = -raw.ctypes.data % alignment
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype[Any], alignment: int = 64) -> np.ndarray:
    """Like np.empty, with the data starting on an `alignment`-byte boundary: TensorFlow wraps
    such buffers without copying, and copies misaligned ones (numpy only aligns to 16 bytes).
    """
    nbytes = int(np.prod(shape)) * dtype.itemsize
    return _aligned_view(np.empty(nbytes + alignment, dtype=np.uint8), shape, dtype, alignment)


def shuffle_capacity(config: InputConfig, sample_bytes: int) -> int:
    """Shuffle-buffer size in samples: the configured size, capped by the memory budget."""
    by_memory = max(1, config.shuffle_buffer_mb * 2**20 // max(1, sample_bytes))
    return max(1, min(config.shuffle_buffer, by_memory))


def retain_freed_memory(
    mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30, top_pad: int = 64 << 20
) -> bool:
    """Tune glibc's malloc for streaming reads (process-wide; False where it is not glibc).

    Blocks, shard objects and batches are buffers of a few to tens of MB, allocated and freed
    over and over. By default glibc maps such buffers fresh each time and unmaps them on free,
    so every 4 KiB costs a page fault on first touch: measured to take half the time of a
    whole-shard scan. Serving allocations below mmap_threshold from the heap, and keeping up
    to trim_threshold of freed memory, lets them be reused instead. Threads other than the
    main one allocate from 64 MiB heaps that glibc unmaps whenever one empties, whatever the
    trim threshold, unless top_pad keeps them: without it Blosc's per-call scratch buffers
    faulted 130,000 pages per epoch of the training-input benchmark once TensorFlow's
    threads shared those heaps (delivery 850 -> 1,430 MB/s with it). Call it before
    TensorFlow is imported (jobs.train does): set afterwards, the faults were measured to
    stay at about a third.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
    settings = [
        (m_mmap_threshold, mmap_threshold),
        (m_trim_threshold, trim_threshold),
        (m_top_pad, top_pad),
    ]
    return all([bool(mallopt(option, value)) for option, value in settings])


def make_dataset(reader: BlockReader, with_positions: bool = False) -> Any:
    """tf.data pipeline over the reader's windows, cut into batches (storage dtype), prefetched.

    Args:
        reader: the block reader (its config decides shuffling and batching).
        with_positions: also yield each sample's position in the selection (for tests).

    Returns:
        A tf.data.Dataset of (features, targets[, positions]) batches.
    """
    import tensorflow as tf

    retain_freed_memory()
    spec = reader.view.spec
    units = reader.selection.targets.shape[1]
    signature = (
        tf.TensorSpec([None, *spec.feature_shape], tf.as_dtype(spec.storage_dtype)),
        tf.TensorSpec([None, units], tf.float32),
        tf.TensorSpec([None], tf.int64),
    )
    # One Python call per window, not per batch: tf.data then cuts each window into batches
    # in C++ (rebatch: windows are whole batches, so no batch spans two windows). Slices of an
    # aligned tensor along its first axis share its buffer, and the window's numpy buffer is
    # wrapped the same way: no copy (measured 0.38 ms per batch, flat_map + slicing 0.55).
    windows = tf.data.Dataset.from_generator(reader, output_signature=signature)
    batch_size = reader.config.batch_size
    dataset = windows.rebatch(batch_size)
    steps = -(-len(reader.selection) // batch_size)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(steps))

    if not with_positions:
        dataset = dataset.map(lambda features, targets, _: (features, targets))
    # Features stay in the storage dtype (float16): Keras casts them to the layer's compute
    # dtype inside the step, so half the bytes cross the pipeline and the host-device copy.
    # tf.data's autotuner runs a background optimiser that competes with the read threads
    # for the CPU (measured: delivery halved and erratic on 2 cores); nothing here needs
    # tuning, since the reader already reads a window ahead.
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(PREFETCH_BATCHES).with_options(options)


def iter_all_variants(
    view: FeatureView, selection: RowSelection, batch_size: int, variants: list[int]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Row-ordered batches of (features [n, len(variants), *shape], positions [n]) for evaluation.

    Raises:
        ConfigError: a variant index outside the view's variants.
    """
    count = len(view.spec.variants)
    bad = [v for v in variants if not 0 <= v < count]
    if bad:
        raise ConfigError(f"variant index(es) {bad} outside the view's {count} variant(s)")
    for start in range(0, len(selection), batch_size):
        positions = np.arange(start, min(start + batch_size, len(selection)))
        values = read_feature_rows(view, selection.rows[positions])
        yield values[:, variants], positions
