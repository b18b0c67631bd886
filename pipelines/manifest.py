"""CLI: build an image manifest Parquet file from a folder (and optional label CSV)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from features import preflight
from features.cli import add_common_arguments, cli_entry_points, configure_logging, positive_int
from features.download.manifest import write_manifest
from features.download.manifest_entries import csv_entries, folder_entries

LOGGER = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the manifest CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.manifest",
        description="Index images (bytes, size, sha256, stable ids) into a manifest Parquet file.",
    )
    parser.add_argument("--images", required=True, type=Path, help="folder of images (recursive)")
    parser.add_argument(
        "--labels",
        type=Path,
        help="CSV with columns filename[,image_id][,split]; lists the images to index",
    )
    parser.add_argument("--dataset", help="dataset name (default: the folder's name)")
    parser.add_argument("--out", required=True, help="output manifest.parquet (path or URL)")
    parser.add_argument(
        "--threads",
        type=positive_int("--threads"),
        default=4,
        help="files hashed in parallel (default 4)",
    )
    add_common_arguments(parser)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    if args.labels is not None and not args.labels.is_file():
        build_parser().error(f"argument --labels: no such file {args.labels}")
    # Before hashing every image: a manifest that cannot be written is known at once.
    preflight.check_input_folder(str(args.images), "--images")
    preflight.check_output_file(args.out, "--out")
    entries = csv_entries(args.images, args.labels) if args.labels else folder_entries(args.images)
    # Described and written a chunk at a time: the counts are gathered as the batches pass.
    summary = write_manifest(
        entries, args.dataset or args.images.resolve().name, args.out, args.threads
    )
    print(
        f"manifest: {summary.rows} images, {summary.total_bytes / 1e6:.1f} MB,"
        f" {summary.unreadable} with unreadable headers, splits {dict(summary.splits)}"
        f" -> {args.out}"
    )
    return 0


run, main = cli_entry_points(_main)


if __name__ == "__main__":
    main()
