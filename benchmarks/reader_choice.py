"""Benchmark: the hand-written Zarr v3 shard reader beside tensorstore and the newest zarr-python.

One run builds a narrow and a wide view through the store's commit path (ReLU-like features,
lz4, shards of 64 rows), then times the same reads with three legs, each in a fresh process:
- hand: the product's own read API (features.store: read_range, read_scattered, scatter_rows);
- tensorstore: its zarr3 driver (file or s3 kvstore);
- zarr: the newest zarr-python (it needs Python >= 3.12, so it runs in its own virtualenv).
tensorstore and zarr run with --other-python (a virtualenv that has both); the hand leg with
this interpreter. Operations (benchmarks.reader_legs): a sequential scan of each view, 1-id
and 1k-id point reads of the narrow view, and one training-input epoch (shuffled blocks
gathered into permuted slots of a preallocated window). Cold is the first call in a fresh
process, open included, after the view's files were dropped from the page cache (where
posix_fadvise allows); warm is the median of --repeats more calls in that process. The
narrow view is also copied to the moto S3 test server and read there, with the requests
each reader's fresh-process call makes. Every leg's bytes must match (sha256 per operation).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.reader_legs import LEGS
from features import files
from features.cli import add_common_arguments, cli_entry_points, configure_logging, positive_int
from schemas.view_spec import NARROW_VIEW, PREDEFINED_VIEWS, WIDE_VIEW

LOGGER = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
LEGS_SCRIPT = str(REPO / "benchmarks" / "reader_legs.py")
SHARD_ROWS = 64
S3_SCAN_ROWS = 2048  # scans and epochs over moto (one threaded werkzeug process) stay short


def build_views(work: str, narrow_rows: int, wide_rows: int) -> dict[str, str]:
    """Committed narrow and wide views (lz4, shards of 64 rows); view name -> view folder."""
    from benchmarks.train_input import build_view

    built = {}
    for name, rows in ((NARROW_VIEW, narrow_rows), (WIDE_VIEW, wide_rows)):
        LOGGER.info("building %s with %d rows", name, rows)
        view = build_view(work, PREDEFINED_VIEWS[name], rows, SHARD_ROWS, "lz4")
        built[name] = view.path
    os.sync()
    return built


def window_rows(view: str) -> int:
    """The training input's window for the view (its default shuffle buffer and batch)."""
    from features.training.heads import HEADS
    from features.training.input_stream import InputConfig, shuffle_capacity

    spec = PREDEFINED_VIEWS[view]
    batch = HEADS[spec.head].batch_size
    sample_bytes = 2 * math.prod(spec.feature_shape)
    return max(
        batch, shuffle_capacity(InputConfig(batch_size=batch), sample_bytes) // batch * batch
    )


def run_leg(
    python: str, leg: str, op: str, view: str, options: dict[str, Any], env: dict[str, str]
) -> dict[str, Any]:
    """One leg's timing of one operation, in a fresh process of `python`."""
    command = [python, LEGS_SCRIPT, "--leg", leg, "--op", op, "--view", view]
    for key, value in options.items():
        if value is True:
            command.append(f"--{key}")
        elif value is not None and value is not False:
            command += [f"--{key}", str(value)]
    environment = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if done.returncode:
        LOGGER.warning("%s %s failed: %s", leg, op, done.stderr.strip().splitlines()[-1:])
        return {"leg": leg, "op": op, "error": done.stderr.strip()[-2000:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def local_cases(views: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(view, operation, leg options) measured on local disk."""
    narrow, wide = views[NARROW_VIEW], views[WIDE_VIEW]
    narrow_window, wide_window = window_rows(NARROW_VIEW), window_rows(WIDE_VIEW)
    return [
        (narrow, "scan", {"range-rows": narrow_window}),
        (wide, "scan", {"range-rows": wide_window}),
        (narrow, "points1", {}),
        (narrow, "points1k", {}),
        (narrow, "epoch", {"range-rows": narrow_window}),
        (wide, "epoch", {"range-rows": wide_window}),
    ]


def measure_local(args: argparse.Namespace, views: dict[str, str]) -> list[dict[str, Any]]:
    """Every local case with every leg, legs alternating within a case."""
    results = []
    for view, op, options in local_cases(views):
        for leg in args.legs:
            python = sys.executable if leg == "hand" else args.other_python
            opts = {**options, "repeats": args.repeats, "drop-cache": True}
            result = run_leg(python, leg, op, view, opts, {})
            result |= {"storage": "local", "view": os.path.basename(view)}
            LOGGER.info("%s", _summary(result))
            results.append(result)
    return results


def _summary(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"{result['storage']} {result['view']} {result['op']} {result['leg']}: error"
    return (
        f"{result['storage']} {result['view']} {result['op']} {result['leg']}: cold "
        f"{result['cold_ms']:.0f} ms, warm {result['warm_ms'] or 0:.1f} ms"
    )


def measure_s3(args: argparse.Namespace, view_path: str) -> list[dict[str, Any]]:
    """The narrow view on moto S3: timings, then each leg's requests for one fresh call."""
    from benchmarks.object_store_servers import new_bucket, start_moto_s3, subprocess_environment

    server = start_moto_s3()
    try:
        bucket = new_bucket("s3", server)
        remote = bucket.path("store", os.path.basename(view_path))
        bucket.fs.put(view_path, remote, recursive=True)
        env = subprocess_environment({"s3": server})
        results = []
        for op in ("scan", "points1", "points1k", "epoch"):
            for leg in args.legs:
                python = sys.executable if leg == "hand" else args.other_python
                options = {"endpoint": server.endpoint_url, "rows": S3_SCAN_ROWS}
                options |= {"range-rows": 1024 if op in ("scan", "epoch") else None}
                result = run_leg(python, leg, op, remote, {**options, "repeats": 2}, env)
                with server.log.measure() as requests:
                    run_leg(python, leg, op, remote, {**options, "repeats": 0}, env)
                result |= {"storage": "s3 (moto)", "view": os.path.basename(view_path)}
                result["requests"] = _request_counts(requests)
                LOGGER.info("%s, requests %s", _summary(result), result["requests"])
                results.append(result)
        return results
    finally:
        server.stop()


def _request_counts(requests: list[tuple[str, str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for method, _, _ in requests:
        counts[method] = counts.get(method, 0) + 1
    return counts


def _cell(result: dict[str, Any] | None, key: str) -> str:
    if result is None or "error" in result or result.get(key) is None:
        return "n/a"
    value = float(result[key])
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _requests(result: dict[str, Any] | None) -> str:
    if result is None or "requests" not in result:
        return ""
    return "+".join(f"{count} {method}" for method, count in sorted(result["requests"].items()))


def _ratio(results: dict[str, dict[str, Any]], key: str) -> str:
    """hand / fastest library on one figure (> 1: the hand-written reader is slower)."""
    hand = results.get("hand", {}).get(key)
    others = [float(r[key]) for leg, r in results.items() if leg != "hand" and r.get(key)]
    if not hand or not others:
        return "n/a"
    return f"{float(hand) / min(others):.2f}"


def format_report(results: Sequence[dict[str, Any]], legs: Sequence[str]) -> str:
    """One markdown row per (storage, view, operation): cold and warm ms per leg, ratios."""
    cases: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for result in results:
        key = (result["storage"], result["view"], result["op"])
        cases.setdefault(key, {})[result["leg"]] = result
    header = " | ".join(f"{leg} cold / warm ms (warm CPU)" for leg in legs)
    lines = [
        f"| storage | view | operation | {header} | hand / best library: cold, warm, warm CPU |"
        + (" requests per leg |" if any("requests" in r for r in results) else ""),
        "| --- | --- | --- | "
        + " | ".join("---:" for _ in legs)
        + " | ---: |"
        + (" --- |" if any("requests" in r for r in results) else ""),
    ]
    for (storage, view, op), by_leg in cases.items():
        cells = [
            f"{_cell(by_leg.get(leg), 'cold_ms')} / {_cell(by_leg.get(leg), 'warm_ms')} "
            f"({_cell(by_leg.get(leg), 'warm_cpu_ms')})"
            for leg in legs
        ]
        ratios = ", ".join(_ratio(by_leg, key) for key in ("cold_ms", "warm_ms", "warm_cpu_ms"))
        line = f"| {storage} | {view} | {op} | {' | '.join(cells)} | {ratios} |"
        if any("requests" in r for r in results):
            line += " " + "; ".join(_requests(by_leg.get(leg)) for leg in legs) + " |"
        lines.append(line)
    return "\n".join(lines)


def check_digests(results: Sequence[dict[str, Any]]) -> list[str]:
    """Cases whose legs read different bytes (each must be empty: every leg is bit-exact)."""
    seen: dict[tuple[str, str, str], set[str]] = {}
    for result in results:
        if "digest" in result:
            key = (result["storage"], result["view"], result["op"])
            seen.setdefault(key, set()).add(result["digest"])
    return [" ".join(key) for key, digests in seen.items() if len(digests) > 1]


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reader_choice", description=__doc__)
    parser.add_argument("--narrow-rows", type=positive_int("--narrow-rows"), default=16384)
    parser.add_argument("--wide-rows", type=positive_int("--wide-rows"), default=512)
    parser.add_argument("--repeats", type=positive_int("--repeats"), default=3)
    parser.add_argument(
        "--other-python",
        default="/tmp/venv-newzarr/bin/python",
        help="interpreter with tensorstore and the newest zarr-python (Python >= 3.12)",
    )
    parser.add_argument("--legs", default=",".join(LEGS), help=f"comma-separated, of {LEGS}")
    parser.add_argument("--no-s3", action="store_true", help="skip the moto S3 leg")
    parser.add_argument("--work", help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/reader_choice"))
    add_common_arguments(parser)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    args.legs = [leg for leg in args.legs.split(",") if leg in LEGS]
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        views = build_views(os.path.join(scratch, "store"), args.narrow_rows, args.wide_rows)
        results = measure_local(args, views)
        if not args.no_s3:
            results += measure_s3(args, views[NARROW_VIEW])
    report = format_report(results, args.legs)
    mismatched = check_digests(results)
    versions = sorted({r["version"] for r in results if "version" in r})
    load = f"load average after the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"results": results, "versions": versions, "mismatched": mismatched, "load": load}
    files.atomic_write_text(str(args.out / "results.json"), json.dumps(summary, indent=1))
    files.atomic_write_text(str(args.out / "table.md"), report + "\n")
    print(report)
    print("versions: " + "; ".join(versions))
    print(load)
    if mismatched:
        print("legs read different bytes in: " + ", ".join(mismatched))
        return 1
    return 0


run, main = cli_entry_points(_main)


if __name__ == "__main__":
    main()
