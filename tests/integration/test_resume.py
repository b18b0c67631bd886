"""A crash mid-shard: readers see only committed rows; a re-run ends identical to a clean run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from features.extraction.shard import ShardExtractor
from features.store.query import FeatureStore
from features.store.view import FeatureView
from pipelines import extract
from schemas.errors import UnknownImageIdsError
from schemas.status import RowStatus
from tests.helpers.extract_cli import NARROW, extract_argv

VIEW = NARROW
TIMING_COLUMNS = ["read_ms", "decode_ms", "model_ms"]


def _argv(manifest: Path, store: Path) -> list[str]:
    return extract_argv(manifest, store, "--direct_num_workers", "1")


def _forward_counter(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts images the model forwards, independently of the extractor's own counter."""
    counts: list[int] = []
    original = ShardExtractor._extract_rows

    def counting(self, rows, views):
        decoded, features, model_ms = original(self, rows, views)
        counts.append(sum(image.status is RowStatus.OK for image in decoded))
        return decoded, features, model_ms

    monkeypatch.setattr(ShardExtractor, "_extract_rows", counting)
    return counts


def test_crash_mid_shard_then_resume_equals_clean_run(
    sample_manifest, tmp_path, monkeypatch, capsys
) -> None:
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    assert extract.run(_argv(sample_manifest, clean)) == 0

    original_write = FeatureView.write_shard
    crashed: list[int] = []

    def crash_after_features(self, shard, values, index, marker):
        if shard.index == 1 and not crashed:
            crashed.append(shard.index)
            self.array.write_shard(shard.row_start, values.astype(np.float16))  # data lands...
            raise RuntimeError("simulated worker crash before commit")  # ...the marker never does
        return original_write(self, shard, values, index, marker)

    monkeypatch.setattr(FeatureView, "write_shard", crash_after_features)
    assert extract.run(_argv(sample_manifest, resumed)) == 1
    assert "re-run the same command to resume" in capsys.readouterr().err
    monkeypatch.setattr(FeatureView, "write_shard", original_write)

    view = FeatureView(str(resumed), VIEW)
    committed_first = view.committed()
    assert 1 not in committed_first
    store = FeatureStore(str(resumed))
    visible_rows = set(store.index(VIEW).column("row").to_pylist())
    assert visible_rows.isdisjoint(range(4, 8))
    crashed_id = view.shard_image_ids(view.shards()[1])[0]
    with pytest.raises(UnknownImageIdsError, match=crashed_id):
        store.table(VIEW, ids=[crashed_id])

    counts = _forward_counter(monkeypatch)
    assert extract.run(_argv(sample_manifest, resumed)) == 0
    pending = [shard for shard in view.shards() if shard.index not in committed_first]
    clean_index = FeatureStore(str(clean)).index(VIEW)
    expected_forwarded = sum(
        clean_index.slice(shard.row_start, shard.rows).column("status").to_pylist().count("ok")
        for shard in pending
    )
    assert sum(counts) == expected_forwarded
    assert len(counts) == len(pending)
    committed_second = view.committed()
    for shard_index, marker in committed_first.items():
        assert committed_second[shard_index] == marker  # committed shards were not rewritten

    clean_table = FeatureStore(str(clean)).table(VIEW).drop_columns(TIMING_COLUMNS)
    resumed_table = store.table(VIEW).drop_columns(TIMING_COLUMNS)
    assert resumed_table.drop_columns(["features"]).equals(clean_table.drop_columns(["features"]))
    clean_values = FeatureView(str(clean), VIEW).array.read_range(0, 17)
    resumed_values = view.array.read_range(0, 17)
    np.testing.assert_array_equal(clean_values, resumed_values)
