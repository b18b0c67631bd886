"""The snapshot pointer only moves forward: a stale publisher fails instead of rolling it back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from features.store import FeatureStore, publish_snapshot
from features.store import compaction as compaction_module
from features.store.snapshot import (
    Snapshot,
    pointer_path,
    publish_pointer,
    read_pointer,
    read_pointer_with_bytes,
)
from features.store.view import FeatureView
from schemas.errors import StoreError
from tests.unit.test_store import SMALL_NARROW, commit, new_view

ROWS, SHARD_ROWS = 6, 2


@pytest.fixture
def view(tmp_path: Path) -> FeatureView:
    return new_view(str(tmp_path), "zarr", SMALL_NARROW, ROWS, SHARD_ROWS)


def commit_shard(view: FeatureView, index: int) -> None:
    shard = view.shards()[index]
    values = np.random.default_rng(index).standard_normal((shard.rows, 1, 320))
    commit(view, shard, values.astype(np.float16), ["ok"] * shard.rows)


def rows_of(shards: list[int]) -> list[int]:
    """Rows of these shards, computed from the layout alone."""
    return [row for shard in shards for row in range(shard * SHARD_ROWS, (shard + 1) * SHARD_ROWS)]


def test_stale_publisher_never_rolls_the_pointer_back(
    view: FeatureView, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit_shard(view, 0)
    assert publish_snapshot(view, "run-1") == 1
    first, first_bytes = read_pointer_with_bytes(view.path)
    assert first is not None and first.snapshot == 1 and first.committed_shards() == [0]
    assert first_bytes == Path(pointer_path(view.path)).read_bytes()

    commit_shard(view, 1)
    assert publish_snapshot(view, "run-2") == 2
    current_bytes = Path(pointer_path(view.path)).read_bytes()

    # A publisher that read the pointer before snapshot 2 was published.
    monkeypatch.setattr(
        compaction_module, "read_pointer_with_bytes", lambda path: (first, first_bytes)
    )
    with pytest.raises(StoreError, match="moved on") as raised:
        publish_snapshot(view, "stale")
    assert "snapshot 2" in str(raised.value)
    monkeypatch.undo()

    assert Path(pointer_path(view.path)).read_bytes() == current_bytes
    pointer = read_pointer(view.path)
    assert pointer is not None and pointer.snapshot == 2 and pointer.committed_shards() == [0, 1]
    index = FeatureStore(str(Path(view.path).parent)).index(SMALL_NARROW.name)
    assert index.column("row").to_pylist() == rows_of([0, 1])

    # The next publish builds on snapshot 2 and moves the pointer forward again.
    commit_shard(view, 2)
    latest = publish_snapshot(view, "run-3")
    pointer = read_pointer(view.path)
    assert pointer is not None and pointer.snapshot == latest > 2 and pointer.parent == 2
    index = FeatureStore(str(Path(view.path).parent)).index(SMALL_NARROW.name)
    assert index.column("row").to_pylist() == rows_of([0, 1, 2])


@pytest.mark.parametrize(("number", "parent"), [(2, 2), (1, 2), (0, None)])
def test_pointer_refuses_a_snapshot_that_does_not_follow_its_parent(
    view: FeatureView, number: int, parent: int | None
) -> None:
    commit_shard(view, 0)
    publish_snapshot(view, "run-1")
    commit_shard(view, 1)
    publish_snapshot(view, "run-2")
    current, current_bytes = read_pointer_with_bytes(view.path)
    assert current is not None and current.snapshot == 2
    backwards: Snapshot = dataclasses.replace(current, snapshot=number, parent=parent)
    with pytest.raises(StoreError, match=f"snapshot {number} does not follow"):
        publish_pointer(view.path, backwards, current_bytes)
    assert read_pointer_with_bytes(view.path) == (current, current_bytes)


def test_pointer_swap_against_a_missing_base_fails_when_a_pointer_exists(
    view: FeatureView,
) -> None:
    commit_shard(view, 0)
    publish_snapshot(view, "run-1")
    current, current_bytes = read_pointer_with_bytes(view.path)
    assert current is not None
    later = dataclasses.replace(current, snapshot=5, parent=None)
    with pytest.raises(StoreError, match="moved on to snapshot 1"):
        publish_pointer(view.path, later, None)  # built as if no pointer existed
    assert read_pointer_with_bytes(view.path) == (current, current_bytes)
