"""The extraction CLI's arguments: flags, their parsers, and --list-views."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from features import retries
from features.cli import add_common_arguments, positive_int
from features.extraction.feed import DEFAULT_PREFETCH_BATCHES
from features.extraction.images import DEFAULT_MAX_PIXELS
from features.model.devices import BATCH_PIXELS_BY_KIND, DEVICES
from features.store import BACKENDS, COMPRESSIONS, DEFAULT_TTL_SECONDS
from pipelines.runners import add_runner_arguments
from schemas.backbones import BACKBONE_FACTS
from schemas.errors import ConfigError
from schemas.view_spec import COMPUTE_DTYPES, PREDEFINED_VIEWS, FeatureViewSpec
from schemas.view_syntax import POOLING_SYNTAX, parse_view_spec, pooling_text

EXIT_ROW_FAILURES = 3


def build_parser() -> argparse.ArgumentParser:
    """Argument parser; unknown --flags are passed to Beam as pipeline options."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.extract",
        description="Extract MLSP features (narrow and/or wide) for every image of a manifest. "
        "Flags not listed here are passed to Apache Beam as pipeline options.",
    )
    parser.add_argument("--manifest", required=True, help="manifest.parquet (path or URL)")
    parser.add_argument("--store", required=True, help="feature store root (path or URL)")
    parser.add_argument(
        "--view",
        action="append",
        choices=sorted(PREDEFINED_VIEWS),
        help="predefined view to fill (see --list-views); repeat to fill several: views of one "
        "backbone share a forward pass, each backbone loads once per worker",
    )
    parser.add_argument(
        "--view-spec",
        action="append",
        type=_view_spec_argument,
        help="custom view 'backbone=B,pooling=P,name=N[,taps=T1,T2]'; backbones: "
        f"{', '.join(BACKBONE_FACTS)}; poolings: {POOLING_SYNTAX}",
    )
    parser.add_argument(
        "--list-views",
        action=_ListViews,
        help="print the predefined views with their feature shapes and exit",
    )
    parser.add_argument(
        "--view-name",
        action="append",
        help="store the i-th --view under this name (needed for a second spec)",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (Keras cache), a .h5 weights file, or 'random:SEED'",
    )
    parser.add_argument(
        "--variants",
        default="orig",
        help="orig (default), train8, tta18, or names like 0_0_0,1_1_1",
    )
    parser.add_argument(
        "--precision",
        default="float32",
        choices=COMPUTE_DTYPES,
        help="Keras compute precision (recorded in the spec)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=sorted(DEVICES),
        help="compute device; gpu/npu fail if absent, never falling back to CPU",
    )
    parser.add_argument(
        "--shard-size",
        type=positive_int("--shard-size"),
        default=None,
        help="rows per shard for a new view (default 64; an existing view keeps its own)",
    )
    parser.add_argument(
        "--max-side",
        type=positive_int("--max-side"),
        default=None,
        help="downscale images whose longest side exceeds this (default: original size)",
    )
    parser.add_argument(
        "--max-pixels",
        type=positive_int("--max-pixels"),
        default=DEFAULT_MAX_PIXELS,
        help="images with more pixels are refused as decompression bombs",
    )
    parser.add_argument(
        "--max-batch-pixels",
        type=positive_int("--max-batch-pixels"),
        default=None,
        help="pixel cap of one forward batch of same-size images, variants included "
        f"(default by device: {', '.join(f'{k} {v:,}' for k, v in BATCH_PIXELS_BY_KIND.items())})",
    )
    parser.add_argument(
        "--decode-threads",
        type=positive_int("--decode-threads"),
        default=2,
        help="threads reading and decoding images per worker",
    )
    parser.add_argument(
        "--prefetch-batches",
        type=positive_int("--prefetch-batches"),
        default=DEFAULT_PREFETCH_BATCHES,
        help="decoded batches kept ready ahead of the model (bounds decode memory; default 2)",
    )
    parser.add_argument(
        "--format",
        default="zarr",
        choices=sorted(BACKENDS),
        help="features array format of a new view (default zarr)",
    )
    parser.add_argument(
        "--compression",
        default=None,
        choices=sorted(COMPRESSIONS),
        help="inner-chunk compression of a new view (default lz4; an existing view keeps its "
        "own, and a different value is refused). lz4: decodes about 1.7 GB/s per core; "
        "zstd: 12-19%% smaller, decodes about 0.7 GB/s per core (training reads become "
        "decode-bound); none: plain copies, about 1.3x lz4. HDF5 has no Blosc: zstd and lz4 "
        "both store LZF",
    )
    parser.add_argument(
        "--fail-on-errors",
        action="store_true",
        help=f"exit {EXIT_ROW_FAILURES} when any row has a status other than ok",
    )
    parser.add_argument(
        "--break-lease",
        metavar="RUN_ID",
        help="take the views' writer lease from this run even if it looks alive (an operator's "
        "decision, recorded in the run history); a dead run on this host is replaced anyway",
    )
    parser.add_argument(
        "--lease-ttl",
        type=_positive_seconds("--lease-ttl"),
        default=None,
        help="seconds a writer lease lasts without renewal (renewed every third of it); a "
        f"crashed run on another host is taken over after it (default {DEFAULT_TTL_SECONDS:g})",
    )
    parser.add_argument(
        "--store-retries",
        type=_retry_policy_argument,
        default=None,
        metavar="KEY=VALUE[,...]",
        help="object-store retry policy, e.g. 'max_retries=10,timeout_seconds=180' (the "
        f"defaults; also initial_backoff, max_backoff, multiplier); default: ${retries.POLICY_ENVIRONMENT} "
        "or the defaults. Workers get the same policy",
    )
    parser.add_argument("--summary-json", help="also write the run summary to this file")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and print the Beam options and graph; write nothing",
    )
    add_runner_arguments(parser)
    add_common_arguments(parser)
    return parser


def _positive_seconds(name: str) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number of seconds") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {text}")
        return value

    return parse


def _retry_policy_argument(text: str) -> retries.RetryPolicy:
    try:
        return retries.RetryPolicy.parse(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _view_spec_argument(text: str) -> FeatureViewSpec:
    try:
        return parse_view_spec(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def list_views_text() -> str:
    """One line per predefined view: name, backbone, pooling, minimum side, feature shape."""
    lines = []
    for name, spec in PREDEFINED_VIEWS.items():
        shape = "x".join(str(size) for size in spec.feature_shape)
        lines.append(
            f"{name:<20} {spec.backbone_name:<20} {pooling_text(spec.pooling):<12} "
            f"taps {len(spec.taps):>2}  min side {spec.input_policy.min_side:>3}  "
            f"features {shape} ({spec.head} head)"
        )
    return "\n".join(lines)


class _ListViews(argparse.Action):
    """--list-views: print and exit before the required arguments are checked (like --version)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(list_views_text())
        parser.exit()
