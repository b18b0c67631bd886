"""CLI: evaluate a trained head on a split (SRCC, PLCC, KRCC, RMSE, MAE, accuracy; --tta)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from features import files, preflight
from features.cli import (
    add_common_arguments,
    cli_entry_points,
    configure_logging,
    refuse_unused,
)
from features.store import FeatureStore, FeatureView
from features.training.evaluation import (
    Evaluation,
    evaluate_split,
    keras_predictor,
    load_run,
    read_run,
)
from features.training.labels import TrainingLabels, load_training_labels
from features.training.metrics import AVA_THRESHOLD, METRIC_SETS
from features.training.run_outputs import scatter_png, write_json
from schemas.errors import ConfigError

LOGGER = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
SCATTER_FILE = "scatter.png"


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the evaluation job."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.evaluate",
        description="Evaluate a trained head on a split of its feature view.",
    )
    parser.add_argument("--run", required=True, help="run folder written by jobs.train")
    parser.add_argument("--split", default="test", help="label split to evaluate (default test)")
    parser.add_argument(
        "--tta", action="store_true", help="average predictions over all stored variants"
    )
    parser.add_argument(
        "--metrics",
        choices=sorted(METRIC_SETS),
        default="ava",
        help="metric set: ava (SRCC/PLCC/KRCC/RMSE/MAE/accuracy) or scut",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"binary-accuracy threshold; score <= threshold is low (default {AVA_THRESHOLD:g}; "
        "not with a metric set without accuracy)",
    )
    parser.add_argument("--labels", help="label file (default: the one the run was trained on)")
    parser.add_argument("--store", help="feature store (default: the run's store)")
    parser.add_argument("--out", help="output folder (default RUN/eval_SPLIT[_tta])")
    add_common_arguments(parser)
    return parser


def _progress() -> Any:
    from tqdm import tqdm

    return tqdm(unit="img", desc="evaluate", file=sys.stderr)


def write_evaluation(out: str, evaluation: Evaluation, context: dict[str, Any]) -> None:
    """predictions.parquet, scatter.png, then metrics.json."""
    files.atomic_write_parquet(files.join(out, PREDICTIONS_FILE), evaluation.predictions_table())
    title = (
        f"{context['split']}{' TTA' if context['tta'] else ''}: SRCC "
        f"{evaluation.report.values.get('srcc', float('nan')):.3f}, n={evaluation.report.count}"
    )
    files.atomic_write_bytes(
        files.join(out, SCATTER_FILE), scatter_png(evaluation.truth, evaluation.prediction, title)
    )
    record = {
        **evaluation.report.to_dict(),
        **context,
        "variants": list(evaluation.variants),
        "skipped": evaluation.skipped,
    }
    write_json(files.join(out, METRICS_FILE), record)


def format_summary(evaluation: Evaluation, out: str, split: str) -> str:
    """Metric table and output paths."""
    lines = [
        f"evaluated {evaluation.report.count} images of split {split!r} "
        f"(variants {list(evaluation.variants)}; skipped {evaluation.skipped})"
    ]
    lines += [f"  {name:<9} {value:8.4f}" for name, value in evaluation.report.values.items()]
    lines += [
        f"  {name}: {files.join(out, name)}"
        for name in (METRICS_FILE, PREDICTIONS_FILE, SCATTER_FILE)
    ]
    return "\n".join(lines)


def _threshold(parser: argparse.ArgumentParser, args: argparse.Namespace) -> float:
    """--threshold, or the default; exit 2 when the metric set has no accuracy to apply it to."""
    if "accuracy" not in METRIC_SETS[args.metrics]:
        refuse_unused(
            parser,
            {"--threshold": args.threshold},
            f"with --metrics {args.metrics}",
            "it reports no binary accuracy, the only metric the threshold sets",
        )
    return AVA_THRESHOLD if args.threshold is None else float(args.threshold)


def _open_inputs(args: argparse.Namespace) -> tuple[FeatureView, TrainingLabels, str]:
    """The run's view and labels and the output folder, each checked before the head (and
    TensorFlow) is loaded: a missing store or an unwritable --out is known in a second."""
    preflight.check_reachable(args.run, "--run")
    _record, config = read_run(args.run)  # a missing run.json stays an argument error (exit 2)
    # The run's own store and labels go by the flags that override them, named in any error.
    store = args.store or config.store
    preflight.check_input_folder(store, "--store")
    view = FeatureStore(store).view(config.view)
    if args.tta and len(view.spec.variants) < 2:
        raise ConfigError(
            f"--tta: view {config.view!r} stores one variant {list(view.spec.variants)}; TTA "
            "averages several (extract with --variants tta18 or train8), or drop --tta"
        )
    preflight.check_reachable(args.labels or config.labels, "--labels")
    labels = load_training_labels(args.labels or config.labels, config.label_column)
    out = args.out or files.join(args.run, f"eval_{args.split}{'_tta' if args.tta else ''}")
    preflight.check_writable_folder(out, "--out")
    return view, labels, out


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    threshold = _threshold(parser, args)
    configure_logging(args.verbose)
    view, labels, out = _open_inputs(args)
    trained = load_run(args.run)
    config = trained.config
    bar = _progress()
    try:
        evaluation = evaluate_split(
            keras_predictor(trained.model),
            view,
            labels,
            args.split,
            args.tta,
            args.metrics,
            threshold,
            progress=bar.update,
        )
    finally:
        bar.close()
    context = {
        "run": args.run,
        "split": args.split,
        "tta": args.tta,
        "metric_set": args.metrics,
        "store": args.store or config.store,
        "view": config.view,
        "label_version": labels.label_version,
        "trained_label_version": trained.record.get("label_version"),
    }
    write_evaluation(out, evaluation, context)
    print(format_summary(evaluation, out, args.split))
    return 0


run, main = cli_entry_points(_main)


if __name__ == "__main__":
    main()
