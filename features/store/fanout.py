"""Many small reads at once: an object store answers each in tens of milliseconds, one at a time."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
# Requests in flight: enough to hide an object store's latency (4,000 markers read one by one
# at 30 ms would take 2 minutes), few enough that no bucket throttles one process.
READ_THREADS = 16
# Results done ahead of the consumer: bounded, so reading every marker of a view holds a few
# dozen of them (each with its shard's index rows), not all 4,000 at once.
WINDOW = 4 * READ_THREADS


def iterate_in_order(
    function: Callable[[Item], Result], items: Sequence[Item], window: int = WINDOW
) -> Iterator[Result]:
    """function(item) for every item, READ_THREADS at a time, yielded in the items' order,
    with at most `window` items submitted ahead of the one yielded.

    Raises:
        Exception: the first item's (in order) exception, as a plain loop would raise it; the
            items not started yet are cancelled.
    """
    if len(items) < 2:
        yield from (function(item) for item in items)
        return
    with ThreadPoolExecutor(min(READ_THREADS, len(items)), "store-read") as pool:
        remaining = iter(items)
        pending: deque[Future[Result]] = deque()
        try:
            for item in remaining:
                pending.append(pool.submit(function, item))
                if len(pending) >= max(1, window):
                    break
            while pending:
                result = pending.popleft().result()
                for item in remaining:  # one more submitted for each one taken
                    pending.append(pool.submit(function, item))
                    break
                yield result
        finally:
            for future in pending:  # an error or a consumer that stopped early
                future.cancel()


def map_in_order(function: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """function(item) for every item, READ_THREADS at a time, results in the items' order
    (all held: use iterate_in_order when results are consumed one by one).

    Raises:
        Exception: the first item's (in order) exception, as a plain loop would raise it.
    """
    return list(iterate_in_order(function, items))
