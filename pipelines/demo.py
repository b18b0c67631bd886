"""The main job on the bundled sample, end to end: sample -> manifest -> extract -> query."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from features.cli import add_common_arguments, configure_logging, positive_int, run_cli
from features.weights import IMAGENET_FILE, keras_models_dir

BANNER = "=" * 78


def choose_weights(requested: str | None) -> tuple[str, str | None]:
    """ImageNet weights when cached locally, else random:0 with a loud notice."""
    if requested:
        return requested, None
    if (keras_models_dir() / IMAGENET_FILE).is_file():
        return "imagenet", None
    notice = (
        f"{BANNER}\nNOTICE: ImageNet weights are not cached ({keras_models_dir() / IMAGENET_FILE}).\n"
        "This demo uses RANDOM weights (random:0). The pipeline, store and query are real, but\n"
        "the features are not ImageNet MLSP features. Lineage records weights_id=random:0.\n"
        f"{BANNER}"
    )
    return "random:0", notice


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the demo."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description="Run the main job end to end on a generated sample.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="working folder")
    parser.add_argument("--n", type=positive_int("--n"), default=24, help="good sample images")
    parser.add_argument("--weights", help="weights id (default: imagenet if cached, else random:0)")
    add_common_arguments(parser)
    return parser


def _step(title: str) -> None:
    print(f"\n--- {title} " + "-" * max(0, 70 - len(title)), flush=True)


def _main(argv: Sequence[str] | None) -> int:
    from features import query
    from pipelines import extract, manifest, sample

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    weights, notice = choose_weights(args.weights)
    if notice:
        print(notice, flush=True)
    sample_dir, store = args.out / "sample", str(args.out / "store")
    _step("1. generate the sample (AVA-format votes + a few broken files)")
    code = sample.run(["--out", str(sample_dir), "--n", str(args.n), "--broken"])
    _step("2. build the manifest")
    code = code or manifest.run(
        [
            "--images",
            str(sample_dir / "images"),
            "--dataset",
            "sample",
            "--out",
            str(sample_dir / "manifest.parquet"),
        ]
    )
    _step("3. extract narrow + wide MLSP features (one forward pass per image)")
    code = code or extract.run(
        [
            "--manifest",
            str(sample_dir / "manifest.parquet"),
            "--store",
            store,
            "--view",
            "irnv2_mlsp_narrow",
            "--view",
            "irnv2_mlsp_wide",
            "--weights",
            weights,
            "--shard-size",
            "8",
        ]
    )
    _step("4. query the store as pyarrow tables")
    code = code or query.run(["--store", store])
    code = code or query.run(
        ["--store", store, "--view", "irnv2_mlsp_wide", "--where", "status == 'ok'", "--limit", "5"]
    )
    if notice:
        print(notice)
    print(f"\ndemo {'finished' if code == 0 else 'FAILED'}: store at {store}")
    return code


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    return run_cli(_main, argv)


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
