"""Whole-shard scans (features.store.shard_reader) against zarr-python's own reads."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.store.backends import ArrayLayout, ZarrFeatureArray
from features.store.shard_reader import ShardFormat, ShardScanner
from schemas.errors import StoreError


def make_array(
    path: str,
    shape: tuple[int, ...],
    shard_rows: int,
    chunk_rows: int,
    compressor: str = "blosc",
    index_location: str = "end",
):
    import zarr
    from zarr.codecs import BloscCodec

    compressors = {
        "blosc": [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
        "lz4": [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
        "none": None,
    }[compressor]
    return zarr.create_array(
        store=path,
        shape=shape,
        dtype="float16",
        chunks=(chunk_rows, *shape[1:]),
        shards={"shape": (shard_rows, *shape[1:]), "index_location": index_location},
        compressors=compressors,
        fill_value=float("nan"),
    )


def bits(values: np.ndarray) -> np.ndarray:
    """Bit patterns, so NaN fill compares equal to NaN fill."""
    return np.ascontiguousarray(values).view(np.uint16)


def scan(path: str, start: int, stop: int, array) -> np.ndarray:
    scanner = ShardScanner.open(path)
    assert scanner is not None
    return scanner.read_range(start, stop, lambda a, b: np.asarray(array[a:b]))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.integers(1, 40),
    width=st.integers(1, 24),
    chunk_rows=st.integers(1, 4),
    chunks_per_shard=st.integers(1, 4),
    compressor=st.sampled_from(["blosc", "lz4", "none"]),
    index_location=st.sampled_from(["end", "start"]),
    data=st.data(),
)
def test_ranges_match_zarr(
    tmp_path, rows, width, chunk_rows, chunks_per_shard, compressor, index_location, data
) -> None:
    shard_rows = chunk_rows * chunks_per_shard
    path = os.path.join(tempfile.mkdtemp(dir=tmp_path), "a.zarr")
    array = make_array(path, (rows, 2, width), shard_rows, chunk_rows, compressor, index_location)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    shards = -(-rows // shard_rows)
    for shard in sorted(data.draw(st.sets(st.integers(0, shards - 1)))):  # others unwritten
        start, stop = shard * shard_rows, min(rows, (shard + 1) * shard_rows)
        values = rng.standard_normal((stop - start, 2, width)).astype(np.float16)
        values[rng.random(stop - start) < 0.3] = np.nan  # all-NaN inner chunks are not stored
        array[start:stop] = values
    start = data.draw(st.integers(0, rows - 1))
    stop = data.draw(st.integers(start + 1, rows))
    np.testing.assert_array_equal(bits(scan(path, start, stop, array)), bits(array[start:stop]))


def test_unwritten_and_partial_last_shards(tmp_path) -> None:
    path = str(tmp_path / "a.zarr")
    array = make_array(path, (10, 1, 3), 4, 2)
    values = np.arange(30, dtype=np.float16).reshape(10, 1, 3)
    array[0:4] = values[0:4]
    array[8:10] = values[8:10]  # partial last shard; shard 1 never written
    got = scan(path, 0, 10, array)
    np.testing.assert_array_equal(got[0:4], values[0:4])
    assert np.isnan(got[4:8]).all()
    np.testing.assert_array_equal(got[8:10], values[8:10])
    np.testing.assert_array_equal(bits(got), bits(array[:]))


def test_point_reads_go_through_the_fallback(tmp_path) -> None:
    path = str(tmp_path / "a.zarr")
    array = make_array(path, (16, 1, 3), 8, 2)
    array[:] = np.ones((16, 1, 3), np.float16)
    scanner = ShardScanner.open(path)
    assert scanner is not None
    assert scanner.pieces(3, 4) == [(0, 3, 4, False)]
    assert scanner.pieces(2, 14) == [(0, 2, 8, True), (1, 8, 14, True)]
    calls = []

    def fallback(a: int, b: int) -> np.ndarray:
        calls.append((a, b))
        return np.asarray(array[a:b])

    np.testing.assert_array_equal(scanner.read_range(7, 16, fallback), array[7:16])
    assert calls == [(7, 8)]


def test_corrupt_index_is_an_error(tmp_path) -> None:
    path = str(tmp_path / "a.zarr")
    array = make_array(path, (4, 1, 3), 4, 2)
    array[:] = np.ones((4, 1, 3), np.float16)
    shard = tmp_path / "a.zarr" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum"):
        scan(path, 0, 4, array)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["codecs"][0]["configuration"]["codecs"].append({"name": "crc32c"}),
        lambda m: m["codecs"][0]["configuration"]["codecs"].__setitem__(1, {"name": "gzip"}),
        lambda m: m["codecs"][0]["configuration"]["codecs"][0]["configuration"].update(
            endian="big"
        ),
        lambda m: m["codecs"].insert(0, {"name": "transpose"}),
        lambda m: m.update(data_type="bool"),
        lambda m: m["codecs"][0]["configuration"].update(chunk_shape=[2, 1, 1]),
        lambda m: m["chunk_key_encoding"].update(name="v2"),
    ],
)
def test_unhandled_formats_are_left_to_zarr(tmp_path, change) -> None:
    path = str(tmp_path / "a.zarr")
    make_array(path, (4, 1, 3), 4, 2)
    with open(os.path.join(path, "zarr.json")) as handle:
        meta = json.load(handle)
    assert ShardFormat.parse(meta) is not None
    change(meta)
    assert ShardFormat.parse(meta) is None


def test_backend_read_range_matches_zarr(tmp_path) -> None:
    backend = ZarrFeatureArray(str(tmp_path))
    backend.create(ArrayLayout(70, 2, (5, 7), "float16", 32))
    values = np.random.default_rng(1).standard_normal((70, 2, 5, 7)).astype(np.float16)
    backend.write_shard(0, values[:32])
    backend.write_shard(64, values[64:])
    expected = np.asarray(backend._open()[:])
    for start, stop in [(0, 70), (0, 32), (64, 70), (5, 6), (30, 66), (40, 64)]:
        got = backend.read_range(start, stop)
        np.testing.assert_array_equal(bits(got), bits(expected[start:stop]))


@pytest.mark.parametrize("compressor", ["blosc", "lz4"])
def test_sparse_rows_decoding_only_their_blosc_blocks_match_zarr(
    tmp_path, monkeypatch, compressor
) -> None:
    from features.store import point_read, shard_reader
    from features.store.point_read import read_sparse_rows

    partial: list[int] = []

    def counted(source, dest, first, *args):  # type: ignore[no-untyped-def]
        partial.append(first)
        return shard_reader.decode_items(source, dest, first, *args)

    monkeypatch.setattr(point_read, "decode_items", counted)

    path = str(tmp_path / "a.zarr")
    # 16-row chunks of 20 KB rows: Blosc splits each chunk into several blocks.
    array = make_array(path, (64, 1, 10000), 32, 16, compressor)
    values = np.random.default_rng(0).standard_normal((64, 1, 10000)).astype(np.float16)
    array[0:32] = np.maximum(values[0:32], 0)  # rows 32-63 never written: NaN
    fmt = ShardScanner.open(path).format  # type: ignore[union-attr]
    assert shard_reader._blosc_getitem() is not None
    for rows in ([5], [0, 1, 2, 3], [6, 13, 15], [15, 16, 31], [2, 40], [0, 3, 4, 5, 9, 12]):
        picked = np.asarray(rows)
        got = read_sparse_rows(path, fmt, picked)
        np.testing.assert_array_equal(bits(got), bits(np.asarray(array.oindex[picked])))
    assert 5 * 10000 in partial and 13 * 10000 in partial  # single rows: their blocks only


def test_partial_blosc_decode_rejects_a_chunk_whose_header_lies(tmp_path) -> None:
    from features.store.shard_reader import decode_items

    path = str(tmp_path / "a.zarr")
    array = make_array(path, (16, 1, 10000), 16, 16)
    array[:] = np.ones((16, 1, 10000), np.float16)
    data = (tmp_path / "a.zarr" / "c" / "0" / "0" / "0").read_bytes()
    dest = np.empty(10000, np.float16)
    with pytest.raises(StoreError, match="header"):
        decode_items(data[:100], dest, 0, 16 * 10000 * 2, "a")
    with pytest.raises(StoreError, match="header"):
        decode_items(data, dest, 0, 10000 * 2, "a")
