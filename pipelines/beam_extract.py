"""Beam wiring of extraction: Create(shards) -> Reshuffle -> ParDo(ExtractShard) -> summary."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from features.extraction.shard import ExtractionConfig, ShardExtractor, ShardResult
from features.store import ShardSpec

LOGGER = logging.getLogger(__name__)
# Namespace of the extraction's Beam metrics (the runner's UI groups them by it).
METRICS_NAMESPACE = "mlsp"


def report_metrics(result: ShardResult) -> None:
    """Count one shard in Beam metrics: the job page of Dataflow or Flink shows them live.

    Counters: shards, shards_skipped, images_<status>, bytes_written, store_<retry kind>.
    Distributions (ms per image): decode_ms, read_ms, forward_ms, write_ms.
    """

    def counter(name: str, value: int = 1) -> None:
        Metrics.counter(METRICS_NAMESPACE, name).inc(value)

    counter("shards_skipped" if result.skipped else "shards")
    for status, count in result.status_counts.items():
        counter(f"images_{status}", count)
    counter("bytes_written", result.bytes_written)
    for kind, count in result.store_retries.items():
        counter("store_" + kind.replace(" ", "_"), count)
    for name, values in (
        ("decode_ms", result.decode_ms),
        ("read_ms", result.read_ms),
        ("forward_ms", result.model_ms),
        ("write_ms", [result.write_ms / result.rows] * result.rows if not result.skipped else []),
    ):
        distribution = Metrics.distribution(METRICS_NAMESPACE, name)
        for value in values:
            distribution.update(round(value))


class ExtractShardFn(beam.DoFn):  # type: ignore[misc]
    """Processes one whole shard per element inside process().

    Nothing depends on finish_bundle, state, timers or BatchElements, which Beam's DaskRunner
    drops; the model is loaded once per worker in setup() and cached per process.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self._config = config
        self._extractor: ShardExtractor | None = None

    def setup(self) -> None:
        """Open the views and load the model once per DoFn instance (cached per process)."""
        self._extractor = ShardExtractor(ExtractionConfig.from_dict(self._config))
        _ = self._extractor.model

    def process(self, shard: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Extract, write and commit one shard; yields its small result record."""
        assert self._extractor is not None
        spec = ShardSpec(shard["index"], shard["row_start"], shard["row_stop"])
        result = self._extractor.process(spec, shard.get("views"))
        report_metrics(result)
        yield result.to_dict()


class MergeResults(beam.CombineFn):  # type: ignore[misc]
    """Totals shard results (counts by status, images forwarded, shards done and skipped)."""

    def create_accumulator(self) -> dict[str, Any]:
        return {"shards": 0, "skipped": 0, "images_forwarded": 0, "status_counts": {}}

    def add_input(self, totals: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        totals["shards"] += 1
        totals["skipped"] += int(result["skipped"])
        totals["images_forwarded"] += result["images_forwarded"]
        for status, count in result["status_counts"].items():
            totals["status_counts"][status] = totals["status_counts"].get(status, 0) + count
        return totals

    def merge_accumulators(self, accumulators: Any) -> dict[str, Any]:
        merged = self.create_accumulator()
        for totals in accumulators:
            merged["shards"] += totals["shards"]
            merged["skipped"] += totals["skipped"]
            merged["images_forwarded"] += totals["images_forwarded"]
            for status, count in totals["status_counts"].items():
                merged["status_counts"][status] = merged["status_counts"].get(status, 0) + count
        return merged

    def extract_output(self, totals: dict[str, Any]) -> dict[str, Any]:
        return totals


def _log_totals(totals: dict[str, Any]) -> dict[str, Any]:
    LOGGER.info("pipeline totals: %s", totals)
    return totals


def build_extract_pipeline(
    pipeline: beam.Pipeline,
    shards: Sequence[ShardSpec],
    config: ExtractionConfig,
    views_pending: Mapping[int, Sequence[str]] | None = None,
) -> beam.PCollection:
    """Add the extraction graph to a pipeline; returns the PCollection of worker totals.

    Args:
        views_pending: per shard index, the views the plan found uncommitted (workers then
            read no marker before extracting); None = each worker checks every view's marker.
    """
    shard_records: list[dict[str, Any]] = [
        {"index": s.index, "row_start": s.row_start, "row_stop": s.row_stop} for s in shards
    ]
    if views_pending is not None:
        for record in shard_records:
            record["views"] = list(views_pending[record["index"]])
    return (
        pipeline
        | "ShardSpecs" >> beam.Create(shard_records)
        # Reshuffle breaks fusion so shards spread over workers instead of riding one bundle.
        | "Spread" >> beam.Reshuffle()
        | "ExtractShard" >> beam.ParDo(ExtractShardFn(config.to_dict()))
        | "Totals" >> beam.CombineGlobally(MergeResults())
        | "LogTotals" >> beam.Map(_log_totals)
    )


def pipeline_metrics(result: Any, runner: str) -> dict[str, Any]:
    """The run's Beam metrics as its PipelineResult reports them, for the run summary.

    Counters are summed over steps (committed values where the runner has them, else
    attempted); distributions give count, sum, min, max and mean in ms. A runner without
    metrics (Beam's DaskRunner) gives {"supported": False, "reason": ...}: the summary's
    other counts come from commit markers, which every runner leaves.
    """
    from apache_beam.metrics.metric import MetricsFilter

    try:
        query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except NotImplementedError as error:
        return {"supported": False, "reason": f"runner {runner!r} reports no metrics ({error})"}
    counters: dict[str, int] = {}
    for item in query["counters"]:
        value = item.committed if item.committed is not None else item.attempted
        counters[item.key.metric.name] = counters.get(item.key.metric.name, 0) + int(value or 0)
    distributions = {}
    for item in query["distributions"]:
        value = item.committed if item.committed is not None else item.attempted
        if value is not None and value.count:
            distributions[item.key.metric.name] = {
                "count": value.count,
                "sum": value.sum,
                "min": value.min,
                "max": value.max,
                "mean": round(value.sum / value.count, 3),
            }
    return {"supported": True, "counters": counters, "distributions_ms": distributions}
