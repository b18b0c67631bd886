"""Fencing: a holding whose lease was taken over, or not renewed, commits nothing more."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from features import files
from features.store import lease as lease_module
from features.store import verify_view
from features.store.lease import DEFAULT_TTL_SECONDS, LEASE_FILE, LeaseFence, ViewLease
from features.store.query import FeatureStore
from features.store.view import FeatureView
from schemas.errors import LeaseLostError, StoreUnavailableError
from tests.unit.test_store import SMALL_NARROW, index_for, new_view

ROWS, SHARD_ROWS, FENCE = 6, 2, 0.05


@pytest.fixture
def view(tmp_path: Path) -> FeatureView:
    return new_view(str(tmp_path), "zarr", SMALL_NARROW, ROWS, SHARD_ROWS)


@pytest.fixture
def holders() -> Iterator[list[ViewLease]]:
    """Leases a test acquired; all released afterwards, in reverse order."""
    held: list[ViewLease] = []
    yield held
    for lease in reversed(held):
        lease.release()


def take(
    view_path: str,
    owner: str,
    held: list[ViewLease],
    break_lease: str | None = None,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
) -> ViewLease:
    """Acquire (or take over, break_lease given) a lease with a short fencing window."""
    lease = ViewLease(view_path, owner, ttl_seconds, fence_seconds=FENCE)
    lease.acquire(break_lease)
    held.append(lease)
    return lease


def lease_record(view_path: str) -> dict[str, Any]:
    return json.loads(Path(view_path, LEASE_FILE).read_bytes())  # type: ignore[no-any-return]


def tree(view_path: str) -> dict[str, bytes]:
    """Every file of the view (relative path -> bytes) but the lease and its CAS lock."""
    root = Path(view_path)
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in (LEASE_FILE, files.CAS_LOCK_NAME)
    }


def values(fill: float) -> np.ndarray:
    rng = np.random.default_rng(11)
    out = rng.standard_normal((SHARD_ROWS, 1, *SMALL_NARROW.feature_shape)).astype(np.float16)
    out[:, 0, 0] = fill
    return out


def commit_as(view: FeatureView, shard: int, run_id: str, fill: float, statuses: list[str]) -> None:
    spec = view.shards()[shard]
    view.commit_shard(spec, values(fill), index_for(view, spec, statuses), run_id)


def test_takeover_fences_out_the_previous_holder(tmp_path: Path, holders: list[ViewLease]) -> None:
    view_path = str(tmp_path / "view")
    old = take(view_path, "run-a", holders)
    fence = LeaseFence.from_dict(old.fence_settings())
    fence.check()
    old.ensure_held()
    assert lease_record(view_path)["token"] == old.token == fence.token
    trusting = LeaseFence(view_path, old.token, window=60.0)
    trusting.check()  # verified before the takeover: trusted for its whole window

    started = time.monotonic()
    new = take(view_path, "run-b", holders, break_lease="run-a")
    assert time.monotonic() - started >= FENCE  # the new holder waits out the window
    assert new.taken_over is not None and new.taken_over["from_run"] == "run-a"
    assert new.token != old.token and lease_record(view_path)["token"] == new.token

    trusting.check()
    with pytest.raises(LeaseLostError, match="run-b") as raised:
        fence.check()
    assert view_path in str(raised.value) and "run-a" in str(raised.value)
    with pytest.raises(LeaseLostError, match=view_path):
        old.ensure_held()
    LeaseFence.from_dict(new.fence_settings()).check()

    old.release()  # releasing a lost holding leaves the new holder's lease alone
    assert lease_record(view_path)["token"] == new.token
    new.release()
    with pytest.raises(LeaseLostError, match="nobody"):
        LeaseFence.from_dict(new.fence_settings()).check()


@pytest.mark.parametrize(
    "failure",
    [StoreUnavailableError("PUT lease.json failed after 11 attempt(s)"), ConnectionResetError()],
    ids=["store-unavailable", "reset"],
)
def test_lease_not_renewed_in_time_is_lost(
    tmp_path: Path, holders: list[ViewLease], monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    ttl = 0.6
    started = time.monotonic()
    lease = take(str(tmp_path / "view"), "run-a", holders, ttl_seconds=ttl)
    tries: list[float] = []

    def failing_swap(path: str, expected: bytes | None, data: bytes) -> bool:
        tries.append(time.monotonic())
        raise failure

    monkeypatch.setattr(lease_module.files, "replace_if_unchanged", failing_swap)
    while not lease.lost and time.monotonic() - started < 3:
        time.sleep(0.01)
    lost_after = time.monotonic() - started
    assert lease.lost and not lease.held
    assert ttl - FENCE - 0.05 <= lost_after < 1.0  # not before the margin, soon after it
    assert len(tries) >= 3  # failed renewals are retried sooner than every ttl/3
    with pytest.raises(LeaseLostError, match="renew") as raised:
        lease.ensure_held()
    assert lease.view_path in str(raised.value)


def test_renewed_lease_stays_held(tmp_path: Path, holders: list[ViewLease]) -> None:
    view_path = str(tmp_path / "view")
    lease = take(view_path, "run-a", holders, ttl_seconds=0.6)
    records = [lease_record(view_path)]
    deadline = time.monotonic() + 3
    while len(records) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
        record = lease_record(view_path)
        if record != records[-1]:
            records.append(record)
    assert len(records) >= 4  # the first record and three renewals
    assert {record["token"] for record in records} == {lease.token}
    serials = [record["serial"] for record in records]
    assert serials == sorted(serials) and len(set(serials)) == len(serials)
    expiries = [str(record["expires_at"]) for record in records]
    assert expiries == sorted(expiries)
    assert lease.held and not lease.lost
    lease.ensure_held()


def test_writes_after_a_takeover_change_nothing(
    view: FeatureView, holders: list[ViewLease]
) -> None:
    old = take(view.path, "run-a", holders)
    view.fence = LeaseFence.from_dict(old.fence_settings())
    commit_as(view, 0, "run-a", 1.0, ["ok", "ok"])
    assert view.committed()[0].lease_token == old.token

    take(view.path, "run-b", holders, break_lease="run-a")
    time.sleep(FENCE)  # the old fence's window has passed
    before = tree(view.path)
    with pytest.raises(LeaseLostError, match=view.path):
        commit_as(view, 1, "run-a", 2.0, ["ok", "ok"])
    assert tree(view.path) == before
    assert sorted(view.committed()) == [0]
    index = FeatureStore(str(Path(view.path).parent)).index(SMALL_NARROW.name)
    assert index.column("row").to_pylist() == [0, 1]


def test_marker_of_another_holding_is_never_replaced(
    view: FeatureView, holders: list[ViewLease]
) -> None:
    first = take(view.path, "run-a", holders)
    view.fence = LeaseFence.from_dict(first.fence_settings())
    commit_as(view, 0, "run-a", 1.0, ["ok", "ok"])
    marker_path = Path(view.marker_path(view.shards()[0]))
    committed = marker_path.read_bytes()

    second = take(view.path, "run-b", holders, break_lease="run-a")
    other = FeatureView(str(Path(view.path).parent), SMALL_NARROW.name)
    other.fence = LeaseFence.from_dict(second.fence_settings())
    with pytest.raises(LeaseLostError, match="committed by run run-a"):
        commit_as(other, 0, "run-b", 2.0, ["ok", "decode_error"])
    assert marker_path.read_bytes() == committed
    assert other.committed()[0].lease_token == first.token


def test_refused_commit_leaves_the_committed_shard_intact(
    view: FeatureView, holders: list[ViewLease]
) -> None:
    first = take(view.path, "run-a", holders)
    view.fence = LeaseFence.from_dict(first.fence_settings())
    commit_as(view, 0, "run-a", 1.0, ["ok", "ok"])
    before = tree(view.path)

    second = take(view.path, "run-b", holders, break_lease="run-a")
    other = FeatureView(str(Path(view.path).parent), SMALL_NARROW.name)
    other.fence = LeaseFence.from_dict(second.fence_settings())
    with pytest.raises(LeaseLostError):
        commit_as(other, 0, "run-b", 2.0, ["ok", "decode_error"])
    changed = sorted(name for name, data in tree(view.path).items() if before.get(name) != data)
    report = verify_view(FeatureView(str(Path(view.path).parent), SMALL_NARROW.name), deep=True)
    assert (changed, report.problems) == ([], [])
