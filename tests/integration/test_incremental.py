"""Incremental runs: a grown manifest appends rows and extracts only new images; removals are marked."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features import files
from features.download.manifest import read_manifest
from features.extraction.shard import ShardExtractor
from features.store.query import FeatureStore
from features.store.view import FeatureView
from pipelines import extract
from tests.helpers.extract_cli import NARROW, extract_argv

VIEW = NARROW


def _run(manifest: str, store: str) -> int:
    return extract.run(extract_argv(manifest, store))


def test_append_new_images_and_mark_removed(sample_manifest, tmp_path, monkeypatch) -> None:
    full = read_manifest(str(sample_manifest))
    ids = full.column("image_id").to_pylist()
    first_ids, later_ids = ids[:10], ids[1:14]  # drop ids[0], add ids[10:14]
    first, later = str(tmp_path / "first.parquet"), str(tmp_path / "later.parquet")
    for path, keep in ((first, first_ids), (later, later_ids)):
        mask = pc.is_in(full.column("image_id"), value_set=pa.array(keep))
        files.atomic_write_parquet(path, full.filter(mask))
    store = str(tmp_path / "store")
    assert _run(first, store) == 0
    view = FeatureView(store, VIEW)
    before = view.committed()
    old_values = view.array.read_range(0, 10)

    forwarded: list[str] = []
    original = ShardExtractor._extract_rows

    def record(self, rows, views):
        forwarded.extend(row["image_id"] for row in rows)
        return original(self, rows, views)

    monkeypatch.setattr(ShardExtractor, "_extract_rows", record)
    assert _run(later, store) == 0
    view = FeatureView(store, VIEW)
    assert sorted(forwarded) == sorted(ids[10:14])  # only the new images were read and extracted
    allocation = view.allocation
    assert allocation.column("row").to_pylist() == [
        *range(10),
        *range(12, 16),
    ]  # next shard boundary
    assert allocation.column("image_id").to_pylist()[10:] == sorted(ids[10:14])
    after = view.committed()
    assert all(after[index] == marker for index, marker in before.items())
    np.testing.assert_array_equal(view.array.read_range(0, 10), old_values)

    index = FeatureStore(store).index(VIEW)
    removed = dict(
        zip(index.column("image_id").to_pylist(), index.column("removed").to_pylist(), strict=True)
    )
    assert removed[ids[0]] is True
    assert not any(flag for image_id, flag in removed.items() if image_id != ids[0])
    assert index.num_rows == 14

    clean = str(tmp_path / "clean")
    assert _run(str(sample_manifest), clean) == 0
    wanted = ids[10:14]
    grown = FeatureStore(store).table(VIEW, ids=wanted).column("features").combine_chunks()
    reference = FeatureStore(clean).table(VIEW, ids=wanted).column("features").combine_chunks()
    assert grown.is_null().to_pylist() == reference.is_null().to_pylist()
    ok = [i for i, null in enumerate(grown.is_null().to_pylist()) if not null]
    np.testing.assert_array_equal(
        grown.take(ok).to_numpy_ndarray(), reference.take(ok).to_numpy_ndarray()
    )
