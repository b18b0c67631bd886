"""Store behaviour, run against every registered backend (one shared suite, feast style)."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import files
from features.extraction.planning import allocate_rows, ensure_store
from features.store import BACKENDS
from features.store.backends import COMPRESSIONS
from features.store.query import FeatureStore, tensor_array
from features.store.view import CommitMarker, FeatureView, ShardSpec, image_ids_digest
from schemas.errors import ConfigError, SpecMismatchError, StoreError, UnknownImageIdsError
from schemas.tables import MANIFEST_SCHEMA
from schemas.view_spec import FeatureViewSpec, PoolingSpec

SMALL_NARROW = FeatureViewSpec(name="narrow", taps=("mixed_5b",), weights_id="random:1")
SMALL_WIDE = FeatureViewSpec(
    name="wide", taps=("mixed_5b",), pooling=PoolingSpec("grid", (2, 2)), weights_id="random:1"
)


def manifest(n: int) -> pa.Table:
    ids = [f"img{i:04d}" for i in range(n)]
    return pa.table(
        {
            "dataset": ["t"] * n,
            "image_id": ids[::-1],
            "uri": [f"/x/{i}.jpg" for i in ids[::-1]],
            "bytes": [10] * n,
            "width": [100] * n,
            "height": [80] * n,
            "sha256": ["0" * 64] * n,
            "split": (["train", "test"] * n)[:n],
        },
        schema=MANIFEST_SCHEMA,
    )


def index_for(view: FeatureView, shard: ShardSpec, statuses: list[str]) -> pa.Table:
    rows = view.allocation.slice(shard.row_start, shard.rows).to_pylist()
    return pa.table(
        {
            "image_id": [r["image_id"] for r in rows],
            "row": [r["row"] for r in rows],
            "status": statuses,
            "error": [None if s == "ok" else f"{s}!" for s in statuses],
            "dataset": [r["dataset"] for r in rows],
            "split": [r["split"] for r in rows],
            "width": [r["width"] for r in rows],
            "height": [r["height"] for r in rows],
            "read_ms": [1.0] * shard.rows,
            "decode_ms": [1.0] * shard.rows,
            "model_ms": [1.0] * shard.rows,
        }
    )


def commit(view: FeatureView, shard: ShardSpec, values: np.ndarray, statuses: list[str]) -> None:
    view.commit_shard(shard, values, index_for(view, shard, statuses), "run-1", seconds=0.1)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> str:
    return request.param


@pytest.fixture(params=sorted(COMPRESSIONS))
def compression(request) -> str:
    return request.param


def new_view(
    root: str,
    backend: str,
    spec: FeatureViewSpec,
    n: int,
    shard_rows: int,
    compression: str | None = None,
) -> FeatureView:
    ensure_store(root)
    view = FeatureView(root, spec.name)
    view.ensure(spec, allocate_rows(manifest(n)), shard_rows, backend, compression)
    return view


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 11), shard_rows=st.integers(1, 4), wide=st.booleans(), seed=st.integers(0, 99)
)
def test_round_trip_through_store_and_arrow(
    tmp_path_factory, backend, compression, n, shard_rows, wide, seed
) -> None:
    root = str(tmp_path_factory.mktemp("store"))
    spec = SMALL_WIDE if wide else SMALL_NARROW
    view = new_view(root, backend, spec, n, shard_rows, compression)
    reopened = FeatureView(root, spec.name)
    written = reopened.array.written_compression(compression)  # HDF5: "lzf" for zstd/lz4
    assert reopened.compression == reopened.array.layout().compression == written
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n, 1, *spec.feature_shape)).astype(np.float16)
    statuses = [("ok" if rng.uniform() < 0.8 else "decode_error") for _ in range(n)]
    for shard in view.shards():
        commit(
            view,
            shard,
            values[shard.row_start : shard.row_stop],
            statuses[shard.row_start : shard.row_stop],
        )
    table = FeatureStore(root).table(spec.name)
    assert table.column("image_id").to_pylist() == sorted(f"img{i:04d}" for i in range(n))
    stored = table.column("features").combine_chunks()
    for row in range(n):
        if statuses[row] == "ok":
            np.testing.assert_array_equal(stored[row].to_numpy(), values[row])
        else:
            assert not stored[row].is_valid
    wanted = [f"img{i:04d}" for i in rng.permutation(n)[: max(1, n // 2)]]
    picked = FeatureStore(root).table(spec.name, ids=wanted)
    assert picked.column("image_id").to_pylist() == wanted


@given(st.lists(st.floats(-1e4, 1e4, width=16), min_size=6, max_size=6), st.integers(1, 4))
def test_arrow_tensor_round_trip(values, rows) -> None:
    array = np.array(values * rows, dtype=np.float16).reshape(rows, 1, 2, 3)
    tensors = tensor_array(array)
    assert tensors.type.shape == [1, 2, 3]
    np.testing.assert_array_equal(tensors.to_numpy_ndarray(), array)


def test_uncommitted_rows_are_invisible(tmp_path, backend) -> None:
    view = new_view(str(tmp_path), backend, SMALL_NARROW, 6, 3)
    first, second = view.shards()
    commit(view, first, np.ones((3, 1, 320), np.float16), ["ok"] * 3)
    view.array.write_shard(second.row_start, np.full((3, 1, 320), 7, np.float16))  # no marker
    store = FeatureStore(str(tmp_path))
    assert store.index("narrow").column("row").to_pylist() == [0, 1, 2]
    with pytest.raises(UnknownImageIdsError, match="img0003"):
        store.table("narrow", ids=["img0003"])


def test_markers_that_do_not_match_the_rows_are_rejected(tmp_path, backend) -> None:
    view = new_view(str(tmp_path), backend, SMALL_NARROW, 4, 2)
    shard = view.shards()[0]
    bad = CommitMarker(
        0, 0, 2, image_ids_digest(["x", "y"]), view.spec.identity_sha256(), {}, "r", 2, 0.1
    )
    view.write_shard(
        shard, np.zeros((2, 1, 320), np.float16), index_for(view, shard, ["ok", "ok"]), bad
    )
    with pytest.raises(StoreError, match="image-id digest"):
        view.committed()


def test_existing_view_refuses_other_spec_and_grows_with_the_manifest(tmp_path, backend) -> None:
    new_view(str(tmp_path), backend, SMALL_NARROW, 4, 2)
    view = FeatureView(str(tmp_path), "narrow")
    with pytest.raises(SpecMismatchError, match="weights_id"):
        view.ensure(
            SMALL_NARROW.with_weights("random:2", ""), allocate_rows(manifest(4)), None, backend
        )
    view.ensure(SMALL_NARROW, allocate_rows(manifest(5)), None, backend)  # appends, see below
    assert view.allocation.column("row").to_pylist() == [0, 1, 2, 3, 4]
    assert [(s.row_start, s.row_stop) for s in view.shards()] == [(0, 2), (2, 4), (4, 5)]
    assert view.array.layout().rows == 5
    with pytest.raises(StoreError, match="--shard-size 3"):
        view.ensure(SMALL_NARROW, allocate_rows(manifest(4)), 3, backend)


def test_existing_view_keeps_its_compression_and_refuses_another(tmp_path, backend) -> None:
    new_view(str(tmp_path), backend, SMALL_NARROW, 4, 2, "lz4")
    view = FeatureView(str(tmp_path), "narrow")
    rows = allocate_rows(manifest(4))
    view.ensure(SMALL_NARROW, rows, None, backend)  # None reuses the view's own
    view.ensure(SMALL_NARROW, rows, None, backend, "lz4")
    written = {"zarr": "lz4", "hdf5": "lzf"}[backend]  # the codec each format writes for lz4
    with pytest.raises(StoreError, match=f"view 'narrow' is stored with {written} compression, not none"):
        view.ensure(SMALL_NARROW, rows, None, backend, "none")
    with pytest.raises(ConfigError, match=r"'gzip'.*\['lz4', 'none', 'zstd'\]"):
        view.ensure(SMALL_NARROW, rows, None, backend, "gzip")
    assert FeatureView(str(tmp_path), "narrow").compression == written
    assert view.array.layout().compression == written


def test_failed_write_then_retry_is_exact(tmp_path, backend, compression, monkeypatch) -> None:
    view = new_view(str(tmp_path), backend, SMALL_WIDE, 4, 4, compression)
    shard = view.shards()[0]
    values = (
        np.arange(4 * 2 * 2 * 320, dtype=np.float32).reshape(4, 1, 2, 2, 320).astype(np.float16)
    )
    real_link = os.link
    failures: list[str] = []

    def flaky_link(source, target):  # markers are created exclusively: temp file + link
        if not failures and str(target).endswith(".json"):
            failures.append(str(target))
            raise OSError("disk full (injected)")
        return real_link(source, target)

    monkeypatch.setattr(os, "link", flaky_link)
    with pytest.raises(OSError, match="injected"):
        commit(view, shard, values, ["ok"] * 4)
    assert failures and failures[0].endswith("shard-000000.json")
    assert FeatureStore(str(tmp_path)).index("wide").num_rows == 0
    assert not [n for n in files.list_names(files.join(view.path, "commits")) if n.endswith(".tmp")]
    commit(view, shard, values, ["ok"] * 4)
    table = FeatureStore(str(tmp_path)).table("wide")
    np.testing.assert_array_equal(
        table.column("features").combine_chunks().to_numpy_ndarray(), values
    )


def _probe_zarr_reads(monkeypatch) -> list[int]:
    """Record the size of every buffer zarr's LocalStore returns and of every positioned read."""
    from zarr.storage import LocalStore

    sizes: list[int] = []
    real_get = LocalStore.get
    real_pread = os.pread

    def counting_pread(descriptor, count, offset):
        data = real_pread(descriptor, count, offset)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counting_pread)

    async def counting_get(self, key, prototype=None, byte_range=None):
        buffer = await real_get(self, key, prototype, byte_range)
        if buffer is not None and not key.endswith("zarr.json"):
            sizes.append(len(buffer))
        return buffer

    monkeypatch.setattr(LocalStore, "get", counting_get)
    return sizes


def _probe_hdf5_reads(monkeypatch) -> list[int]:
    """Open shard files through a byte-counting Python file object (h5py's fileobj driver)."""
    import h5py

    sizes: list[int] = []
    real_file = h5py.File

    class CountingReader(io.FileIO):
        def readinto(self, buffer):
            count = super().readinto(buffer)
            sizes.append(count or 0)
            return count

    def counting_file(name, mode="r", *args, **kwargs):
        if isinstance(name, str) and mode == "r" and "shards" in name:
            return real_file(CountingReader(name, "r"), mode)
        return real_file(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", counting_file)
    return sizes


BYTES_READ_PROBES = {"zarr": _probe_zarr_reads, "hdf5": _probe_hdf5_reads}


def test_point_lookup_reads_one_inner_chunk(tmp_path, backend, monkeypatch) -> None:
    spec = FeatureViewSpec(
        name="big", taps=("mixed_7a",), pooling=PoolingSpec("grid", (5, 5)), weights_id="random:1"
    )  # 104 KB rows -> 8-row inner chunks
    view = new_view(str(tmp_path), backend, spec, 64, 64)
    layout = view.array.layout()
    assert layout.chunk_rows == 8
    values = np.random.default_rng(0).standard_normal((64, 1, 5, 5, 2080)).astype(np.float16)
    commit(view, view.shards()[0], values, ["ok"] * 64)
    shard_bytes = sum(
        os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(view.array.path) for f in fs
    )
    read_sizes = BYTES_READ_PROBES[backend](monkeypatch)
    table = FeatureStore(str(tmp_path)).table("big", ids=["img0037"])
    np.testing.assert_array_equal(table.column("features")[0].to_numpy(), values[37])
    chunk_bytes = layout.chunk_rows * layout.row_bytes
    assert 0 < sum(read_sizes) <= chunk_bytes * 1.1 + 16_384, (sum(read_sizes), chunk_bytes)
    assert sum(read_sizes) < shard_bytes / 4


def test_inner_chunks_are_about_a_mebibyte_of_rows() -> None:
    from features.store.backends import ArrayLayout

    assert ArrayLayout(100, 1, (16928,), "float16", 64).chunk_rows == 16  # 33 KB rows, <= 1 MiB
    assert ArrayLayout(100, 8, (16928,), "float16", 64).chunk_rows == 2  # train8 narrow
    assert ArrayLayout(100, 1, (5, 5, 16928), "float16", 64).chunk_rows == 1  # wide: 846 KB
    assert ArrayLayout(100, 1, (16928,), "float16", 6).chunk_rows == 6
    assert ArrayLayout(100, 1, (16928,), "float16", 7).chunk_rows == 7


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_fsspec_urls_round_trip(tmp_path, backend, scheme) -> None:
    root = (
        f"memory://store-{backend}-{tmp_path.name}"
        if scheme == "memory"
        else f"file://{tmp_path}/s"
    )
    view = new_view(root, backend, SMALL_WIDE, 5, 2)
    values = np.random.default_rng(3).standard_normal((5, 1, 2, 2, 320)).astype(np.float16)
    for shard in view.shards():
        commit(view, shard, values[shard.row_start : shard.row_stop], ["ok"] * shard.rows)
    table = FeatureStore(root).table("wide", ids=["img0004", "img0000"])
    np.testing.assert_array_equal(
        table.column("features").combine_chunks().to_numpy_ndarray(), values[[4, 0]]
    )
    assert sorted(FeatureView(root, "wide").committed()) == [0, 1, 2]
