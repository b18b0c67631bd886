"""CLI: fit (or apply) the k*y+b label recalibration against a reference model's predictions."""

from __future__ import annotations

import argparse
import io
import json
import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from features import files, preflight
from features.cli import add_common_arguments, cli_entry_points, configure_logging, positive_int
from features.labels.calibration import (
    Calibration,
    apply_calibration,
    fit_calibration,
    join_predictions,
)
from features.labels.recalibration import MAP_CHOICES, FitResult, RecalibrationConfig
from schemas.errors import ConfigError, LabelError
from schemas.labels import LABELS_SCHEMA, RECALIBRATED_COLUMN, conform_table

LOGGER = logging.getLogger(__name__)
CALIBRATION_FILE = "calibration.json"
LABELS_FILE = "labels_recalibrated.parquet"
PLOT_FILE = "recalibration.png"
# Flags only a fit reads (dest -> flag); --apply takes the map, range and groups from its file.
FITTING_FLAGS = {
    "predictions": "--predictions",
    "range": "--range",
    "by": "--by",
    "use": "--use",
    "bootstrap": "--bootstrap",
    "confidence": "--confidence",
    "min_rows": "--min-rows",
    "seed": "--seed",
}


def parse_range(text: str) -> tuple[float, float]:
    """'1,5' -> (1.0, 5.0); argparse error names --range."""
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--range must be 'lo,hi', got {text!r}") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"--range: lo must be below hi, got {text!r}")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the recalibration job."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.recalibrate",
        description="Fit y' = clip(k*y+b, lo, hi) so labels agree with a reference model "
                    "(or apply a saved map with --apply).")
    parser.add_argument("--labels", required=True, help="labels.parquet (schemas.labels)")
    parser.add_argument("--predictions", help="Parquet with image_id, prediction (for fitting)")
    parser.add_argument("--apply", metavar="CALIBRATION_JSON",
                        help="apply a saved calibration.json instead of fitting")
    parser.add_argument("--range", type=parse_range, default=(1.0, 5.0),
                        help="label range lo,hi the mapped labels are clipped to (default 1,5)")
    parser.add_argument("--by", help="also fit one map per value of this column (e.g. subset)")
    parser.add_argument("--use", choices=MAP_CHOICES, default="pooled",
                        help="map written into the labels: pooled (default) or per group")
    parser.add_argument("--column", default="mos", help="label column to map (default mos)")
    parser.add_argument("--bootstrap", type=positive_int("--bootstrap"), default=200,
                        help="bootstrap resamples (default 200)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (0.95)")
    parser.add_argument("--min-rows", type=positive_int("--min-rows"), default=10,
                        help="refuse groups with fewer overlapping rows (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--out", default="recalibration", help="output folder (path or URL)")
    add_common_arguments(parser)
    return parser


def fitting_flags_given(argv: Sequence[str] | None) -> list[str]:
    """The fitting-only flags present in argv (abbreviations and --flag=value included).

    Parsed, not string-matched: with the fitting flags defaulting to a sentinel, a flag was
    given exactly when its value is something else.
    """
    unset = object()
    probe = build_parser()
    probe.set_defaults(**dict.fromkeys(FITTING_FLAGS, unset))
    parsed = vars(probe.parse_args(argv))
    return [flag for dest, flag in FITTING_FLAGS.items() if parsed[dest] is not unset]


def read_labels(path: str) -> pd.DataFrame:
    """Read and check a label table.

    Raises:
        LabelError: missing file or columns, or not a Parquet file.
    """
    if not files.exists(path):
        raise LabelError(f"--labels {path}: no such file")
    table = files.read_parquet_as(path, "--labels", LabelError)
    if RECALIBRATED_COLUMN in table.column_names:
        table = table.drop_columns([RECALIBRATED_COLUMN])
    return conform_table(table, LABELS_SCHEMA, path).to_pandas()


def read_predictions(path: str) -> pd.DataFrame:
    """Read a predictions Parquet file (image_id, prediction).

    Raises:
        LabelError: missing file, or not a Parquet file.
    """
    if not files.exists(path):
        raise LabelError(f"--predictions {path}: no such file")
    return files.read_parquet_as(path, "--predictions", LabelError).to_pandas()


def scatter_png(y: np.ndarray, mapped: np.ndarray, p: np.ndarray, title: str) -> bytes:
    """Before/after scatter of labels against predictions, with the identity line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    low, high = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    for axis, x, name in ((axes[0], y, "before: y"), (axes[1], mapped, "after: clip(k*y+b)")):
        axis.scatter(x, p, s=6, alpha=0.5)
        axis.plot([low, high], [low, high], color="black", linewidth=1)
        axis.set_xlabel(name)
        axis.set_title(f"MSE {np.mean((x - p) ** 2):.3f}")
    axes[0].set_ylabel("reference prediction p")
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def format_fit(name: str, result: FitResult) -> str:
    """One summary line."""
    (k_lo, k_hi), (b_lo, b_hi) = result.k_interval, result.b_interval
    return (f"  {name:<14} n={result.n:<6} k={result.map.k:.4f} [{k_lo:.4f}, {k_hi:.4f}]  "
            f"b={result.map.b:+.4f} [{b_lo:+.4f}, {b_hi:+.4f}]  MSE {result.mse_before:.4f} -> "
            f"{result.mse_after:.4f}  PLCC {result.plcc_before:.4f} -> {result.plcc_after:.4f}")


def _fit(args: argparse.Namespace, labels: pd.DataFrame) -> Calibration:
    config = RecalibrationConfig(args.range[0], args.range[1], args.bootstrap, args.confidence,
                                 args.seed, args.min_rows)
    joined = join_predictions(labels, read_predictions(args.predictions), args.column)
    calibration = fit_calibration(joined, config, args.column, args.by, args.use)
    y = joined[args.column].to_numpy(np.float64)
    p = joined["prediction"].to_numpy(np.float64)
    title = (f"k={calibration.pooled.map.k:.3f}, b={calibration.pooled.map.b:+.3f} "
             f"(pooled, n={len(y)})")
    png = scatter_png(y, calibration.pooled.map.apply(y), p, title)
    files.atomic_write_bytes(files.join(args.out, PLOT_FILE), png)
    files.atomic_write_text(files.join(args.out, CALIBRATION_FILE), calibration.to_json())
    return calibration


def _load(path: str) -> Calibration:
    if not files.exists(path):
        raise ConfigError(f"--apply {path}: no such file")
    try:
        return Calibration.from_dict(json.loads(files.read_bytes(path)))
    except json.JSONDecodeError as error:
        raise ConfigError(f"--apply {path}: not JSON ({error})") from None


def _preflight(args: argparse.Namespace) -> None:
    """Inputs readable and --out writable before any table is read or map fitted."""
    if args.apply is None and not args.predictions:
        raise ConfigError("--predictions is required unless --apply is given")
    preflight.check_input_file(args.labels, "--labels")
    if args.apply is None:
        preflight.check_input_file(args.predictions, "--predictions")
    else:  # a missing file stays the argument error (exit 2) that _load raises
        preflight.check_reachable(args.apply, "--apply")
    preflight.check_writable_folder(args.out, "--out")


MODES: dict[bool, Callable[[argparse.Namespace, pd.DataFrame], Calibration]] = {
    False: _fit,
    True: lambda args, _labels: _load(args.apply),
}


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    ignored = fitting_flags_given(argv) if args.apply is not None else []
    if ignored:
        parser.error(
            f"argument --apply: {', '.join(ignored)} only affect fitting; the saved "
            "calibration.json fixes the map, range and groups (drop them, or fit without --apply)"
        )
    _preflight(args)
    labels = read_labels(args.labels)
    calibration = MODES[args.apply is not None](args, labels)
    table, fallback = apply_calibration(files.read_parquet(args.labels), calibration, args.column)
    files.atomic_write_parquet(files.join(args.out, LABELS_FILE), table)
    lines = [f"recalibration ({'applied ' + args.apply if args.apply else 'fitted'}): "
             f"{table.num_rows} labels -> {files.join(args.out, LABELS_FILE)} "
             f"(label_version {table.column('label_version')[0].as_py()})",
             format_fit("pooled", calibration.pooled)]
    lines += [format_fit(f"{calibration.by}={name}", result)
              for name, result in calibration.groups.items()]
    if fallback:
        lines.append(f"  {fallback} row(s) had no group map and used the pooled map")
    print("\n".join(lines))
    return 0


run, main = cli_entry_points(_main)


if __name__ == "__main__":
    main()
