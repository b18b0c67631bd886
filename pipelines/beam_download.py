"""Beam path of the download: one shard of items is the unit of work, done wholly in process()."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from features import files
from features.download.fetch import FetchConfig
from features.download.items import DownloadItem, process_shard, status_table
from features.download.secrets import redact_text
from pipelines.runners import runner_entry
from schemas.errors import PipelineError

LOGGER = logging.getLogger(__name__)
PARTS_DIR = "_download_parts"


class DownloadShardFn:
    """DoFn body: fetch one shard with a bounded thread pool and publish its status part.

    No bundle hooks, batching or state are used, so every runner (Dask included) runs it alike.
    """

    def __init__(self, dest: str, config: dict[str, Any], workers: int) -> None:
        self.dest, self.config, self.workers = dest, config, workers

    def process(self, shard: tuple[int, list[dict[str, Any]]]) -> Iterator[int]:
        """Fetch the shard's items and write DEST/_download_parts/part-NNNNN.parquet."""
        index, raw_items = shard
        items = [DownloadItem.from_dict(item) for item in raw_items]
        records = process_shard(items, Path(self.dest) / "images",
                                FetchConfig.from_dict(self.config), self.workers)
        files.atomic_write_parquet(files.join(self.dest, PARTS_DIR, f"part-{index:05d}.parquet"),
                                   status_table(records))
        yield index


def run_beam(runner: str, shards: Sequence[Sequence[DownloadItem]], dest: Path,
             config: FetchConfig, workers: int, options: Sequence[str] = ()
             ) -> list[dict[str, Any]]:
    """Run the shards on a Beam runner and gather the status records they published.

    Raises:
        PipelineError: the pipeline fails.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    body = DownloadShardFn(str(dest), config.to_dict(), workers)

    class _Fn(beam.DoFn):  # type: ignore[misc]
        def process(self, shard: tuple[int, list[dict[str, Any]]]) -> Iterator[int]:
            yield from body.process(shard)

    files.remove_tree(str(dest / PARTS_DIR))
    elements = [(index, [item.to_dict() for item in shard]) for index, shard in enumerate(shards)]
    try:
        with beam.Pipeline(runner=runner_entry(runner).build(),
                           options=PipelineOptions(list(options))) as pipeline:
            _ = (pipeline | "shards" >> beam.Create(elements, reshuffle=False)
                 | "download" >> beam.ParDo(_Fn()))
    except Exception as error:  # runners wrap worker errors in their own types
        # Worker errors may quote elements, whose URIs may hold credentials: none are kept.
        LOGGER.debug("download pipeline failed: %s", redact_text(traceback.format_exc()))
        raise PipelineError(
            f"download pipeline on {runner} failed: {redact_text(str(error))}"
        ) from None
    records: list[dict[str, Any]] = []
    for name in files.list_names(str(dest / PARTS_DIR)):
        records += files.read_parquet(str(dest / PARTS_DIR / name)).to_pylist()
    files.remove_tree(str(dest / PARTS_DIR))
    return records
