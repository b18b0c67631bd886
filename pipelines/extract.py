"""CLI: extract MLSP feature views from a manifest into a store, on any Beam runner."""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
import uuid
from collections.abc import Sequence

from features.cli import add_common_arguments, configure_logging, positive_int, run_cli
from features.extraction import DEFAULT_MAX_BATCH_PIXELS, ExtractionConfig
from features.images import DEFAULT_MAX_PIXELS
from features.manifest import read_manifest
from features.planning import allocate_rows, pending_shards, prepare_views, resolve_specs, summarize
from pipelines.progress import CommitProgress, format_summary
from pipelines.runners import RUNNERS, runner_entry
from schemas.errors import ConfigError, PipelineError
from schemas.view_spec import PREDEFINED_VIEWS, InputPolicy

LOGGER = logging.getLogger(__name__)
EXIT_ROW_FAILURES = 3


def build_parser() -> argparse.ArgumentParser:
    """Argument parser; unknown --flags are passed to Beam as pipeline options."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.extract",
        description="Extract MLSP features (narrow and/or wide) for every image of a manifest. "
        "Flags not listed here are passed to Apache Beam as pipeline options.",
    )
    parser.add_argument("--manifest", required=True, help="manifest.parquet (path or URL)")
    parser.add_argument("--store", required=True, help="feature store root (path or URL)")
    parser.add_argument(
        "--view",
        action="append",
        required=True,
        choices=sorted(PREDEFINED_VIEWS),
        help="view to fill; repeat to fill several from one forward pass",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (Keras cache), a .h5 weights file, or 'random:SEED'",
    )
    parser.add_argument(
        "--shard-size",
        type=positive_int("--shard-size"),
        default=None,
        help="rows per shard for a new view (default 64; an existing view keeps its own)",
    )
    parser.add_argument(
        "--max-side",
        type=positive_int("--max-side"),
        default=None,
        help="downscale images whose longest side exceeds this (default: original size)",
    )
    parser.add_argument(
        "--max-pixels",
        type=positive_int("--max-pixels"),
        default=DEFAULT_MAX_PIXELS,
        help="images with more pixels are refused as decompression bombs",
    )
    parser.add_argument(
        "--max-batch-pixels",
        type=positive_int("--max-batch-pixels"),
        default=DEFAULT_MAX_BATCH_PIXELS,
        help="pixel cap of one forward batch of same-size images",
    )
    parser.add_argument(
        "--decode-threads",
        type=positive_int("--decode-threads"),
        default=2,
        help="threads reading and decoding images per worker",
    )
    parser.add_argument("--format", default="zarr", choices=["zarr"], help="features array format")
    parser.add_argument("--runner", default="direct", choices=sorted(RUNNERS), help="Beam runner")
    parser.add_argument(
        "--fail-on-errors",
        action="store_true",
        help=f"exit {EXIT_ROW_FAILURES} when any row has a status other than ok",
    )
    parser.add_argument("--summary-json", help="also write the run summary to this file")
    add_common_arguments(parser)
    return parser


def _input_policy(max_side: int | None) -> InputPolicy:
    if max_side is None:
        return InputPolicy()
    try:
        return InputPolicy(kind="max_side", max_side=max_side)
    except ConfigError as error:
        raise ConfigError(f"--max-side {max_side}: {error}") from None


def _run_pipeline(
    runner_name: str, beam_args: list[str], shards: list, config: ExtractionConfig
) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.beam_extract import build_extract_pipeline

    options = PipelineOptions(beam_args, save_main_session=False)
    try:
        with beam.Pipeline(runner=runner_entry(runner_name).build(), options=options) as pipeline:
            build_extract_pipeline(pipeline, shards, config)
    except Exception as error:  # Beam wraps worker errors in runner-specific types
        raise PipelineError(
            f"pipeline failed on runner {runner_name!r}: {error}. Committed shards "
            "are kept; re-run the same command to resume."
        ) from error


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    configure_logging(args.verbose)
    unexpected = [
        arg
        for position, arg in enumerate(beam_args)
        if not arg.startswith("--")
        and (
            position == 0
            or not beam_args[position - 1].startswith("--")
            or "=" in beam_args[position - 1]
        )
    ]
    if unexpected:
        parser.error(f"unrecognized arguments: {' '.join(unexpected)}")
    run_id = (
        datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    )
    allocation = allocate_rows(read_manifest(args.manifest))
    specs = resolve_specs(args.view, args.weights, _input_policy(args.max_side))
    views = prepare_views(args.store, specs, allocation, args.shard_size, args.format)
    shards = pending_shards(views)
    LOGGER.info("%d of %d shards to extract for %s", len(shards), len(views[0].shards()), args.view)
    config = ExtractionConfig(
        store=args.store,
        views=tuple(view.name for view in views),
        run_id=run_id,
        max_pixels=args.max_pixels,
        max_batch_pixels=args.max_batch_pixels,
        decode_threads=args.decode_threads,
    )
    started = time.perf_counter()
    if shards:
        with CommitProgress(views[0], shards):
            _run_pipeline(args.runner, beam_args, shards, config)
    summary = summarize(views, run_id, time.perf_counter() - started, args.runner)
    for view in views:
        view.write_run_summary(run_id, summary)
    if args.summary_json:
        import json

        from features.store import files

        files.atomic_write_text(args.summary_json, json.dumps(summary, indent=2))
    print(format_summary(summary))
    failed = sum(count for status, count in summary["status_counts"].items() if status != "ok")
    return EXIT_ROW_FAILURES if args.fail_on_errors and failed else 0


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 job error, 2 bad argument, 3 failed rows)."""
    return run_cli(_main, argv)


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
