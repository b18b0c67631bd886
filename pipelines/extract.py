"""CLI: extract MLSP feature views from a manifest into a store, on any Beam runner."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

from features import files, retries
from features.cli import (
    add_common_arguments,
    cli_entry_points,
    configure_logging,
    positive_int,
)
from features.download.manifest import read_manifest
from features.extraction.feed import DEFAULT_PREFETCH_BATCHES
from features.extraction.images import DEFAULT_MAX_PIXELS
from features.extraction.planning import (
    allocate_rows,
    pending_shards,
    prepare_views,
    resolve_specs,
    store_names,
    summarize,
)
from features.extraction.shard import SHARDS_IN_THIS_PROCESS, ExtractionConfig
from features.extraction.variants import parse_variants
from features.model.devices import BATCH_PIXELS_BY_KIND, DEVICES, configure_device
from features.store import (
    BACKENDS,
    COMPRESSIONS,
    DEFAULT_TTL_SECONDS,
    FeatureView,
    ShardSpec,
    ViewLease,
    ensure_store,
    publish_snapshot,
)
from pipelines.progress import CommitProgress, format_summary
from pipelines.runners import (
    RunnerSettings,
    add_runner_arguments,
    check_paths_reachable,
    runner_entry,
    runner_environment,
    runner_options,
    settings_from_args,
)
from pipelines.worker_env import WorkerEnvironment, worker_environment
from schemas.backbones import BACKBONE_FACTS
from schemas.errors import (
    ConfigError,
    LeaseLostError,
    MLSPError,
    PipelineError,
    StoreError,
    StoreUnavailableError,
)
from schemas.view_spec import COMPUTE_DTYPES, PREDEFINED_VIEWS, FeatureViewSpec, InputPolicy
from schemas.view_syntax import POOLING_SYNTAX, parse_view_spec, pooling_text

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
        choices=sorted(PREDEFINED_VIEWS),
        help="predefined view to fill (see --list-views); repeat to fill several: views of one "
        "backbone share a forward pass, each backbone loads once per worker",
    )
    parser.add_argument(
        "--view-spec",
        action="append",
        type=_view_spec_argument,
        help="custom view 'backbone=B,pooling=P,name=N[,taps=T1,T2]'; backbones: "
        f"{', '.join(BACKBONE_FACTS)}; poolings: {POOLING_SYNTAX}",
    )
    parser.add_argument(
        "--list-views",
        action=_ListViews,
        help="print the predefined views with their feature shapes and exit",
    )
    parser.add_argument(
        "--view-name",
        action="append",
        help="store the i-th --view under this name (needed for a second spec)",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (Keras cache), a .h5 weights file, or 'random:SEED'",
    )
    parser.add_argument(
        "--variants",
        default="orig",
        help="orig (default), train8, tta18, or names like 0_0_0,1_1_1",
    )
    parser.add_argument(
        "--precision",
        default="float32",
        choices=COMPUTE_DTYPES,
        help="Keras compute precision (recorded in the spec)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=sorted(DEVICES),
        help="compute device; gpu/npu fail if absent, never falling back to CPU",
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
        default=None,
        help="pixel cap of one forward batch of same-size images, variants included "
        f"(default by device: {', '.join(f'{k} {v:,}' for k, v in BATCH_PIXELS_BY_KIND.items())})",
    )
    parser.add_argument(
        "--decode-threads",
        type=positive_int("--decode-threads"),
        default=2,
        help="threads reading and decoding images per worker",
    )
    parser.add_argument(
        "--prefetch-batches",
        type=positive_int("--prefetch-batches"),
        default=DEFAULT_PREFETCH_BATCHES,
        help="decoded batches kept ready ahead of the model (bounds decode memory; default 2)",
    )
    parser.add_argument(
        "--format",
        default="zarr",
        choices=sorted(BACKENDS),
        help="features array format of a new view (default zarr)",
    )
    parser.add_argument(
        "--compression",
        default=None,
        choices=sorted(COMPRESSIONS),
        help="inner-chunk compression of a new view (default lz4; an existing view keeps its "
        "own, and a different value is refused). lz4: decodes about 1.7 GB/s per core; "
        "zstd: 12-19%% smaller, decodes about 0.7 GB/s per core (training reads become "
        "decode-bound); none: plain copies, about 1.3x lz4. HDF5 has no Blosc: zstd and lz4 "
        "both store LZF",
    )
    parser.add_argument(
        "--fail-on-errors",
        action="store_true",
        help=f"exit {EXIT_ROW_FAILURES} when any row has a status other than ok",
    )
    parser.add_argument(
        "--break-lease",
        metavar="RUN_ID",
        help="take the views' writer lease from this run even if it looks alive (an operator's "
        "decision, recorded in the run history); a dead run on this host is replaced anyway",
    )
    parser.add_argument(
        "--lease-ttl",
        type=_positive_seconds("--lease-ttl"),
        default=DEFAULT_TTL_SECONDS,
        help="seconds a writer lease lasts without renewal (renewed every third of it); a "
        f"crashed run on another host is taken over after it (default {DEFAULT_TTL_SECONDS:g})",
    )
    parser.add_argument(
        "--store-retries",
        type=_retry_policy_argument,
        default=None,
        metavar="KEY=VALUE[,...]",
        help="object-store retry policy, e.g. 'max_retries=10,timeout_seconds=180' (the "
        f"defaults; also initial_backoff, max_backoff, multiplier); default: ${retries.POLICY_ENVIRONMENT} "
        "or the defaults. Workers get the same policy",
    )
    parser.add_argument("--summary-json", help="also write the run summary to this file")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and print the Beam options and graph; write nothing",
    )
    add_runner_arguments(parser)
    add_common_arguments(parser)
    return parser


def _positive_seconds(name: str) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number of seconds") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {text}")
        return value

    return parse


def _retry_policy_argument(text: str) -> retries.RetryPolicy:
    try:
        return retries.RetryPolicy.parse(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _view_spec_argument(text: str) -> FeatureViewSpec:
    try:
        return parse_view_spec(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def list_views_text() -> str:
    """One line per predefined view: name, backbone, pooling, minimum side, feature shape."""
    lines = []
    for name, spec in PREDEFINED_VIEWS.items():
        shape = "x".join(str(size) for size in spec.feature_shape)
        lines.append(
            f"{name:<20} {spec.backbone_name:<20} {pooling_text(spec.pooling):<12} "
            f"taps {len(spec.taps):>2}  min side {spec.input_policy.min_side:>3}  "
            f"features {shape} ({spec.head} head)"
        )
    return "\n".join(lines)


class _ListViews(argparse.Action):
    """--list-views: print and exit before the required arguments are checked (like --version)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(list_views_text())
        parser.exit()


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
    runner_name: str, beam_args: list[str], shards: list[ShardSpec], config: ExtractionConfig
) -> Any:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.beam_extract import build_extract_pipeline

    options = PipelineOptions(beam_args, save_main_session=False)
    pipeline = beam.Pipeline(runner=runner_entry(runner_name).build(), options=options)
    build_extract_pipeline(pipeline, shards, config)
    return pipeline


def _run_pipeline(
    settings: RunnerSettings,
    beam_args: list[str],
    shards: list[ShardSpec],
    config: ExtractionConfig,
) -> dict[str, Any]:
    """Run the extraction graph; returns the Beam metrics the runner reported."""
    from pipelines.beam_extract import pipeline_metrics

    with runner_environment(settings) as runner_options:
        pipeline = _build_pipeline(settings.runner, [*runner_options, *beam_args], shards, config)
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
    takeovers = _record_takeovers(args.store, leases, run_id)
    shards = pending_shards(views)
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
                metrics = _run_pipeline(settings, beam_args, shards, config)
    except BaseException:
        outcome = "failed"
        raise
    finally:
        if _still_held(leases, outcome):
            seconds = time.perf_counter() - started
            summary = _close_run(views, by_path, run_id, outcome, seconds, settings.runner)
            summary.update(
                store_retries_workers=(workers := _worker_retries(views[0], run_id)),
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


def _still_held(leases: list[ViewLease], outcome: str) -> bool:
    """Whether this run may still write its views (snapshot, run summary). A lost lease after
    a failed run is logged (the run's own error is raised); after a completed one, raised."""
    try:
        for lease in leases:
            lease.ensure_held()
    except LeaseLostError as error:
        if outcome != "failed":
            raise
        LOGGER.error("%s; nothing more is written to the view", error)
        return False
    return True


def _close_run(
    views: list[FeatureView],
    leases: dict[str, ViewLease],
    run_id: str,
    outcome: str,
    seconds: float,
    runner: str,
) -> dict[str, Any]:
    """Finalize and publish every view (under its lease), then summarize from the markers."""
    for view in views:
        view.finalize()
        _publish(view, run_id, outcome, leases[view.path])
    summary = summarize(views, run_id, seconds, runner)
    summary.update(outcome=outcome)
    return summary


def _worker_retries(view: FeatureView, run_id: str) -> dict[str, int]:
    """What workers in other processes counted (their markers of this run); empty when the
    runner ran them in this process, whose own counters hold them already."""
    totals: Counter[str] = Counter()
    if not SHARDS_IN_THIS_PROCESS:
        for marker in view.committed().values():
            if marker.run_id == run_id:
                totals.update(marker.store_retries)
    return dict(totals)


def store_retries(counted_before: dict[str, int], workers: dict[str, int]) -> dict[str, int]:
    """Object-store retries and settled lost answers of the run, by kind: this process's
    since counted_before, plus the workers' (see _worker_retries)."""
    totals = Counter(retries.counts_since(counted_before))
    totals.update(workers)
    return dict(sorted(totals.items()))


def _record_takeovers(store: str, leases: list[ViewLease], run_id: str) -> list[dict[str, Any]]:
    """Log lease takeovers in the views' run history at once (the summary repeats them)."""
    takeovers = [lease.taken_over for lease in leases if lease.taken_over is not None]
    for lease in leases:
        if lease.taken_over is not None:
            name = lease.view_path.rstrip("/").rsplit("/", 1)[-1]
            record = {"run_id": run_id, "outcome": "started", "lease_takeovers": [lease.taken_over]}
            FeatureView(store, name).write_run_summary(run_id, record)
    return takeovers


def _check_environment(
    args: argparse.Namespace, settings: RunnerSettings, beam_args: list[str]
) -> WorkerEnvironment:
    """Refuse a run whose workers could not do what is asked, before anything is written."""
    environment = worker_environment(settings, beam_args, args.device)
    args.device_requested, args.device = args.device, environment.device
    if not runner_entry(settings.runner).remote_workers and args.device in ("gpu", "npu"):
        configure_device(args.device)  # local workers share this machine: fail here, not there
    return environment


def _publish(view: FeatureView, run_id: str, outcome: str, lease: ViewLease) -> None:
    """Publish the view's snapshot (readers then open O(1) files per lookup). After a failed
    run a publishing error is logged, not raised over the run's own error."""
    try:
        publish_snapshot(view, run_id, lease)
    except StoreError as error:
        if outcome != "failed":
            raise
        LOGGER.warning("view %s: no snapshot published after the failed run: %s", view.name, error)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if not args.view and not args.view_spec:
        parser.error("one of --view or --view-spec is required (see --list-views)")
    configure_logging(args.verbose)
    beam_args = _beam_arguments(parser, unknown)
    settings = settings_from_args(args)
    check_paths_reachable(settings, manifest=args.manifest, store=args.store)
    environment = _check_environment(args, settings, beam_args)
    if args.dry_run:
        return _dry_run(args, settings, beam_args, environment)
    run_id = (
        datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    )
    # Leases first: nothing is created, removed or even modelled before this run holds them.
    view_paths = [files.join(args.store, name) for name in _view_names(args)]
    ensure_store(args.store)
    if args.store_retries is not None:
        retries.configure(args.store_retries)
    args.counted_before = retries.COUNTERS.snapshot()
    with ViewLease.acquire_all(view_paths, run_id, args.break_lease, args.lease_ttl) as leases:
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
