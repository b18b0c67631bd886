"""CLI: fetch a dataset's images (with retries and resume) into DEST and write its manifest."""

from __future__ import annotations

import argparse
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm

from features import files, preflight
from features.cli import (
    add_common_arguments,
    cli_entry_points,
    configure_logging,
    positive_int,
    refuse_unused,
)
from features.download import credentials
from features.download.fetch import HTTP_SCHEMES, FetchConfig, scheme_of
from features.download.items import (
    IMAGES_DIR,
    STATUS_FILE,
    DownloadItem,
    plan,
    process_shard,
    read_status,
    shards_of,
    status_table,
)
from features.download.manifest import write_manifest as write_manifest_file
from features.download.manifest_entries import ManifestEntries
from features.download.secrets import redact_url
from features.download.sources import SOURCES, SourceRequest
from pipelines.runners import RUNNERS
from pipelines.stage_argv import DOWNLOAD_DATASET_FLAGS
from schemas.labels import SUCCESS_STATUSES

LOGGER = logging.getLogger(__name__)
LOCAL_RUNNER = "local"
MANIFEST_FILE = "manifest.parquet"
EXIT_ITEM_FAILURES = 3  # as pipelines.extract --fail-on-errors
DRY_RUN_ITEMS = 5  # items and hosts a dry run names
DEFAULT_SHARD_SIZE = 256
FLAG_DESTS = {"--list": "list_uri", "--split-file": "split_file", "--sha256": "sha256"}


def non_negative_int(name: str) -> Callable[[str], int]:
    """argparse type for integers >= 0 whose error names the flag."""

    def parse(text: str) -> int:
        if not text.isdigit():
            raise argparse.ArgumentTypeError(f"{name} must be an integer >= 0, got {text!r}")
        return int(text)

    return parse


def positive_float(name: str) -> Callable[[str], float]:
    """argparse type for numbers > 0 whose error names the flag."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {value}")
        return value

    return parse


def fraction(name: str) -> Callable[[str], float]:
    """argparse type for numbers in [0, 1] whose error names the flag."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"{name} must be in [0, 1], got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the download CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.download",
        description="Download a dataset's images with retries and resume; write the status "
                    "table DEST/downloads.parquet, raw label files DEST/raw/ and "
                    "DEST/manifest.parquet.")
    parser.add_argument("--dataset", required=True, choices=sorted(SOURCES), help="dataset")
    parser.add_argument("--dest", required=True, type=Path, help="output folder")
    parser.add_argument("--source", required=True,
                        help="image source: URL template with {image_id}, URL prefix, folder, "
                             "comma-separated archives (zip, tar, 7z; a split 7z by any part, e.g. "
                             "AVA.7z.001); for scut-fbp5500 the release zip")
    parser.add_argument("--list", dest="list_uri",
                        help="AVA.txt (ava) or CSV image_id,score[,split][,uri][,sha256] (folder)")
    parser.add_argument("--split-file", action="append", default=[],
                        help="official split list, e.g. generic_test.jpgl (repeatable)")
    parser.add_argument("--sha256", help="expected sha256 of the scut-fbp5500 zip")
    parser.add_argument("--workers", type=positive_int("--workers"), default=16,
                        help="concurrent fetches (default 16)")
    parser.add_argument("--retries", type=non_negative_int("--retries"), default=3,
                        help="retries of transient failures (default 3)")
    parser.add_argument("--timeout", type=positive_float("--timeout"), default=20.0,
                        help="seconds per socket operation (default 20)")
    parser.add_argument("--deadline", type=positive_float("--deadline"), default=120.0,
                        help="seconds one attempt may take in all (default 120)")
    parser.add_argument("--backoff", type=positive_float("--backoff"), default=0.5,
                        help="base backoff delay in seconds (default 0.5)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="only re-fetch the items whose previous status was a failure")
    parser.add_argument("--runner", choices=[LOCAL_RUNNER, *RUNNERS], default=LOCAL_RUNNER,
                        help="local thread pool (default) or a Beam runner")
    parser.add_argument("--shard-size", type=positive_int("--shard-size"), default=None,
                        help=f"items per Beam work unit (default {DEFAULT_SHARD_SIZE}; "
                             "not with --runner local)")
    parser.add_argument("--fail-on-errors", action="store_true",
                        help=f"exit {EXIT_ITEM_FAILURES} when any item's status is a failure")
    parser.add_argument("--max-failed-fraction", type=fraction("--max-failed-fraction"),
                        help=f"exit {EXIT_ITEM_FAILURES} when more than this fraction of the "
                             "items failed (e.g. 0.05)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the items and print the plan (URLs redacted, where each "
                             "host's credentials come from); fetch no image, write no status "
                             "table or manifest")
    add_common_arguments(parser)
    return parser


def run_local(shards: Sequence[Sequence[DownloadItem]], dest: Path, config: FetchConfig,
              workers: int, options: Sequence[str] = ()) -> list[dict[str, Any]]:
    """All shards in this process on one bounded thread pool, with a progress bar."""
    items = [item for shard in shards for item in shard]
    lock = threading.Lock()
    with tqdm(total=len(items), unit="img", desc="download", disable=None) as bar:
        def advance(_: dict[str, Any]) -> None:
            with lock:
                bar.update(1)

        return process_shard(items, dest / IMAGES_DIR, config, workers, on_done=advance)


def _beam(runner: str) -> Callable[..., list[dict[str, Any]]]:
    def execute(shards: Sequence[Sequence[DownloadItem]], dest: Path, config: FetchConfig,
                workers: int, options: Sequence[str] = ()) -> list[dict[str, Any]]:
        from pipelines.beam_download import run_beam

        return run_beam(runner, shards, dest, config, workers, options)

    return execute


EXECUTORS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    LOCAL_RUNNER: run_local, **{name: _beam(name) for name in RUNNERS}}


def write_manifest(dest: Path, dataset: str, items: Sequence[DownloadItem],
                   records: Sequence[dict[str, Any]]) -> int:
    """Manifest (skeleton schema) of every item whose file is on disk and verified."""
    good = {row["image_id"] for row in records if row["status"] in SUCCESS_STATUSES}
    # Compact entries, written a chunk at a time: a dataset's worth of rows never sits in memory.
    entries = ManifestEntries.from_rows((item.image_id, str(dest / IMAGES_DIR / item.filename),
                                         item.split) for item in items if item.image_id in good)
    return write_manifest_file(entries, dataset, str(dest / MANIFEST_FILE)).rows


def failed_count(records: Sequence[dict[str, Any]]) -> int:
    """Items whose status is a failure."""
    return sum(1 for row in records if row["status"] not in SUCCESS_STATUSES)


def summary(records: Sequence[dict[str, Any]], fetched: int, dest: Path, rows: int) -> str:
    """Final summary: item counts, counts by status, a few failures."""
    counts = Counter(row["status"] for row in records)
    failed = failed_count(records)
    lines = [f"download: {len(records)} item(s): {len(records) - failed} ok, {failed} failed; "
             f"{fetched} processed this run; {rows} image(s) in {dest / MANIFEST_FILE}; "
             f"status table {dest / STATUS_FILE}"]
    lines += [f"  {status:<18} {count:>8}" for status, count in sorted(counts.items())]
    failures = [row for row in records if row["status"] not in SUCCESS_STATUSES]
    lines += [f"  ! {row['image_id']}: {row['status']} ({row['error']})" for row in failures[:10]]
    if failures:
        lines.append("  re-run with --retry-failed to fetch only the failures")
    return "\n".join(lines)


def dry_run_plan(args: argparse.Namespace, items: Sequence[DownloadItem],
                 todo: Sequence[DownloadItem], kept: Sequence[dict[str, Any]]) -> str:
    """What a run would fetch, with URLs redacted and the origin (never the value) of each
    host's credentials."""
    lines = [f"dry run: {args.dataset} from {redact_url(args.source)} into {args.dest} "
             f"(runner {args.runner}): {len(items)} item(s) listed, {len(todo)} to fetch, "
             f"{len(kept)} kept from the previous run"]
    lines += [f"  {item.image_id}: {redact_url(item.uri)}" for item in todo[:DRY_RUN_ITEMS]]
    if len(todo) > DRY_RUN_ITEMS:
        lines.append(f"  ... and {len(todo) - DRY_RUN_ITEMS} more")
    hosts: dict[str, str] = {}
    for item in todo:
        if scheme_of(item.uri) in HTTP_SCHEMES and len(hosts) < DRY_RUN_ITEMS:
            auth = credentials.resolve(item.uri)
            hosts.setdefault(urlsplit(auth.url).netloc, auth.origin)
    lines += [f"  credentials for {host}: {origin}" for host, origin in hosts.items()]
    return "\n".join(lines)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, beam_options = parser.parse_known_args(argv)
    if beam_options and args.runner == LOCAL_RUNNER:
        parser.error(f"unrecognized arguments: {' '.join(beam_options)}")
    _refuse_unused_flags(parser, args)
    configure_logging(args.verbose)
    credentials.check_header_environment()
    config = FetchConfig(timeout=args.timeout, deadline=args.deadline, retries=args.retries,
                         backoff=args.backoff)
    request = SourceRequest(args.dest, args.source, args.list_uri, tuple(args.split_file),
                            args.sha256, config)
    preflight.check_writable_folder(str(args.dest), "--dest")
    items = SOURCES[args.dataset](request)
    todo, kept = plan(items, read_status(args.dest), args.retry_failed)
    LOGGER.info("%d item(s) listed, %d to process, %d kept from the previous run",
                len(items), len(todo), len(kept))
    if args.dry_run:
        print(dry_run_plan(args, items, todo, kept))
        return 0
    shards = shards_of(todo, args.shard_size or DEFAULT_SHARD_SIZE)
    records = EXECUTORS[args.runner](shards, args.dest, config, args.workers, beam_options)
    all_records = kept + records
    files.atomic_write_parquet(str(args.dest / STATUS_FILE), status_table(all_records))
    rows = write_manifest(args.dest, args.dataset, items, all_records)
    print(summary(all_records, len(records), args.dest, rows))
    return _exit_code(args, all_records)


def _refuse_unused_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 on a flag the chosen dataset or runner would ignore."""
    for flag, datasets in DOWNLOAD_DATASET_FLAGS.items():
        if args.dataset not in datasets:
            refuse_unused(parser, {flag: getattr(args, FLAG_DESTS[flag])},
                          f"with --dataset {args.dataset}",
                          f"only --dataset {' or '.join(sorted(datasets))} reads it")
    if args.runner == LOCAL_RUNNER:
        refuse_unused(parser, {"--shard-size": args.shard_size}, f"with --runner {LOCAL_RUNNER}",
                      "the local runner fetches every item from one pool; it sizes Beam work units")


def _exit_code(args: argparse.Namespace, records: Sequence[dict[str, Any]]) -> int:
    """EXIT_ITEM_FAILURES when --fail-on-errors or --max-failed-fraction is violated, else 0."""
    failed, items = failed_count(records), len(records)
    if args.fail_on_errors and failed:
        print(f"download: {failed} of {items} item(s) failed (--fail-on-errors)")
        return EXIT_ITEM_FAILURES
    limit = args.max_failed_fraction
    if limit is not None and failed > limit * items:
        print(f"download: {failed} of {items} item(s) failed, above --max-failed-fraction {limit}")
        return EXIT_ITEM_FAILURES
    return 0


run, main = cli_entry_points(_main)


if __name__ == "__main__":
    main()
