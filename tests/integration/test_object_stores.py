"""The store on s3:// (moto) and gs:// (fake-gcs-server): conditional writes, the lease, end to end.

The servers run on 127.0.0.1 for the session (tests/helpers/object_stores.py); every test gets
a fresh bucket on each (the `bucket` fixture runs each test once per protocol).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from features import files
from features.store.lease import ViewLease
from schemas.errors import StoreError

RACE_ROUNDS = 12


def _race(count: int, attempt: callable) -> list:  # type: ignore[valid-type]
    """Run attempt(i) in count threads released at the same instant; their results in order."""
    barrier = threading.Barrier(count)

    def run(index: int) -> object:
        barrier.wait()
        return attempt(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_exclusive_create_has_one_winner_among_racing_writers(bucket) -> None:
    for round_index in range(RACE_ROUNDS):
        path = bucket.path(f"race-{round_index}")
        won = _race(6, lambda i, path=path: files.create_exclusive(path, b"writer %d" % i))
        assert sum(won) == 1, won
        assert files.read_bytes(path) == b"writer %d" % won.index(True)


def test_compare_and_swap_replaces_only_the_expected_bytes(bucket) -> None:
    path = bucket.path("pointer.json")
    assert files.replace_if_unchanged(path, None, b"1")  # absent -> created
    assert not files.replace_if_unchanged(path, None, b"x")  # exists: not created again
    assert not files.replace_if_unchanged(path, b"0", b"x")  # stale expectation
    assert files.replace_if_unchanged(path, b"1", b"2")
    assert files.read_bytes(path) == b"2"
    assert not files.replace_if_unchanged(bucket.path("absent"), b"2", b"3")
    assert not files.remove_if_unchanged(path, b"1")
    assert files.remove_if_unchanged(path, b"2")
    assert not files.exists(path)


def test_racing_compare_and_swaps_have_one_winner(bucket) -> None:
    path = bucket.path("counter")
    files.atomic_write_bytes(path, b"0")
    for round_index in range(RACE_ROUNDS):
        before = b"%d" % round_index
        won = _race(
            4,
            lambda i, before=before, round_index=round_index: files.replace_if_unchanged(
                path, before, b"%d" % (round_index + 1)
            ),
        )
        assert sum(won) == 1, (round_index, won)
    assert files.read_bytes(path) == b"%d" % RACE_ROUNDS


def test_two_writers_started_at_once_one_proceeds_the_other_names_it(bucket) -> None:
    for round_index in range(RACE_ROUNDS):
        view = bucket.path("store", f"view-{round_index}")
        leases = [ViewLease(view, f"run-{round_index}-{i}") for i in range(2)]

        def take(index: int, leases: list[ViewLease] = leases) -> str | None:
            try:
                leases[index].acquire()
            except StoreError as error:
                return str(error)
            return None

        errors = _race(2, take)
        winners = [i for i, error in enumerate(errors) if error is None]
        assert len(winners) == 1, errors
        loser_error = errors[1 - winners[0]]
        assert loser_error is not None and f"run-{round_index}-{winners[0]}" in loser_error
        leases[winners[0]].release()
        assert not files.exists(files.join(view, "lease.json"))


def test_unsupported_filesystem_warns_that_creates_are_not_exclusive(caplog) -> None:
    with caplog.at_level("WARNING", logger="features.files"):
        assert files.create_exclusive("memory://objstore-test/lease.json", b"x")
    assert "cannot do exclusive creates atomically" in caplog.text
    files.remove_file("memory://objstore-test/lease.json")


@pytest.fixture(autouse=True)
def _quiet_botocore(caplog) -> None:
    caplog.set_level("WARNING", logger="botocore")
