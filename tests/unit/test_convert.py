"""Zarr <-> HDF5 conversion is lossless; the ava-mlsp export has the reference layout."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from features.store import BACKENDS, convert, verify
from features.store.backends import DEFAULT_COMPRESSION
from features.store.query import FeatureStore
from tests.unit.test_store import SMALL_WIDE, commit, new_view


def _filled(tmp_path, backend, compression=None):
    view = new_view(str(tmp_path / "src"), backend, SMALL_WIDE, 5, 2, compression)
    values = np.random.default_rng(1).standard_normal((5, 1, 2, 2, 320)).astype(np.float16)
    values[2] = np.nan
    for shard in view.shards()[:2]:  # the last shard stays uncommitted
        statuses = ["ok" if r != 2 else "too_small" for r in range(shard.row_start, shard.row_stop)]
        commit(view, shard, values[shard.row_start : shard.row_stop], statuses)
    return view, values


@pytest.mark.parametrize(
    ("source", "target"), [(a, b) for a in sorted(BACKENDS) for b in sorted(BACKENDS) if a != b]
)
def test_round_trip_between_formats(tmp_path, source, target) -> None:
    view, _ = _filled(tmp_path, source)
    converted = convert.convert_view(view, str(tmp_path / "dst"), target)
    back = convert.convert_view(converted, str(tmp_path / "back"), source)
    assert converted.format_name == target and verify.verify_view(converted).ok
    for other in (converted, back):
        a = FeatureStore(view.store_root).table("wide")
        b = FeatureStore(other.store_root).table("wide")
        assert a.equals(b)
    assert sorted(converted.committed()) == [0, 1]


def test_conversion_keeps_the_compression_unless_told(tmp_path) -> None:
    view, _ = _filled(tmp_path, "zarr", "lz4")
    as_hdf5 = convert.convert_view(view, str(tmp_path / "h5"), "hdf5")
    assert as_hdf5.compression == as_hdf5.array.layout().compression == "lzf"  # what HDF5 wrote
    back = convert.convert_view(as_hdf5, str(tmp_path / "back"), "zarr")
    assert back.array.layout().compression == DEFAULT_COMPRESSION  # zarr has no LZF
    argv = ["--store", view.store_root, "--view", "wide", "--to", "zarr", "--compression", "none"]
    assert convert.run([*argv, "--out", str(tmp_path / "raw")]) == 0
    raw = FeatureStore(str(tmp_path / "raw")).view("wide")
    assert raw.compression == raw.array.layout().compression == "none"
    source_table = FeatureStore(view.store_root).table("wide")
    assert source_table.equals(FeatureStore(raw.store_root).table("wide"))
    ava = ["--layout", "ava-mlsp", "--out", str(tmp_path / "ava"), "--compression", "none"]
    assert convert.run([*argv[:4], *ava]) == 2


def test_ava_mlsp_export_layout(tmp_path) -> None:
    view, values = _filled(tmp_path, "zarr")
    assert (
        convert.run(
            [
                "--store",
                view.store_root,
                "--view",
                "wide",
                "--layout",
                "ava-mlsp",
                "--out",
                str(tmp_path / "ava"),
            ]
        )
        == 0
    )
    path = tmp_path / "ava" / "i1[orig]_lfinal_o1[2,2,320]_r1.h5"
    with h5py.File(path, "r") as handle:
        assert list(handle) == ["orig"]
        names = sorted(handle["orig"])
        assert names == ["img0000.jpg", "img0001.jpg", "img0003.jpg"]  # ok and committed only
        rows = {name: int(name[3:7]) for name in names}
        for name, row in rows.items():
            np.testing.assert_array_equal(handle["orig"][name][...], values[row, 0])


def test_conversion_writes_under_the_target_views_lease(tmp_path) -> None:
    from features.store.lease import ViewLease
    from features.store.view import FeatureView
    from schemas.errors import StoreError

    view, _ = _filled(tmp_path, "zarr")
    target_path = FeatureView(str(tmp_path / "dst"), view.name).path
    other = ViewLease(target_path, "another-writer")
    other.acquire()
    try:
        with pytest.raises(StoreError, match="another-writer"):
            convert.convert_view(view, str(tmp_path / "dst"), "hdf5")
        assert not FeatureView(str(tmp_path / "dst"), view.name).exists()  # nothing written
    finally:
        other.release()
    converted = convert.convert_view(view, str(tmp_path / "dst"), "hdf5")
    assert verify.verify_view(converted).ok
    assert not (tmp_path / "dst" / view.name / "lease.json").exists()  # released when done
