"""CLI: extract MLSP feature views from a manifest into a store, on any Beam runner."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from features import files, preflight, retries
from features.cli import cli_entry_points, configure_logging, refuse_unused
from features.download.manifest import read_manifest
from features.extraction.planning import (
    allocate_rows,
    plan_shards,
    prepare_views,
    resolve_specs,
    store_names,
)
from features.extraction.shard import ExtractionConfig
from features.extraction.variants import parse_variants
from features.model.devices import configure_device
from features.store import DEFAULT_TTL_SECONDS, FeatureView, ShardSpec, ViewLease, ensure_store
from pipelines.extract_args import EXIT_ROW_FAILURES, build_parser, list_views_text
from pipelines.extract_close import (
    close_run,
    record_takeovers,
    still_held,
    store_retries,
    worker_retries,
)
from pipelines.progress import CommitProgress, format_summary
from pipelines.runners import (
    RunnerSettings,
    check_paths_reachable,
    runner_entry,
    runner_environment,
    runner_options,
    settings_from_args,
)
from pipelines.worker_env import WorkerEnvironment, worker_environment
from schemas.errors import (
    ConfigError,
    LeaseLostError,
    MLSPError,
    PipelineError,
    StoreUnavailableError,
)
from schemas.view_spec import InputPolicy

__all__ = ["EXIT_ROW_FAILURES", "build_parser", "list_views_text", "main", "run"]

LOGGER = logging.getLogger(__name__)


def _beam_arguments(parser: argparse.ArgumentParser, beam_args: list[str]) -> list[str]:
    """Unknown flags go to Beam; a stray positional is a mistake, named by argparse."""
    stray = [
        arg
        for position, arg in enumerate(beam_args)
        if not arg.startswith("--")
        and (
            position == 0
            or not beam_args[position - 1].startswith("--")
            or "=" in beam_args[position - 1]
        )
    ]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    return beam_args


def _input_policy(max_side: int | None) -> InputPolicy:
    if max_side is None:
        return InputPolicy()
    try:
        return InputPolicy(kind="max_side", max_side=max_side)
    except ConfigError as error:
        raise ConfigError(f"--max-side {max_side}: {error}") from None


def _build_pipeline(
    runner_name: str,
    beam_args: list[str],
    planned: list[tuple[ShardSpec, tuple[str, ...]]],
    config: ExtractionConfig,
) -> Any:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.beam_extract import build_extract_pipeline

    options = PipelineOptions(beam_args, save_main_session=False)
    pipeline = beam.Pipeline(runner=runner_entry(runner_name).build(), options=options)
    shards = [shard for shard, _ in planned]
    build_extract_pipeline(
        pipeline, shards, config, {shard.index: names for shard, names in planned}
    )
    return pipeline


def _run_pipeline(
    settings: RunnerSettings,
    beam_args: list[str],
    planned: list[tuple[ShardSpec, tuple[str, ...]]],
    config: ExtractionConfig,
) -> dict[str, Any]:
    """Run the extraction graph; returns the Beam metrics the runner reported."""
    from pipelines.beam_extract import pipeline_metrics

    with runner_environment(settings) as runner_options:
        pipeline = _build_pipeline(settings.runner, [*runner_options, *beam_args], planned, config)
        try:
            result = pipeline.run()
            result.wait_until_finish()
            return pipeline_metrics(result, settings.runner)
        except Exception as error:  # Beam wraps worker errors in runner-specific types
            _reraise_job_error(error)
            raise PipelineError(
                f"pipeline failed on runner {settings.runner!r}: {error}. Committed "
                "shards are kept; re-run the same command to resume."
            ) from error


# Job errors a worker raises that must reach the user as their own one line (exit code kept).
_WORKER_JOB_ERRORS: tuple[type[MLSPError], ...] = (LeaseLostError, StoreUnavailableError)


def _reraise_job_error(error: BaseException) -> None:
    """Raise a lost lease or an exhausted store found in a runner's wrapped worker error.

    In-process runners chain the worker's exception; others only carry its text, in which the
    one-line message follows the exception's class name.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _WORKER_JOB_ERRORS):
            raise type(current)(str(current).splitlines()[0]) from error
        current = current.__cause__ or current.__context__
    text = str(error)
    for kind in _WORKER_JOB_ERRORS:
        marker = f"{kind.__name__}: "
        if marker in text:
            raise kind(text.split(marker, 1)[1].splitlines()[0].strip()) from error


def _dry_run(
    args: argparse.Namespace,
    settings: RunnerSettings,
    beam_args: list[str],
    environment: WorkerEnvironment,
) -> int:
    """Validate options and print them with the graph; reads nothing remote, writes nothing."""
    from apache_beam.options.pipeline_options import PipelineOptions

    all_options = [*runner_options(settings), *beam_args]
    config = ExtractionConfig(
        store=args.store,
        views=tuple(_view_names(args)),
        run_id="dry-run",
        device=environment.device,
    )
    pipeline = _build_pipeline("direct", [], [], config)  # the graph only; never run
    labels = [node.full_label for node in pipeline._current_transform().parts]
    shown = PipelineOptions(all_options).get_all_options(
        drop_default=True, retain_unknown_options=True
    )
    print(f"dry run: runner {settings.runner} ({runner_entry(settings.runner).beam_name})")
    print(
        "beam options:\n" + "\n".join(f"  {key} = {value}" for key, value in sorted(shown.items()))
    )
    print("worker environment:\n" + "\n".join(environment.lines()))
    print("graph: " + " -> ".join(labels))
    print(
        f"views: {', '.join(_view_names(args))}; manifest {args.manifest}; store {args.store}; "
        "nothing submitted"
    )
    return 0


def _view_names(args: argparse.Namespace) -> list[str]:
    """Store names of every requested view: --view (renamed by --view-name), then --view-spec."""
    names = store_names(args.view or [], args.view_name or [])
    return names + [spec.name for spec in args.view_spec or []]


def _prepare(args: argparse.Namespace, leases: list[ViewLease]) -> list[FeatureView]:
    names = args.view_name or []
    specs = resolve_specs(
        args.view or [],
        args.weights,
        _input_policy(args.max_side),
        variants=parse_variants(args.variants),
        compute_dtype=args.precision,
        names=names,
        custom=args.view_spec or [],
    )
    allocation = allocate_rows(read_manifest(args.manifest))
    return prepare_views(
        args.store, specs, allocation, args.shard_size, args.format, args.compression, leases=leases
    )


def _execute(
    args: argparse.Namespace,
    settings: RunnerSettings,
    beam_args: list[str],
    views: list[FeatureView],
    run_id: str,
    leases: list[ViewLease],
) -> dict[str, Any]:
    takeovers = record_takeovers(args.store, leases, run_id)
    planned = plan_shards(views)
    shards = [shard for shard, _ in planned]
    LOGGER.info(
        "%d of %d shards to extract for %s",
        len(shards),
        len(views[0].shards()),
        [view.name for view in views],
    )
    by_path = {lease.view_path: lease for lease in leases}
    config = ExtractionConfig(
        store=args.store,
        views=tuple(view.name for view in views),
        run_id=run_id,
        max_pixels=args.max_pixels,
        max_batch_pixels=args.max_batch_pixels,
        decode_threads=args.decode_threads,
        device=args.device,
        prefetch_batches=args.prefetch_batches,
        fences={view.name: by_path[view.path].fence_settings() for view in views},
        store_retries=retries.policy().to_dict(),
    )
    started = time.perf_counter()
    outcome = "completed"
    metrics: dict[str, Any] = {"supported": False, "reason": "no shard to extract"}
    try:
        if shards:
            with CommitProgress(views[0], shards):
                metrics = _run_pipeline(settings, beam_args, planned, config)
    except BaseException:
        outcome = "failed"
        raise
    finally:
        if still_held(leases, outcome):
            seconds = time.perf_counter() - started
            summary = close_run(views, by_path, run_id, outcome, seconds, settings.runner)
            summary.update(
                store_retries_workers=(workers := worker_retries(summary, run_id)),
                store_retries=store_retries(args.counted_before, workers),
                device_requested=args.device_requested,
                device_workers=args.device,
                runner_settings=settings.to_dict(),
                beam_args=beam_args,
                lease_takeovers=takeovers,
                beam_metrics=metrics,
            )
            for view in views:
                view.write_run_summary(run_id, summary)
    return summary


def _check_environment(
    args: argparse.Namespace, settings: RunnerSettings, beam_args: list[str]
) -> WorkerEnvironment:
    """Refuse a run whose workers could not do what is asked, before anything is written."""
    environment = worker_environment(settings, beam_args, args.device)
    args.device_requested, args.device = args.device, environment.device
    if not runner_entry(settings.runner).remote_workers and args.device in ("gpu", "npu"):
        configure_device(args.device)  # local workers share this machine: fail here, not there
    return environment


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if not args.view and not args.view_spec:
        parser.error("one of --view or --view-spec is required (see --list-views)")
    if args.dry_run:
        refuse_unused(
            parser,
            {
                "--summary-json": args.summary_json,
                "--break-lease": args.break_lease,
                "--lease-ttl": args.lease_ttl,
                "--store-retries": args.store_retries,
                "--fail-on-errors": args.fail_on_errors,
            },
            "with --dry-run",
            "a dry run takes no lease, writes nothing and extracts no row",
        )
    configure_logging(args.verbose)
    beam_args = _beam_arguments(parser, unknown)
    settings = settings_from_args(args)
    check_paths_reachable(settings, manifest=args.manifest, store=args.store)
    environment = _check_environment(args, settings, beam_args)
    if args.dry_run:
        return _dry_run(args, settings, beam_args, environment)
    # Cheap checks of the paths before the lease and the model (building it takes seconds).
    preflight.check_input_file(args.manifest, "--manifest")
    preflight.check_writable_folder(args.store, "--store")
    run_id = (
        datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    )
    # Leases first: nothing is created, removed or even modelled before this run holds them.
    view_paths = [files.join(args.store, name) for name in _view_names(args)]
    ensure_store(args.store)
    if args.store_retries is not None:
        retries.configure(args.store_retries)
    args.counted_before = retries.COUNTERS.snapshot()
    ttl = args.lease_ttl or DEFAULT_TTL_SECONDS
    with ViewLease.acquire_all(view_paths, run_id, args.break_lease, ttl) as leases:
        views = _prepare(args, leases)
        summary = _execute(args, settings, beam_args, views, run_id, leases)
    # Again now that the leases are released: the printed and --summary-json summaries count
    # every request of the run (the view's run history was written under the lease).
    summary["store_retries"] = store_retries(
        args.counted_before, summary.pop("store_retries_workers")
    )
    if args.summary_json:
        files.atomic_write_text(args.summary_json, json.dumps(summary, indent=2))
    print(format_summary(summary))
    failed = sum(count for status, count in summary["status_counts"].items() if status != "ok")
    return EXIT_ROW_FAILURES if args.fail_on_errors and failed else 0


run, main = cli_entry_points(_main)


if __name__ == "__main__":
    main()
