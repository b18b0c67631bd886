"""features.store.fanout: results in order, bounded look-ahead, errors as a plain loop raises them."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.store.fanout import READ_THREADS, iterate_in_order, map_in_order


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-1000, 1000), max_size=80), st.integers(1, 10))
def test_results_come_in_the_items_order(items: list[int], window: int) -> None:
    def slow_square(value: int) -> int:
        time.sleep(0.0005 * (value % 3))  # finishing order differs from item order
        return value * value

    assert list(iterate_in_order(slow_square, items, window)) == [v * v for v in items]
    assert map_in_order(slow_square, items) == [v * v for v in items]


def test_no_more_than_the_window_is_started_ahead_of_the_consumer() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def record(value: int) -> int:
        with lock:
            started.append(value)
        return value

    window = 5
    results = iterate_in_order(record, list(range(200)), window)
    for taken, value in enumerate(results, start=1):
        assert value == taken - 1
        time.sleep(0.001)  # let the pool run as far ahead as it may
        with lock:
            # taken yielded + at most `window` submitted behind the last one taken
            assert len(started) <= taken + window
    assert sorted(started) == list(range(200))


def test_the_first_failing_item_in_order_raises_and_later_items_are_cancelled() -> None:
    started: list[int] = []

    def fail_on_some(value: int) -> int:
        started.append(value)
        if value in (7, 3):
            raise ValueError(f"item {value}")
        return value

    with pytest.raises(ValueError, match="item 3"):
        list(iterate_in_order(fail_on_some, list(range(1000)), window=READ_THREADS))
    assert len(started) < 1000  # the rest was cancelled, not run


def test_a_consumer_that_stops_early_leaves_nothing_running() -> None:
    started: list[int] = []
    results = iterate_in_order(lambda value: started.append(value) or value, list(range(500)), 8)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    results.close()
    count = len(started)
    time.sleep(0.05)
    assert len(started) == count <= 3 + 8  # taken + the window behind them
