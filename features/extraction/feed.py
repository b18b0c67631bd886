"""Bounded decode feed of a shard: size-bucketed batches decoded on threads ahead of the model."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from features.extraction.variants import ORIGINAL, apply_variant, variant_size
from schemas.view_spec import InputPolicy

T = TypeVar("T")

# Decoded batches kept ready ahead of the one the model is running (memory bound, see below).
DEFAULT_PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class FeedBatch(Generic[T]):
    """One planned batch: its index in the plan, shard positions and load results in order."""

    index: int
    positions: list[int]
    results: list[T]


def policy_size(height: int, width: int, policy: InputPolicy) -> tuple[int, int]:
    """(height, width) an image of this header size will have after the input policy's resize."""
    if policy.kind == "max_side" and policy.max_side is not None:
        longest = max(height, width)
        if longest > policy.max_side:
            scale = policy.max_side / longest
            return max(1, round(height * scale)), max(1, round(width * scale))
    return height, width


def images_per_batch(height: int, width: int, variants: int, max_batch_pixels: int) -> int:
    """Images of this size that fit the pixel cap with all their variants (at least one)."""
    return max(1, max_batch_pixels // max(1, height * width * variants))


def plan_batches(
    sizes: Sequence[tuple[int, int] | None], max_batch_pixels: int, variants: int
) -> list[list[int]]:
    """Bucket positions by expected size and cut each bucket under the pixel cap.

    Args:
        sizes: expected (height, width) per position, None when unknown (read from the file).
        max_batch_pixels: cap on pixels of one batch, variants included.
        variants: variants stacked per image.

    Returns:
        Batches of positions; same-size positions stay in row order. Unknown sizes go alone.
    """
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    unknown: list[list[int]] = []
    for position, size in enumerate(sizes):
        if size is None:
            unknown.append([position])
        else:
            by_size[size].append(position)
    batches: list[list[int]] = []
    for (height, width), positions in sorted(by_size.items()):
        per_batch = images_per_batch(height, width, variants, max_batch_pixels)
        batches += [positions[at : at + per_batch] for at in range(0, len(positions), per_batch)]
    return batches + unknown


def split_by_actual_size(
    positions: Sequence[int], pixels: Sequence[np.ndarray], max_batch_pixels: int, variants: int
) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """Regroup a decoded batch by real size (EXIF rotation or a wrong manifest size can differ
    from the plan), each group still under the pixel cap; sizes in ascending order."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, array in enumerate(pixels):
        groups[(int(array.shape[0]), int(array.shape[1]))].append(index)
    for (height, width), members in sorted(groups.items()):
        per_batch = images_per_batch(height, width, variants, max_batch_pixels)
        for at in range(0, len(members), per_batch):
            chunk = members[at : at + per_batch]
            yield [positions[i] for i in chunk], [pixels[i] for i in chunk]


class DecodeFeed(Generic[T]):
    """Decodes planned batches on a thread pool while the caller runs the model on earlier ones.

    Per-image decode tasks are submitted in plan order, never more than `prefetch_batches`
    batches (and at least `2 x threads` images, so every thread has work) beyond the batch the
    caller holds. Decoded pixels alive at once are therefore bounded by
    (prefetch_batches + 1) batches, each at most max_batch_pixels x 3 bytes (or one image when
    a single image exceeds the cap), plus 2 x threads images.
    """

    def __init__(
        self,
        load: Callable[[int], T],
        batches: Sequence[Sequence[int]],
        threads: int,
        prefetch_batches: int = DEFAULT_PREFETCH_BATCHES,
    ) -> None:
        self._load = load
        self._batches = [list(batch) for batch in batches]
        self._threads = threads
        self._prefetch = prefetch_batches

    def __iter__(self) -> Iterator[FeedBatch[T]]:
        pending: list[list[Future[T]]] = []
        with ThreadPoolExecutor(self._threads, thread_name_prefix="decode") as pool:
            submitted = 0
            try:
                for index, batch in enumerate(self._batches):
                    submitted = self._fill(pool, pending, submitted, index)
                    futures = pending.pop(0)
                    # One wake-up per batch: waiting on each future in turn woke this thread
                    # per image, and every wake-up takes the GIL from the decode threads.
                    wait(futures)
                    yield FeedBatch(index, batch, [future.result() for future in futures])
            finally:  # the consumer stopped early (error): do not decode the rest
                for futures in pending:
                    for future in futures:
                        future.cancel()

    def _fill(
        self, pool: ThreadPoolExecutor, pending: list[list[Future[Any]]], submitted: int, index: int
    ) -> int:
        """Submit batches until `prefetch` are queued beyond `index` and threads have work."""
        while submitted < len(self._batches):
            queued_images = sum(len(futures) for futures in pending[1:])
            ahead = submitted - index - 1
            if submitted > index and ahead >= self._prefetch and queued_images >= 2 * self._threads:
                break
            pending.append([pool.submit(self._load, p) for p in self._batches[submitted]])
            submitted += 1
        return submitted


class BatchBuffers:
    """One [images x variants, h, w, 3] uint8 array per planned batch, filled in place by the
    decode threads, so the model gets a ready batch without a copy on its own thread.

    Buffers are created when the first image of a batch arrives and handed over by take(), so
    only batches in flight hold memory (the DecodeFeed bound).
    """

    def __init__(
        self,
        batches: Sequence[Sequence[int]],
        sizes: Sequence[tuple[int, int] | None],
        variants: Sequence[str],
    ) -> None:
        self._variants = tuple(variants)
        self._slots: dict[int, tuple[int, int]] = {}
        self._expected: dict[int, tuple[int, int]] = {}
        for index, batch in enumerate(batches):
            size = sizes[batch[0]]
            if size is None:
                continue
            self._expected[index] = size
            self._slots.update({position: (index, slot) for slot, position in enumerate(batch)})
        self._lengths = {index: len(batch) for index, batch in enumerate(batches)}
        self._buffers: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _buffer(self, index: int) -> np.ndarray:
        with self._lock:
            buffer = self._buffers.get(index)
            if buffer is None:
                height, width = self._expected[index]
                crop = variant_size(height, width, self._variants[0])
                count = self._lengths[index] * len(self._variants)
                buffer = np.empty((count, *crop, 3), np.uint8)
                self._buffers[index] = buffer
            return buffer

    def place(self, position: int, pixels: np.ndarray) -> bool:
        """Write an image's variants into its slot (decode thread); False when its real size
        differs from the planned one (the caller batches it separately)."""
        slot = self._slots.get(position)
        if slot is None or self._expected[slot[0]] != pixels.shape[:2]:
            return False
        if self._lengths[slot[0]] == 1 and self._variants == (ORIGINAL,):
            with self._lock:  # a batch of one original image: the decoded array itself, no copy
                self._buffers[slot[0]] = pixels[np.newaxis]
            return True
        buffer = self._buffer(slot[0])
        first = slot[1] * len(self._variants)
        for offset, name in enumerate(self._variants):
            buffer[first + offset] = apply_variant(pixels, name)
        return True

    def take(self, index: int, slots: Sequence[int]) -> np.ndarray:
        """The batch of the given filled slots (no copy when every slot is filled)."""
        with self._lock:
            buffer = self._buffers.pop(index)
        if len(slots) == self._lengths[index]:
            return buffer
        rows = [
            slot * len(self._variants) + offset
            for slot in slots
            for offset in range(len(self._variants))
        ]
        return buffer[rows]
