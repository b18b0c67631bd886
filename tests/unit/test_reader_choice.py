"""benchmarks.reader_choice's legs read the same bytes: the store's reader against zarr-python."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks.reader_choice import check_digests, format_report
from benchmarks.reader_legs import drop_page_cache, epoch_windows, open_reader, operation
from benchmarks.train_input import build_view
from schemas.view_spec import FeatureViewSpec

SPEC = FeatureViewSpec(name="tiny", taps=("mixed_5b",), weights_id="random:1")  # 320 values


@pytest.fixture(scope="module")
def view_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    view = build_view(str(tmp_path_factory.mktemp("legs") / "store"), SPEC, 150, 64, "lz4")
    os.remove(os.path.join(view.path, "features.zarr", "c", "1", "0", "0"))  # a missing shard
    return view.path


@pytest.mark.parametrize("name", ["scan", "points1", "points1k", "epoch"])
def test_hand_and_zarr_legs_read_identical_bytes(view_path: str, name: str) -> None:
    digests = set()
    for leg in ("hand", "zarr"):
        reader = open_reader(leg, view_path)
        digests.add(operation(reader, name, 150, 40, 64)())
    assert len(digests) == 1


def test_missing_shard_reads_as_nan_in_every_leg(view_path: str) -> None:
    for leg in ("hand", "zarr"):
        values = open_reader(leg, view_path).scan(60, 130)
        assert np.isnan(values[4:68].astype(np.float32)).all()
        assert not np.isnan(values[:4].astype(np.float32)).any()


def test_epoch_windows_cover_every_row_once_in_shard_blocks() -> None:
    seen_rows, seen_slots = [], []
    for blocks in epoch_windows(150, 64, 40):
        slots = np.concatenate([slots for _, slots in blocks])
        assert sorted(slots.tolist()) == list(range(len(slots)))
        seen_slots.append(slots)
        for rows, _ in blocks:
            assert rows[-1] // 64 == rows[0] // 64 and np.all(np.diff(rows) == 1)
            seen_rows.append(rows)
    assert sorted(np.concatenate(seen_rows).tolist()) == list(range(150))


def test_report_flags_legs_that_read_different_bytes(tmp_path: Path) -> None:
    base = {"storage": "local", "view": "v", "op": "scan", "cold_ms": 2.0, "warm_ms": 1.0}
    results = [{**base, "leg": "hand", "digest": "a"}, {**base, "leg": "zarr", "digest": "b"}]
    assert check_digests(results) == ["local v scan"]
    row = "| local | v | scan | 2.0 / 1.0 (n/a) | 2.0 / 1.0 (n/a) | 1.00, 1.00, n/a |"
    assert row in format_report(results, ["hand", "zarr"])
    (tmp_path / "f").write_bytes(b"x")
    assert drop_page_cache(str(tmp_path)) in (True, False)
