"""Commit markers checksum the stored feature bytes; verify --deep finds a flipped byte."""

from __future__ import annotations

import json

import numpy as np
import pytest

from features import files
from features.store import BACKENDS, publish_snapshot, verify
from features.store.view import FeatureView
from tests.unit.test_store import SMALL_NARROW, commit, new_view


def _chunk_offset(view: FeatureView, shard: int) -> int:
    """Byte offset of the shard's first stored chunk inside its file (independent of our code)."""
    if view.format_name == "hdf5":
        import h5py

        path = files.join(view.array.path, view.array.shard_key(shard))
        with h5py.File(path, "r") as handle:
            return int(handle["features"].id.get_chunk_info(0).byte_offset)
    return 0  # Zarr shard objects put their chunks first and the index at the end


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_verify_deep_names_the_shard_file_with_a_flipped_byte(
    tmp_path, backend, compression, capsys
) -> None:
    view = new_view(str(tmp_path), backend, SMALL_NARROW, 6, 2, compression)
    values = np.random.default_rng(0).standard_normal((6, 1, 320)).astype(np.float16)
    for shard in view.shards():
        commit(view, shard, values[shard.row_start : shard.row_stop], ["ok"] * shard.rows)
    publish_snapshot(view, "t")
    assert verify.verify_view(view, deep=True).ok
    target = files.join(view.array.path, view.array.shard_key(1))
    data = bytearray(files.read_bytes(target))
    position = _chunk_offset(view, 1) + 100  # even: the low byte of a float16 when raw
    data[position] ^= 0x01
    with open(target, "wb") as handle:
        handle.write(bytes(data))
    if compression == "none":
        assert verify.verify_view(view).ok  # plain verify reads values, not checksums: cheap
    assert verify.run(["--store", str(tmp_path), "--deep"]) == 1
    out = capsys.readouterr().out
    assert f"shard 1: {target} changed since commit" in out, out
    assert "shard 0:" not in out and "shard 2:" not in out


def test_markers_written_before_checksums_are_noted_not_failed(tmp_path) -> None:
    view = new_view(str(tmp_path), "zarr", SMALL_NARROW, 4, 2)
    commit(view, view.shards()[0], np.zeros((2, 1, 320), np.float16), ["ok", "ok"])
    path = view.marker_path(view.shards()[0])
    old = json.loads(files.read_bytes(path))
    del old["features_file"], old["features_sha256"]
    files.atomic_write_text(path, json.dumps(old))
    report = verify.verify_view(view, deep=True)
    assert report.ok
    assert any("no features checksum" in note for note in report.notes)
