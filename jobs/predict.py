"""CLI: score raw images with a trained head joined to the backbone that made its view."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence

from features import files, preflight
from features.cli import (
    add_common_arguments,
    cli_entry_points,
    configure_logging,
    positive_int,
    refuse_unused,
)
from features.training.evaluation import load_run, read_run
from features.training.prediction import build_scoring_model, list_images, score_images
from features.training.run_outputs import save_keras_model
from schemas.errors import ConfigError
from schemas.view_spec import FeatureViewSpec

LOGGER = logging.getLogger(__name__)
DEFAULT_BATCH_SIZE = 8


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the prediction job."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.predict",
        description="Score images from raw files: backbone + MLSP pooling + trained head.",
    )
    parser.add_argument("--run", required=True, help="run folder written by jobs.train")
    parser.add_argument("--images", required=True, help="image folder or manifest.parquet")
    parser.add_argument("--out", help="predictions Parquet (image_id, prediction, status, error)")
    parser.add_argument(
        "--batch-size",
        type=positive_int("--batch-size"),
        default=None,
        help=f"same-size images per forward batch (default {DEFAULT_BATCH_SIZE}; needs --out)",
    )
    parser.add_argument(
        "--save-model", metavar="PATH", help="also export the combined model (.keras) for serving"
    )
    add_common_arguments(parser)
    return parser


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 on a missing or unused flag; ConfigError on a bad path."""
    if args.out is None and args.save_model is None:
        parser.error("argument --out: required unless only --save-model is wanted")
    if args.out is None:
        refuse_unused(
            parser, {"--batch-size": args.batch_size}, "without --out", "no image is scored"
        )
    if args.save_model is not None and not args.save_model.endswith(".keras"):
        raise ConfigError(f"--save-model {args.save_model}: the file name must end in .keras")
    if args.out is not None:
        preflight.check_reachable(args.images, "--images")
        if not files.exists(args.images):
            raise ConfigError(f"--images {args.images}: no such folder or manifest")


def _check_environment(args: argparse.Namespace) -> None:
    """The run and the outputs' folders, before the head and the backbone are loaded."""
    preflight.check_reachable(args.run, "--run")
    read_run(args.run)  # a missing run.json stays the argument error (exit 2) it was
    for path, flag in ((args.out, "--out"), (args.save_model, "--save-model")):
        if path is not None:
            preflight.check_output_file(path, flag)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    _check_arguments(parser, args)
    _check_environment(args)
    items = list_images(args.images) if args.out is not None else []  # before the head loads
    trained = load_run(args.run)
    spec = FeatureViewSpec.from_dict(trained.record["view_spec"])
    started = time.perf_counter()
    model = build_scoring_model(spec, trained.model)
    if args.save_model is not None:
        save_keras_model(model, args.save_model)
        print(f"combined model ({model.count_params():,} parameters) -> {args.save_model}")
    if args.out is None:
        return 0
    from tqdm import tqdm

    with tqdm(total=len(items), unit="img", desc="predict", file=sys.stderr) as bar:
        table = score_images(model, spec, items, args.batch_size or DEFAULT_BATCH_SIZE, bar.update)
    files.atomic_write_parquet(args.out, table)
    counts = Counter(table.column("status").to_pylist())
    print(
        f"scored {counts.get('ok', 0)} of {table.num_rows} images in "
        f"{time.perf_counter() - started:.1f}s with {spec.name} ({spec.weights_id}) + "
        f"{trained.config.head} head; statuses {dict(counts)} -> {args.out}"
    )
    return 0


run, main = cli_entry_points(_main)


if __name__ == "__main__":
    main()
