"""CLI: generate a learnable sample dataset (JPEGs + AVA-format votes), optionally broken files."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from features import preflight
from features.cli import (
    add_common_arguments,
    cli_entry_points,
    configure_logging,
    local_path,
    positive_int,
)
from pipelines.sample_datasets import write_extra_datasets
from pipelines.sample_images import AVA_LABEL_FILE, broken_files, generate_images, write_sample

# The generators are re-exported: callers (tests, conftest) use `pipelines.sample.write_sample`.
__all__ = [
    "AVA_LABEL_FILE",
    "broken_files",
    "build_parser",
    "generate_images",
    "main",
    "run",
    "write_sample",
]


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the sample CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.sample",
        description="Generate a small learnable AVA-format sample.",
    )
    parser.add_argument("--out", required=True, type=local_path("--out"), help="output folder")
    parser.add_argument("--n", type=positive_int("--n"), default=24, help="number of good images")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--min-side", type=positive_int("--min-side"), default=80, help="smallest side, px"
    )
    parser.add_argument(
        "--max-side", type=positive_int("--max-side"), default=320, help="largest side, px"
    )
    parser.add_argument(
        "--broken",
        action="store_true",
        help="also write broken files (empty, truncated, garbage, too small, bomb)",
    )
    parser.add_argument(
        "--datasets",
        action="store_true",
        help="also write AVA .jpgl splits, a SCUT-FBP5500 zip and a scale-shifted variant",
    )
    add_common_arguments(parser)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if args.min_side > args.max_side:
        parser.error("argument --min-side: must not exceed --max-side")
    preflight.check_writable_folder(str(args.out), "--out")
    images_dir = write_sample(
        args.out, args.n, args.seed, args.broken, args.min_side, args.max_side
    )
    print(
        f"sample: {args.n} images{' + 5 broken files' if args.broken else ''} in {images_dir}, "
        f"labels in {args.out / AVA_LABEL_FILE}"
    )
    if args.datasets:
        print(f"sample: {write_extra_datasets(args.out, args.seed)}")
    return 0


run, main = cli_entry_points(_main)

if __name__ == "__main__":
    main()
