"""The shard's decode feed: size buckets under the pixel cap, bounded read-ahead, in-place batches."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from features.extraction.feed import (
    BatchBuffers,
    DecodeFeed,
    plan_batches,
    policy_size,
    split_by_actual_size,
)
from features.extraction.variants import VARIANT_SETS, stack_variants
from schemas.view_spec import InputPolicy


def test_plan_buckets_same_sizes_in_row_order_under_the_cap() -> None:
    sizes = [(375, 500), (100, 100), (375, 500), None, (100, 100), (375, 500), (100, 100)]
    batches = plan_batches(sizes, max_batch_pixels=2 * 375 * 500, variants=1)
    assert batches == [[1, 4, 6], [0, 2], [5], [3]]
    for batch in batches:
        assert len({sizes[p] for p in batch}) == 1
    assert sorted(p for batch in batches for p in batch) == list(range(len(sizes)))
    # variants count against the cap; an image over the cap still goes, alone
    assert plan_batches([(100, 100)] * 4, max_batch_pixels=20_000, variants=2) == [
        [0],
        [1],
        [2],
        [3],
    ]
    assert plan_batches([(1000, 1000)] * 2, max_batch_pixels=10, variants=1) == [[0], [1]]


def test_policy_size_matches_the_decoder_resize() -> None:
    policy = InputPolicy(kind="max_side", max_side=400)
    assert policy_size(375, 500, policy) == (300, 400)
    assert policy_size(300, 200, policy) == (300, 200)
    assert policy_size(375, 500, InputPolicy()) == (375, 500)


def test_split_by_actual_size_groups_and_caps() -> None:
    pixels = [np.zeros((h, w, 3), np.uint8) for h, w in [(2, 3), (3, 2), (2, 3), (2, 3)]]
    groups = list(split_by_actual_size([10, 11, 12, 13], pixels, max_batch_pixels=12, variants=1))
    assert [positions for positions, _ in groups] == [[10, 12], [13], [11]]


class _Recorder:
    """A load function that records how far ahead of the consumer it was called."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, position: int) -> int:
        with self.lock:
            self.started.append(position)
        return position * 10


@pytest.mark.parametrize(("threads", "prefetch", "batch_size"), [(1, 1, 1), (2, 2, 1), (2, 1, 8)])
def test_feed_yields_every_batch_in_order_within_the_memory_bound(threads, prefetch, batch_size):
    batches = [
        list(range(start, start + batch_size)) for start in range(0, 20 * batch_size, batch_size)
    ]
    load = _Recorder()
    feed = DecodeFeed(load, batches, threads, prefetch)
    for index, batch in enumerate(feed):
        assert batch.index == index and batch.positions == batches[index]
        assert batch.results == [p * 10 for p in batches[index]]
        with load.lock:
            ahead = len(load.started) - sum(len(b) for b in batches[: index + 1])
        # never more than `prefetch` batches, or 2 x threads images if that is more, beyond it
        assert ahead <= max(prefetch * batch_size, 2 * threads + batch_size - 1)


def test_decoding_runs_while_the_consumer_holds_a_batch() -> None:
    """The consumer waits inside batch 0 until a later batch's image is decoded: without
    overlap this would never happen (the wait would time out)."""
    later_decoded = threading.Event()

    def load(position: int) -> int:
        if position >= 1:
            later_decoded.set()
        return position

    feed = iter(DecodeFeed(load, [[0], [1], [2]], threads=1, prefetch_batches=2))
    first = next(feed)
    assert first.results == [0]
    assert later_decoded.wait(timeout=60)
    assert [batch.results for batch in feed] == [[1], [2]]


def test_stopping_early_cancels_the_rest() -> None:
    load = _Recorder()
    feed = DecodeFeed(load, [[p] for p in range(100)], threads=1, prefetch_batches=1)
    for batch in feed:
        if batch.index == 2:
            break
    assert len(load.started) < 10


@pytest.mark.parametrize("variants", [VARIANT_SETS["orig"], VARIANT_SETS["train8"]])
def test_buffers_hold_exactly_the_stacked_variants(variants) -> None:
    rng = np.random.default_rng(0)
    images = {p: rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for p in range(3)}
    sizes = [(40, 60), (40, 60), (40, 60), (30, 60)]
    buffers = BatchBuffers([[0, 1, 2], [3]], sizes, variants)
    assert all(buffers.place(p, images[p]) for p in (2, 0, 1))  # any order, from any thread
    expected = np.concatenate([stack_variants(images[p], variants) for p in range(3)])
    assert np.array_equal(buffers.take(0, [0, 1, 2]), expected)
    assert not buffers.place(3, images[0])  # real size 40x60 differs from the planned 30x60


def test_partial_batch_and_single_original_image() -> None:
    rng = np.random.default_rng(1)
    images = {p: rng.integers(0, 256, (8, 9, 3), dtype=np.uint8) for p in range(3)}
    buffers = BatchBuffers([[0, 1, 2], [3]], [(8, 9)] * 3 + [(5, 5)], ("orig",))
    buffers.place(0, images[0])
    buffers.place(2, images[2])  # position 1 failed to decode
    assert np.array_equal(buffers.take(0, [0, 2]), np.stack([images[0], images[2]]))
    single = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    assert buffers.place(3, single)
    taken = buffers.take(1, [0])
    assert taken.shape == (1, 5, 5, 3) and np.shares_memory(taken, single)  # no copy
