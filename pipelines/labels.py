"""CLI: build a clean, versioned label table (schemas.labels) from a dataset's raw label files."""

from __future__ import annotations

import argparse
import functools
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa

from features import files, preflight
from features.cli import (
    add_common_arguments,
    cli_entry_points,
    configure_logging,
    refuse_unused,
)
from features.labels.ava_labels import AvaLabels
from features.labels.ava_text import DEFAULT_MAX_MALFORMED_SHARE
from features.labels.builders import LABEL_BUILDERS, LabelResult, read_ava_labels
from features.labels.engines import AUTO, DEFAULT_MEMORY_BUDGET, LABEL_ENGINES, EngineOptions
from features.labels.manifest_columns import read_manifest_columns
from features.labels.parsing import LabelReport, SplitConfig
from features.parquet_writes import atomic_write_parquet_batches
from schemas.labels import LABELS_SCHEMA, DropReason

LOGGER = logging.getLogger(__name__)
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MANIFEST_COLUMNS = ("image_id", "width")  # all drop_by_manifest and the AVA drops look at


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


def byte_size(name: str) -> Callable[[str], int]:
    """argparse type for a size in bytes ('1GiB', '512M', '4096') whose error names the flag."""

    def parse(text: str) -> int:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
        if match is None:
            raise argparse.ArgumentTypeError(f"{name} must be a size such as 512MiB, got {text!r}")
        value = int(float(match[1]) * SIZE_UNITS[match[2].upper()])
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1 byte, got {text!r}")
        return value

    return parse


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """--engine, --memory-budget and --max-malformed-share (how AVA.txt is read)."""
    parser.add_argument(
        "--engine",
        choices=(AUTO, *sorted(LABEL_ENGINES)),
        default=AUTO,
        help="AVA.txt reader; auto = dask when --raw is remote or the file is "
        "larger than --memory-budget, else pandas (default auto)",
    )
    parser.add_argument(
        "--memory-budget",
        type=byte_size("--memory-budget"),
        default=None,
        help="input size above which --engine auto uses dask (default 1GiB; ava only)",
    )
    parser.add_argument(
        "--max-malformed-share",
        type=fraction("--max-malformed-share"),
        default=None,
        help="malformed AVA.txt lines (wrong field count, non-numeric or negative count) are "
        "dropped with a warning naming file and line, and the run goes on, while they are at "
        "most this share of its lines; above it (or if every line is) the file is probably "
        "not an AVA.txt: exit 1, nothing written. In [0, 1); 0 = fail on any "
        f"(default {DEFAULT_MAX_MALFORMED_SHARE:g}; ava only)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the labels CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.labels",
        description="Turn a dataset's official label files into a clean, versioned label table.",
    )
    parser.add_argument(
        "--dataset", required=True, choices=sorted(LABEL_BUILDERS), help="dataset format"
    )
    parser.add_argument(
        "--raw",
        required=True,
        help="folder or fsspec URL with the raw label files (download's DEST/raw)",
    )
    parser.add_argument("--manifest", help="manifest.parquet; ids missing from it are dropped")
    parser.add_argument("--out", required=True, help="output labels.parquet (path or URL)")
    parser.add_argument("--seed", type=int, default=0, help="split hash seed (default 0)")
    parser.add_argument(
        "--test-fraction",
        type=fraction("--test-fraction"),
        default=0.1,
        help="test share when no official test list exists (default 0.1)",
    )
    parser.add_argument(
        "--val-fraction",
        type=fraction("--val-fraction"),
        default=0.1,
        help="share of training ids carved out as validation (default 0.1)",
    )
    _add_engine_arguments(parser)
    add_common_arguments(parser)
    return parser


def format_report(report: LabelReport, out: str, splits: Counter[str], version: str) -> str:
    """Summary lines: kept rows, splits, drops by reason with examples, notes."""
    lines = [
        f"labels: {report.kept} rows -> {out} (label_version {version})",
        f"  splits: {dict(sorted(splits.items()))}",
    ]
    if not report.dropped:
        lines.append("  dropped: none")
    for reason, count in sorted(report.dropped.items()):
        if reason == DropReason.MALFORMED_LINE:  # 'file:line: what is wrong', one a line
            lines.append(f"  dropped {reason:<20} {count:>8}  e.g.")
            lines += [f"    {example}" for example in report.examples[reason]]
            continue
        examples = ", ".join(report.examples[reason])
        lines.append(f"  dropped {reason:<20} {count:>8}  e.g. {examples}")
    lines += [f"  note: {note}" for note in report.notes]
    return "\n".join(lines)


def _builder(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> Callable[[pa.Table | None, SplitConfig], LabelResult | AvaLabels]:
    """The dataset's builder bound to --raw (and to the engine options for AVA); bad flags exit 2."""
    local = Path(files.native(args.raw))
    if files.is_local(args.raw) and not local.is_dir():
        parser.error(f"argument --raw: not a directory: {args.raw}")
    if args.dataset == "ava":
        if args.engine != AUTO:
            refuse_unused(
                parser,
                {"--memory-budget": args.memory_budget},
                f"with --engine {args.engine}",
                "only --engine auto chooses by size",
            )
        raw: Path | str = local if files.is_local(args.raw) else args.raw
        budget = args.memory_budget or DEFAULT_MEMORY_BUDGET
        share = args.max_malformed_share
        return functools.partial(
            read_ava_labels,
            raw,
            options=EngineOptions(args.engine, budget),
            max_malformed_share=DEFAULT_MAX_MALFORMED_SHARE if share is None else share,
        )
    refuse_unused(
        parser,
        {"--memory-budget": args.memory_budget, "--max-malformed-share": args.max_malformed_share},
        f"with --dataset {args.dataset}",
        "only --dataset ava reads AVA.txt (with a choice of engine, dropping malformed lines)",
    )
    if not files.is_local(args.raw):
        parser.error(f"argument --raw: URLs are only supported with --dataset ava: {args.raw}")
    if args.engine != AUTO:  # pandas too: the other datasets have one reader, no choice
        parser.error(f"argument --engine: {args.engine} is only supported with --dataset ava")
    return functools.partial(LABEL_BUILDERS[args.dataset], local)


def _write(out: str, labels: LabelResult | AvaLabels) -> tuple[Counter[str], str]:
    """Write the label table to out; (rows per split, its label_version or '-' when empty)."""
    if isinstance(labels, AvaLabels):  # batch by batch: never the whole table in memory
        atomic_write_parquet_batches(out, LABELS_SCHEMA, labels.batches())
        return labels.split_counts(), labels.version if labels.num_rows else "-"
    files.atomic_write_parquet(out, labels.table)
    table = labels.table
    version = table.column("label_version")[0].as_py() if table.num_rows else "-"
    return Counter(table.column("split").to_pylist()), version


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    builder = _builder(parser, args)
    # The environment before reading any label file (AVA.txt runs to hundreds of MB).
    preflight.check_reachable(args.raw, "--raw")
    if args.manifest:
        preflight.check_input_file(args.manifest, "--manifest")
    preflight.check_output_file(args.out, "--out")
    manifest = read_manifest_columns(args.manifest, MANIFEST_COLUMNS) if args.manifest else None
    config = SplitConfig(args.seed, args.test_fraction, args.val_fraction)
    labels = builder(manifest, config)
    splits, version = _write(args.out, labels)
    print(format_report(labels.report, args.out, splits, version))
    return 0


run, main = cli_entry_points(_main)


if __name__ == "__main__":
    main()
