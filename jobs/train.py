"""CLI: train an MLSP head (narrow or wide) on features streamed from a feature store."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from features import files, preflight
from features.cli import add_common_arguments, cli_entry_points, configure_logging, positive_int
from features.store import FeatureStore
from features.training.heads import HEADS, TARGETS
from features.training.input_stream import retain_freed_memory
from features.training.labels import SCORE_COLUMNS, load_training_labels
from features.training.run_outputs import (
    CURVES_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    RUN_FILE,
    curves_png,
    save_keras_model,
    write_history_csv,
    write_json,
)
from features.training.trainer import MONITORS, TrainConfig, TrainingResult, lineage, train_head
from schemas.errors import ConfigError
from schemas.view_spec import FeatureViewSpec

LOGGER = logging.getLogger(__name__)


def non_negative_float(name: str) -> Callable[[str], float]:
    """argparse type for a float >= 0 whose error names the flag."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not value >= 0.0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 0, got {text}")
        return value

    return parse


def learning_rates(text: str) -> tuple[float, ...]:
    """'1e-3,1e-4' -> (0.001, 0.0001); errors name --learning-rates."""
    try:
        rates = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--learning-rates: not numbers: {text!r}") from None
    if not rates or any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError(f"--learning-rates: need positive numbers, got {text!r}")
    return rates


def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Target, schedule and input options."""
    parser.add_argument(
        "--target",
        choices=sorted(TARGETS),
        default="mos",
        help="mos (MSE) or distribution (10 bins, EMD loss)",
    )
    parser.add_argument(
        "--label-column",
        choices=SCORE_COLUMNS,
        default="mos",
        help="score column for --target mos (default mos)",
    )
    parser.add_argument(
        "--label-noise",
        type=non_negative_float("--label-noise"),
        default=0.0,
        metavar="SIGMA",
        help="Gaussian noise std added to MOS targets",
    )
    parser.add_argument(
        "--batch-size", type=positive_int("--batch-size"), help="default: 256 narrow, 128 wide"
    )
    parser.add_argument(
        "--epochs-per-stage",
        type=positive_int("--epochs-per-stage"),
        default=20,
        help="max epochs per learning-rate stage (default 20)",
    )
    parser.add_argument(
        "--patience",
        type=positive_int("--patience"),
        default=5,
        help="early-stopping patience (default 5)",
    )
    parser.add_argument(
        "--monitor",
        choices=sorted(MONITORS),
        default="plcc",
        help="validation quantity for early stopping (default plcc)",
    )
    parser.add_argument(
        "--learning-rates",
        type=learning_rates,
        default=(),
        help="stage rates, e.g. 1e-3,1e-4,1e-5 (default: the head's schedule)",
    )
    parser.add_argument(
        "--shuffle-buffer",
        type=positive_int("--shuffle-buffer"),
        default=4096,
        help="shuffle-buffer capacity in samples (capped at 256 MB)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the training job."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.train",
        description="Train an MLSP head on stored features (streamed, never loaded whole).",
    )
    parser.add_argument("--store", required=True, help="feature store root (path or URL)")
    parser.add_argument("--view", required=True, help="view name, e.g. irnv2_mlsp_narrow")
    parser.add_argument("--labels", required=True, help="labels.parquet (or a raw AVA.txt)")
    parser.add_argument("--head", choices=sorted(HEADS), default="narrow", help="head type")
    parser.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    _add_training_arguments(parser)
    parser.add_argument(
        "--read-threads",
        type=positive_int("--read-threads"),
        default=1,
        help="threads reading store blocks, at least (default 1: one per core is used when "
        "more; raise it for object stores)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run")
    parser.add_argument("--quiet", action="store_true", help="no Keras progress bars")
    add_common_arguments(parser)
    return parser


def _config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        store=args.store,
        view=args.view,
        labels=args.labels,
        head=args.head,
        target=args.target,
        label_column=args.label_column,
        label_noise=args.label_noise,
        batch_size=args.batch_size,
        epochs_per_stage=args.epochs_per_stage,
        patience=args.patience,
        monitor=args.monitor,
        seed=args.seed,
        shuffle_buffer=args.shuffle_buffer,
        read_threads=args.read_threads,
        learning_rates=args.learning_rates,
    )


def _callbacks(args: argparse.Namespace) -> list[Any]:
    if not args.tensorboard:
        return []
    import keras

    return [keras.callbacks.TensorBoard(log_dir=files.join(args.out, "tensorboard"))]


def write_run(out: str, config: TrainConfig, result: TrainingResult, run: dict[str, Any]) -> None:
    """Write model, history, curves, then run.json last (its presence marks a complete run)."""
    from features.training.heads import build_head

    # The same architecture as the trained model, from the spec recorded in run.json.
    layout = FeatureViewSpec.from_dict(run["view_spec"]).pyramid_layout
    shape = run["feature_shape"]
    clean = build_head(config.head, shape, config.target, result.bn_momentum, layout)
    clean.set_weights(result.model.get_weights())  # a copy without optimizer state
    save_keras_model(clean, files.join(out, MODEL_FILE))
    write_history_csv(files.join(out, HISTORY_FILE), result.history)
    title = f"{config.head} head on {config.view} ({config.target})"
    files.atomic_write_bytes(files.join(out, CURVES_FILE), curves_png(result.history, title))
    write_json(files.join(out, RUN_FILE), run)


def format_summary(run: dict[str, Any], out: str, seconds: float) -> str:
    """Final summary lines."""
    lines = [
        f"trained {run['config']['head']} head on {run['view']} in {seconds:.1f}s: "
        f"{run['epochs_run']} epochs, monitor {run['monitor']}",
        f"  rows: {run['rows']}  skipped: {run['skipped']}",
    ]
    for best in run["best_epochs"]:
        shown = {k: round(v, 4) for k, v in best.items() if k.startswith(("loss", "plcc", "val"))}
        lines.append(f"  stage {best['stage']} best (epoch {best['epoch']}): {shown}")
    lines += [
        f"  {name}: {files.join(out, name)}"
        for name in (MODEL_FILE, RUN_FILE, HISTORY_FILE, CURVES_FILE)
    ]
    return "\n".join(lines)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    # Before TensorFlow starts its threads: their malloc heaps must be created under these
    # settings (see retain_freed_memory; set later, the page faults stay).
    retain_freed_memory()
    config = _config(args)
    # A missing --labels stays the ConfigError load_training_labels raises (exit 2), before any
    # model is built; here only whether its store answers.
    preflight.check_input_folder(args.store, "--store")
    preflight.check_reachable(args.labels, "--labels")
    preflight.check_writable_folder(args.out, "--out")
    if files.exists(files.join(args.out, RUN_FILE)) and not args.overwrite:
        raise ConfigError(f"--out {args.out}: a run exists there (pass --overwrite to replace)")
    store = FeatureStore(args.store)
    if args.view not in store.views():
        raise ConfigError(f"--view {args.view!r}: not in {args.store}; views: {store.views()}")
    view = store.view(args.view)
    labels = load_training_labels(args.labels, args.label_column)
    started = time.perf_counter()
    verbose = 0 if args.quiet else "auto"
    result = train_head(view, labels, config, _callbacks(args), verbose)
    run = lineage(config, view, labels, result)
    write_run(args.out, config, result, run)
    print(format_summary(run, args.out, time.perf_counter() - started))
    return 0


run, main = cli_entry_points(_main)


if __name__ == "__main__":
    main()
