"""The Beam graph itself, under TestPipeline + assert_that: totals come from process() outputs only."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from features.download.manifest import read_manifest
from features.extraction.planning import allocate_rows, pending_shards, prepare_views, resolve_specs
from features.extraction.shard import ExtractionConfig, ShardExtractor
from features.store.lease import ViewLease
from pipelines.beam_extract import build_extract_pipeline
from schemas.view_spec import InputPolicy
from tests.conftest import RANDOM_WEIGHTS

SAMPLE_STATUSES = {
    "ok": 12,
    "zero_bytes": 1,
    "truncated": 1,
    "decode_error": 1,
    "too_small": 1,
    "decompression_bomb": 1,
}


def test_graph_totals_and_skips(sample_manifest, tmp_path) -> None:
    store = str(tmp_path / "store")
    specs = resolve_specs(["irnv2_mlsp_narrow"], RANDOM_WEIGHTS, InputPolicy())
    allocation = allocate_rows(read_manifest(str(sample_manifest)))
    with ViewLease.acquire_all([f"{store}/irnv2_mlsp_narrow"], "graph-test") as leases:
        views = prepare_views(store, specs, allocation, 8, "zarr", leases=leases)
    config = ExtractionConfig(store=store, views=("irnv2_mlsp_narrow",), run_id="graph-test")
    shards = pending_shards(views)
    assert [shard.rows for shard in shards] == [8, 8, 1]
    first = ShardExtractor(config).process(shards[0])  # committed before the pipeline runs
    assert not first.skipped

    with TestPipeline() as pipeline:
        totals = build_extract_pipeline(pipeline, shards, config)
        remaining = {
            status: count - first.status_counts.get(status, 0)
            for status, count in SAMPLE_STATUSES.items()
        }
        expected = {
            "shards": 3,
            "skipped": 1,
            "images_forwarded": 12 - first.images_forwarded,
            "status_counts": {status: count for status, count in remaining.items() if count},
        }
        assert_that(totals, equal_to([expected]))
    assert sorted(views[0].committed()) == [0, 1, 2]


def test_graph_has_no_batching_or_state() -> None:
    """DaskRunner drops finish_bundle outputs, BatchElements tails and state: use none of them."""
    pipeline = beam.Pipeline()
    build_extract_pipeline(
        pipeline, [], ExtractionConfig(store="/nonexistent", views=("v",), run_id="r")
    )
    labels = [node.full_label for node in pipeline._current_transform().parts]
    assert labels == ["ShardSpecs", "Spread", "ExtractShard", "Totals", "LogTotals"]
    from pipelines.beam_extract import ExtractShardFn

    assert "finish_bundle" not in ExtractShardFn.__dict__
