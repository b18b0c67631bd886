"""Scatter reads (features.store.row_scatter) against zarr-python reads placed by plain indexing."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.store.backends import ArrayLayout, ZarrFeatureArray
from features.store.hdf5_backend import HDF5FeatureArray
from features.store.row_scatter import RowScatter, ScatterRequest
from schemas.errors import StoreError
from tests.unit.test_shard_reader import bits, make_array


def expected_out(reference: np.ndarray, request: ScatterRequest, slots: int) -> np.ndarray:
    """What scatter must produce, by a per-row loop over zarr-python's read."""
    shape = reference.shape[1:] if request.variants is None else reference.shape[2:]
    out = np.full((slots, *shape), 7.0, np.float16)
    for index, row in enumerate(request.rows):
        value = (
            reference[row] if request.variants is None else reference[row, request.variants[index]]
        )
        out[request.slots[index]] = value
    return out


def random_request(
    rng: np.random.Generator, rows: int, variants: int, all_variants: bool
) -> tuple[ScatterRequest, int]:
    chosen = np.flatnonzero(rng.random(rows) < 0.6)
    slot_count = len(chosen) + int(rng.integers(0, 3))  # some slots stay untouched
    slots = rng.permutation(slot_count)[: len(chosen)]
    picked = None if all_variants else rng.integers(0, variants, len(chosen))
    return ScatterRequest(chosen, picked, slots), slot_count


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.integers(1, 30),
    variants=st.integers(1, 3),
    width=st.integers(1, 20),
    chunk_rows=st.integers(1, 4),
    chunks_per_shard=st.integers(1, 3),
    compressor=st.sampled_from(["blosc", "lz4", "none"]),
    index_location=st.sampled_from(["end", "start"]),
    all_variants=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_scatter_matches_zarr(
    tmp_path,
    rows,
    variants,
    width,
    chunk_rows,
    chunks_per_shard,
    compressor,
    index_location,
    all_variants,
    seed,
) -> None:
    shard_rows = chunk_rows * chunks_per_shard
    path = os.path.join(tempfile.mkdtemp(dir=tmp_path), "a.zarr")
    shape = (rows, variants, width)
    array = make_array(path, shape, shard_rows, chunk_rows, compressor, index_location)
    rng = np.random.default_rng(seed)
    shards = -(-rows // shard_rows)
    for shard in np.flatnonzero(rng.random(shards) < 0.7):  # the others are never written
        start, stop = shard * shard_rows, min(rows, (shard + 1) * shard_rows)
        values = rng.standard_normal((stop - start, variants, width)).astype(np.float16)
        values[rng.random(stop - start) < 0.3] = np.nan  # all-NaN inner chunks are not stored
        array[start:stop] = values
    request, slot_count = random_request(rng, rows, variants, all_variants)
    scatter = RowScatter.open(path)
    assert scatter is not None
    out_shape = (slot_count, *shape[1:]) if all_variants else (slot_count, width)
    out = np.full(out_shape, 7.0, np.float16)
    scatter.scatter(request, out)
    np.testing.assert_array_equal(
        bits(out), bits(expected_out(np.asarray(array[:]), request, slot_count))
    )


@pytest.mark.parametrize("backend", [ZarrFeatureArray, HDF5FeatureArray])
def test_backends_scatter_the_same_rows(tmp_path, backend) -> None:
    """The backend API (fast path for Zarr, read-then-place for HDF5) on shard-written data."""
    layout = ArrayLayout(rows=20, variants=3, feature_shape=(5, 2), dtype="float16", shard_rows=8)
    array = backend(str(tmp_path / backend.format_name))
    array.create(layout)
    rng = np.random.default_rng(4)
    values = rng.standard_normal((24, 3, 5, 2)).astype(np.float16)
    for start in (0, 8):  # the third shard stays unwritten: NaN
        array.write_shard(start, values[start : start + 8])
    reference = np.full(layout.shape, np.nan, np.float16)
    reference[:16] = values[:16]
    for all_variants in (False, True):
        request, slot_count = random_request(rng, 20, 3, all_variants)
        shape = (slot_count, 3, 5, 2) if all_variants else (slot_count, 5, 2)
        out = np.full(shape, 7.0, np.float16)
        array.scatter_rows(request, out)
        np.testing.assert_array_equal(bits(out), bits(expected_out(reference, request, slot_count)))


def test_truncated_uncompressed_shard_is_a_store_error(tmp_path) -> None:
    path = str(tmp_path / "a.zarr")
    array = make_array(path, (8, 1, 64), 8, 2, "none")
    array[:] = np.ones((8, 1, 64), np.float16)
    shard_file = os.path.join(path, "c", "0", "0", "0")
    with open(shard_file, "r+b") as handle:  # cut into the data; keep a well-formed index
        data = handle.read()
        handle.seek(0)
        handle.write(data[:200] + data[-(16 * 4 + 4) :])
        handle.truncate()
    scatter = RowScatter.open(path)
    assert scatter is not None
    request = ScatterRequest(np.arange(8), np.zeros(8, np.int64), np.arange(8))
    with pytest.raises(StoreError, match="c/0/0/0"):
        scatter.scatter(request, np.empty((8, 64), np.float16))
