"""Per-view compression: codecs on disk, read-back, whole-shard scans equal zarr-python's reads."""

from __future__ import annotations

import json
import os
import tempfile

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import files
from features.store import backends
from features.store.backends import COMPRESSIONS, ArrayLayout, ZarrFeatureArray
from features.store.hdf5_backend import HDF5_FILTERS
from features.store.shard_reader import ShardScanner
from features.store.view import FeatureView
from schemas.errors import ConfigError, StoreError
from tests.unit.test_store import SMALL_NARROW, new_view


def bits(values: np.ndarray) -> np.ndarray:
    """Bit patterns, so NaN fill compares equal to NaN fill."""
    return np.ascontiguousarray(values).view(np.uint16)


def inner_codecs(array_path: str) -> list[dict]:
    with open(os.path.join(array_path, "zarr.json")) as handle:
        meta = json.load(handle)
    (sharding,) = meta["codecs"]
    return sharding["configuration"]["codecs"]


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_zarr_codecs_are_the_registered_ones_and_read_back(tmp_path, compression) -> None:
    array = ZarrFeatureArray(str(tmp_path))
    array.create(ArrayLayout(10, 1, (6,), "float16", 4, compression))
    codecs = inner_codecs(array.path)
    assert codecs[0] == {"name": "bytes", "configuration": {"endian": "little"}}
    blosc = COMPRESSIONS[compression]
    if blosc is None:
        assert len(codecs) == 1
    else:
        assert codecs[1]["name"] == "blosc"
        config = codecs[1]["configuration"]
        assert (config["cname"], config["clevel"], config["shuffle"]) == (
            blosc.cname,
            blosc.clevel,
            blosc.shuffle,
        )
    assert array.layout().compression == compression
    scanner = ShardScanner.open(array.path)
    assert scanner is not None and scanner.format.blosc == (blosc is not None)


def test_default_is_lz4_and_unknown_names_are_refused() -> None:
    layout = ArrayLayout(1, 1, (2,), "float16", 1)
    assert layout.compression == "lz4"
    assert COMPRESSIONS["zstd"] == backends.BloscSettings("zstd", 1, "shuffle")
    with pytest.raises(ConfigError, match=r"'gzip'.*\['lz4', 'none', 'zstd'\]"):
        ArrayLayout(1, 1, (2,), "float16", 1, "gzip")


def test_foreign_zarr_codecs_are_a_store_error(tmp_path) -> None:
    import zarr
    from zarr.codecs import BloscCodec

    zarr.create_array(
        store=str(tmp_path / "features.zarr"),
        shape=(4, 1, 2),
        dtype="float16",
        chunks=(2, 1, 2),
        shards=(4, 1, 2),
        compressors=[BloscCodec(cname="zstd", clevel=9, shuffle="shuffle")],
        attributes={"shard_rows": 4},
    )
    with pytest.raises(StoreError, match="inner codecs"):
        ZarrFeatureArray(str(tmp_path)).layout()


@settings(
    max_examples=20,
    derandomize=True,  # fixed seeds
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.integers(1, 30),
    width=st.integers(1, 12),
    chunk_rows=st.sampled_from([1, 2, 4]),
    chunks_per_shard=st.integers(1, 3),
    data=st.data(),
)
@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_scanner_reads_equal_zarr_reads(
    tmp_path, monkeypatch, compression, rows, width, chunk_rows, chunks_per_shard, data
) -> None:
    row_bytes = 2 * width * 2  # 2 variants of float16
    monkeypatch.setattr(backends, "TARGET_CHUNK_BYTES", chunk_rows * row_bytes)
    shard_rows = chunk_rows * chunks_per_shard
    array = ZarrFeatureArray(tempfile.mkdtemp(dir=tmp_path))
    layout = ArrayLayout(rows, 2, (width,), "float16", shard_rows, compression)
    assert layout.chunk_rows == chunk_rows
    array.create(layout)
    rng = np.random.default_rng(rows * 1000 + width)
    shards = -(-rows // shard_rows)
    for shard in sorted(data.draw(st.sets(st.integers(0, shards - 1)))):  # others unwritten
        start, stop = shard * shard_rows, min(rows, (shard + 1) * shard_rows)
        values = rng.standard_normal((stop - start, 2, width)).astype(np.float16)
        values[rng.random(stop - start) < 0.3] = np.nan  # all-NaN inner chunks are not stored
        array.write_shard(start, values)
    start = data.draw(st.integers(0, rows - 1))
    stop = data.draw(st.integers(start + 1, rows))
    through_zarr = array._open()
    scanner = ShardScanner.open(array.path)
    assert scanner is not None
    got = scanner.read_range(start, stop, lambda a, b: np.asarray(through_zarr[a:b]))
    expected = np.asarray(through_zarr[start:stop])
    np.testing.assert_array_equal(bits(got), bits(expected))
    np.testing.assert_array_equal(bits(array.read_range(start, stop)), bits(expected))


def test_every_recorded_compression_has_an_hdf5_filter() -> None:
    assert set(HDF5_FILTERS) == backends.RECORDED_COMPRESSIONS == {*COMPRESSIONS, "lzf"}


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_hdf5_records_the_codec_it_wrote(tmp_path, compression) -> None:
    view = new_view(str(tmp_path), "hdf5", SMALL_NARROW, 4, 4, compression)
    written = "none" if compression == "none" else "lzf"  # h5py has no Blosc
    shape = (4, 1, *SMALL_NARROW.feature_shape)
    view.array.write_shard(0, np.arange(np.prod(shape), dtype=np.float16).reshape(shape))
    with h5py.File(files.native(view.array.shard_path(0)), "r") as handle:
        assert handle["features"].compression == (None if written == "none" else "lzf")
    layout = json.loads(files.read_bytes(files.join(view.array.path, "layout.json")))
    assert (view.meta["compression"], layout["compression"]) == (written, written)
    reopened = FeatureView(str(tmp_path), SMALL_NARROW.name)
    assert reopened.compression == reopened.array.layout().compression == written
    reopened.ensure(SMALL_NARROW, reopened.allocation, None, "hdf5", compression)  # same ask: ok
    other = "none" if compression != "none" else "lz4"
    with pytest.raises(StoreError, match=f"stored with {written} compression, not {other}"):
        reopened.ensure(SMALL_NARROW, reopened.allocation, None, "hdf5", other)


def test_zarr_refuses_hdf5s_lzf(tmp_path) -> None:
    with pytest.raises(ConfigError, match="compression 'lzf' is unknown"):
        ZarrFeatureArray.written_compression("lzf")


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_views_from_before_the_choice_report_zstd(tmp_path, backend) -> None:
    view = new_view(str(tmp_path), backend, SMALL_NARROW, 3, 2, "zstd")  # the old codec
    meta = {key: value for key, value in view.meta.items() if key != "compression"}
    files.atomic_write_text(files.join(view.path, "view.json"), json.dumps(meta))
    if backend == "hdf5":  # its layout.json did not record it either
        layout_path = files.join(view.array.path, "layout.json")
        layout = json.loads(files.read_bytes(layout_path))
        del layout["compression"]
        files.atomic_write_text(layout_path, json.dumps(layout))
    old = FeatureView(str(tmp_path), "narrow")
    assert old.compression == "zstd"
    with pytest.raises(StoreError, match="stored with zstd compression, not lz4"):
        old.ensure(SMALL_NARROW, old.allocation, None, backend, "lz4")
