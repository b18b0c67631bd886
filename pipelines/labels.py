"""CLI: build a clean, versioned label table (schemas.labels) from a dataset's raw label files."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from features.cli import add_common_arguments, configure_logging, run_cli
from features.label_builders import LABEL_BUILDERS
from features.labels import LabelReport, SplitConfig
from features.manifest import read_manifest
from features.store import files

LOGGER = logging.getLogger(__name__)


def fraction(name: str) -> Callable[[str], float]:
    """argparse type for a float in [0, 1) whose error names the flag."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not 0.0 <= value < 1.0:
            raise argparse.ArgumentTypeError(f"{name} must be in [0, 1), got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the labels CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.labels",
        description="Turn a dataset's official label files into a clean, versioned label table.")
    parser.add_argument("--dataset", required=True, choices=sorted(LABEL_BUILDERS),
                        help="dataset format")
    parser.add_argument("--raw", required=True, type=Path,
                        help="folder with the raw label files (download's DEST/raw)")
    parser.add_argument("--manifest", help="manifest.parquet; ids missing from it are dropped")
    parser.add_argument("--out", required=True, help="output labels.parquet (path or URL)")
    parser.add_argument("--seed", type=int, default=0, help="split hash seed (default 0)")
    parser.add_argument("--test-fraction", type=fraction("--test-fraction"), default=0.1,
                        help="test share when no official test list exists (default 0.1)")
    parser.add_argument("--val-fraction", type=fraction("--val-fraction"), default=0.1,
                        help="share of training ids carved out as validation (default 0.1)")
    add_common_arguments(parser)
    return parser


def format_report(report: LabelReport, out: str, splits: Counter[str], version: str) -> str:
    """Summary lines: kept rows, splits, drops by reason with examples, notes."""
    lines = [f"labels: {report.kept} rows -> {out} (label_version {version})",
             f"  splits: {dict(sorted(splits.items()))}"]
    if not report.dropped:
        lines.append("  dropped: none")
    for reason, count in sorted(report.dropped.items()):
        examples = ", ".join(report.examples[reason])
        lines.append(f"  dropped {reason:<20} {count:>8}  e.g. {examples}")
    lines += [f"  note: {note}" for note in report.notes]
    return "\n".join(lines)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if not args.raw.is_dir():
        parser.error(f"argument --raw: not a directory: {args.raw}")
    manifest = read_manifest(args.manifest) if args.manifest else None
    config = SplitConfig(args.seed, args.test_fraction, args.val_fraction)
    result = LABEL_BUILDERS[args.dataset](args.raw, manifest, config)
    files.atomic_write_parquet(args.out, result.table)
    version = result.table.column("label_version")[0].as_py() if result.table.num_rows else "-"
    print(format_report(result.report, args.out, Counter(result.table.column("split").to_pylist()),
                        version))
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    return run_cli(_main, argv)


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
